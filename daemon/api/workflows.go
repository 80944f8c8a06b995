package api

// workflowRoutes registers workflows, instances and tools routes.
func (s *Server) workflowRoutes() {}
