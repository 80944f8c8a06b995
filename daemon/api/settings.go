package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/users"
)

// testIMAPTimeout bounds a whole test-imap call (connect, login, select).
const testIMAPTimeout = 20 * time.Second

func (s *Server) me(w http.ResponseWriter, _ *http.Request, u users.User) {
	writeJSON(w, http.StatusOK, map[string]any{
		"id": u.ID, "email": u.Email, "display_name": u.DisplayName,
		"admin": s.d.Auth.IsAdmin(u), "created_at": u.CreatedAt,
	})
}

func (s *Server) getSettings(w http.ResponseWriter, r *http.Request, u users.User) {
	st, err := s.d.Settings.Get(r.Context(), u.ID)
	if err == nil {
		st, err = s.chooseEmbeddingModel(r.Context(), u, st)
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, settings.View(st))
}

// chooseEmbeddingModel saves the best available embedding model for a user
// who has none yet (as the original did on the first read of the settings),
// so the model the user's vectors are made with is visible and stable.
func (s *Server) chooseEmbeddingModel(ctx context.Context, u users.User, st settings.Settings) (settings.Settings, error) {
	if st.EmbeddingModel != "" || s.d.Catalog == nil {
		return st, nil
	}
	model, _, err := jobs.ModelFor(s.d.Catalog, st)
	if err != nil {
		return st, err
	}
	if err := s.d.Settings.Update(ctx, u.ID, settings.Patch{"embedding_model": json.RawMessage(strconv.Quote(model.Key))}); err != nil {
		return st, err
	}
	st.EmbeddingModel = model.Key
	return st, nil
}

func (s *Server) putSettings(w http.ResponseWriter, r *http.Request, u users.User) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	before, err := s.d.Settings.Get(r.Context(), u.ID)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	patch, err := settings.DecodePatch(body)
	if err == nil {
		err = s.d.Settings.Update(r.Context(), u.ID, patch)
	}
	if s.settingsError(w, r, err) {
		return
	}
	// The settings are saved; a reinitialisation that cannot start now is
	// reported in the log and the inbox status, not as a failed PUT.
	if err := s.reinitializeOnModelChange(r.Context(), u, before); err != nil {
		s.d.Logger.Warn("reinitialise after an embedding model change", "user_id", u.ID, "error", err)
	}
	s.getSettings(w, r, u)
}

// reinitializeOnModelChange recreates the user's collection and runs the
// inbox initialisation again when the embedding model changed (the vector
// size changes with it) and the inbox had been initialised.
func (s *Server) reinitializeOnModelChange(ctx context.Context, u users.User, before settings.Settings) error {
	if s.d.Jobs == nil {
		return nil
	}
	after, err := s.d.Settings.Get(ctx, u.ID)
	if err != nil || after.EmbeddingModel == before.EmbeddingModel || before.EmbeddingModel == "" {
		return err
	}
	st, err := jobs.ReadInboxStatus(ctx, s.d.KV, u.ID)
	if err != nil || st.Status == jobs.StatusNotStarted {
		return err
	}
	s.d.Logger.Info("embedding model changed; reinitialising the inbox", "user_id", u.ID, "from", before.EmbeddingModel, "to", after.EmbeddingModel)
	return s.d.Jobs.Reinitialize(ctx, u.ID)
}

// settingsError answers a validation error as 400 naming the field, any
// other error as 500. It reports whether it answered.
func (s *Server) settingsError(w http.ResponseWriter, r *http.Request, err error) bool {
	if err == nil {
		return false
	}
	var ve *settings.ValidationError
	if errors.As(err, &ve) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]string{
			"code": "invalid_setting", "field": ve.Field, "message": ve.Field + ": " + ve.Message,
		}})
		return true
	}
	s.internalError(w, r, err)
	return true
}

// testIMAP tries the posted settings laid over the stored ones (an empty body
// tests the stored ones as they are). The password is never echoed.
func (s *Server) testIMAP(w http.ResponseWriter, r *http.Request, u users.User) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	st, err := s.d.Settings.Get(r.Context(), u.ID)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		patch, err := settings.DecodePatch(body)
		if err == nil {
			st, err = settings.Apply(st, patch)
		}
		if s.settingsError(w, r, err) {
			return
		}
	}
	acct := st.IMAPAccount()
	// An incomplete account is a bad request naming the missing field, not a
	// failed connection: nothing was tried.
	err = acct.Validate()
	if err == nil && acct.Password == "" && acct.OAuthToken == "" {
		err = errors.New("imap_password: not set")
	}
	if err != nil {
		field, msg, _ := strings.Cut(err.Error(), ":")
		s.settingsError(w, r, &settings.ValidationError{Field: field, Message: strings.TrimSpace(msg)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), testIMAPTimeout)
	defer cancel()
	res := mail.TestConnection(ctx, acct, s.d.IMAPDial)
	if !res.OK {
		s.d.Logger.Info("imap test failed", "user_id", u.ID, "class", res.Error.Class)
	}
	writeJSON(w, http.StatusOK, res)
}
