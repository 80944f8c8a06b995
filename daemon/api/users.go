package api

import (
	"errors"
	"net/http"

	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
)

// Admin handlers: registered through Server.admin, so non-admins never reach them.

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, _ users.User) {
	list, err := s.d.Users.List(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if list == nil {
		list = []users.User{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": list, "total": len(list)})
}

type createUserRequest struct {
	Email       string `json:"email"`
	DisplayName string `json:"display_name"`
	Admin       bool   `json:"admin"`
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request, _ users.User) {
	var req createUserRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	u, err := s.d.Users.Create(r.Context(), users.NewUser{Email: req.Email, DisplayName: req.DisplayName, Admin: req.Admin})
	switch {
	case errors.Is(err, users.ErrExists):
		writeError(w, http.StatusConflict, "exists", "a user with that email exists")
		return
	case errors.Is(err, users.ErrInvalidEmail):
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	case err != nil:
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, u)
}

// pathUser resolves the {id} path value to a user, answering 404 for
// malformed and unknown ids alike.
func (s *Server) pathUser(w http.ResponseWriter, r *http.Request) (users.User, bool) {
	id, err := userid.Parse(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", "no such user")
		return users.User{}, false
	}
	u, err := s.d.Users.Get(r.Context(), id)
	if errors.Is(err, users.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not_found", "no such user")
		return users.User{}, false
	}
	if err != nil {
		s.internalError(w, r, err)
		return users.User{}, false
	}
	return u, true
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request, _ users.User) {
	if u, ok := s.pathUser(w, r); ok {
		writeJSON(w, http.StatusOK, u)
	}
}

func (s *Server) disableUser(w http.ResponseWriter, r *http.Request, _ users.User) {
	u, ok := s.pathUser(w, r)
	if !ok {
		return
	}
	if err := s.d.Users.SetDisabled(r.Context(), u.ID, true); err != nil {
		s.internalError(w, r, err)
		return
	}
	u.Disabled = true
	writeJSON(w, http.StatusOK, u)
}

type createKeyRequest struct {
	Name string `json:"name"`
}

func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request, _ users.User) {
	u, ok := s.pathUser(w, r)
	if !ok {
		return
	}
	var req createKeyRequest
	if r.ContentLength != 0 && !decodeJSON(w, r, &req) {
		return
	}
	key, err := s.d.Users.CreateAPIKey(r.Context(), u.ID, req.Name)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	// The key is shown this once; only its hash is stored.
	writeJSON(w, http.StatusCreated, map[string]any{"user_id": u.ID, "name": req.Name, "api_key": key})
}
