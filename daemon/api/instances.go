package api

import (
	"net/http"
	"strconv"

	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
)

func (s *Server) instanceRoutes() {
	s.user("GET /api/v1/instances/{id}", s.getInstance)
	s.user("POST /api/v1/instances/{id}/cancel", s.cancelInstance)
}

// listInstances lists a workflow's runs, newest first (the store's order).
func (s *Server) listInstances(w http.ResponseWriter, r *http.Request, u users.User) {
	wf, ok := s.pathWorkflow(w, r, u)
	if !ok {
		return
	}
	limit := workflow.DefaultListLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > workflow.MaxListLimit {
			writeFieldError(w, "invalid_request", "limit", "limit: must be a number from 1 to "+strconv.Itoa(workflow.MaxListLimit))
			return
		}
		limit = n
	}
	list, err := s.d.Workflows.ListInstances(r.Context(), u.ID, wf.ID, limit)
	if s.workflowError(w, r, err) {
		return
	}
	if list == nil {
		list = []workflow.Instance{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": list})
}

func (s *Server) getInstance(w http.ResponseWriter, r *http.Request, u users.User) {
	inst, err := s.d.Workflows.GetInstance(r.Context(), u.ID, r.PathValue("id"))
	if s.workflowError(w, r, err) {
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

// cancelInstance asks for the run to stop; the runner stops it between
// steps or inside the current call, so the answer may still say running.
func (s *Server) cancelInstance(w http.ResponseWriter, r *http.Request, u users.User) {
	inst, err := s.d.Workflows.RequestCancel(r.Context(), u.ID, r.PathValue("id"))
	if s.workflowError(w, r, err) {
		return
	}
	writeJSON(w, http.StatusOK, inst)
}
