package api

import (
	"net/http"

	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/poller"
	"github.com/inboxd/inboxd/daemon/users"
)

// inboxStatus answers GET /api/v1/inbox/status: the user's poll state, as
// written by whichever replica polls the user, and the inbox initialisation
// job's state.
func (s *Server) inboxStatus(w http.ResponseWriter, r *http.Request, u users.User) {
	st, err := poller.ReadStatus(r.Context(), s.d.KV, u.ID)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	poll := map[string]any{
		"state":        st.State,
		"last_success": nullTime(st.LastSuccess.IsZero(), st.LastSuccess),
		"last_error":   st.LastError,
		"failures":     st.Failures,
		"next_attempt": nullTime(st.NextAttempt.IsZero(), st.NextAttempt),
	}
	initialization, err := jobs.ReadInboxStatus(r.Context(), s.d.KV, u.ID)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"poll": poll, "initialization": initialization})
}

// nullTime renders an unset time as JSON null.
func nullTime(unset bool, t any) any {
	if unset {
		return nil
	}
	return t
}
