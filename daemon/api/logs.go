package api

// logRoutes registers the agent log routes.
func (s *Server) logRoutes() {}
