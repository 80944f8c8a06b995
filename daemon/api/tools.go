package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/users"
)

func (s *Server) toolRoutes() {
	s.user("GET /api/v1/tools", s.listTools)
	s.user("POST /api/v1/tools/{plugin}/{tool}", s.callTool)
}

func (s *Server) listTools(w http.ResponseWriter, r *http.Request, u users.User) {
	list := []tools.Spec{}
	if s.d.Tools != nil {
		specs, err := s.d.Tools.Tools(r.Context(), u.ID)
		if err != nil {
			s.internalError(w, r, err)
			return
		}
		list = append(list, specs...)
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": list})
}

// callTool runs one tool as the current user, with the body as its
// arguments. A tool-level failure is a 200 with is_error set, as an agent
// would see it; a failure to reach the tool is a 502.
func (s *Server) callTool(w http.ResponseWriter, r *http.Request, u users.User) {
	plugin, tool := r.PathValue("plugin"), r.PathValue("tool")
	// "{plugin}-{tool}" splits at the first hyphen: a plugin with one would
	// name some other tool.
	if s.d.Tools == nil || strings.Contains(plugin, "-") {
		writeError(w, http.StatusNotFound, "not_found", "no such tool")
		return
	}
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	args := json.RawMessage(bytes.TrimSpace(b))
	if len(args) == 0 {
		args = json.RawMessage(`{}`)
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(args, &obj) != nil || obj == nil {
		writeFieldError(w, "invalid_request", "body", "body: the tool's arguments must be a JSON object")
		return
	}
	res, err := s.d.Tools.Call(r.Context(), tools.Call{User: u.ID, Tool: plugin + "-" + tool, Arguments: args})
	switch {
	case errors.Is(err, tools.ErrUnknownTool):
		writeError(w, http.StatusNotFound, "not_found", "no such tool")
		return
	case err != nil:
		s.d.Logger.Warn("tool call failed", "route", r.Pattern, "user_id", u.ID, "tool", plugin+"-"+tool, "error", err)
		writeError(w, http.StatusBadGateway, "tool_failed", "the tool could not be reached")
		return
	}
	if len(res.Content) == 0 {
		res.Content = json.RawMessage(`null`)
	}
	writeJSON(w, http.StatusOK, map[string]any{"content": res.Content, "is_error": res.IsError})
}
