package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/users"
)

// reinitializeWait bounds how long POST /api/v1/inbox/reinitialize waits
// for a running initialisation (possibly on another replica, which notices
// the interrupt at its next batch) to stop.
const reinitializeWait = 20 * time.Second

// jobRoutes registers the background-job routes: starting the inbox
// initialisation, tone and label jobs, and reading their results. Every
// route acts on the current user only. catalog may be nil (no
// embedding-models route).
func (s *Server) jobRoutes(m *jobs.Manager, catalog *embed.Catalog) {
	h := &jobHandlers{s: s, m: m, catalog: catalog}
	s.user("POST /api/v1/inbox/initialize", h.initialize)
	s.user("POST /api/v1/inbox/reinitialize", h.reinitialize)
	s.user("POST /api/v1/inbox/tone-of-voice", h.start(jobs.ToneOfVoice))
	s.user("POST /api/v1/inbox/label-descriptions", h.start(jobs.LabelDescriptions))
	s.user("GET /api/v1/settings/tone-of-voice", h.toneProfile)
	s.user("GET /api/v1/settings/tone-of-voice/status", h.toneStatus)
	if catalog != nil {
		s.user("GET /api/v1/embedding-models", h.embeddingModels)
	}
}

type jobHandlers struct {
	s       *Server
	m       *jobs.Manager
	catalog *embed.Catalog
}

// jobError answers the errors of starting a job; it reports whether it
// answered.
func (h *jobHandlers) jobError(w http.ResponseWriter, r *http.Request, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, jobs.ErrNotConfigured):
		writeError(w, http.StatusConflict, "not_configured", err.Error())
	case errors.Is(err, jobs.ErrStillStopping):
		writeError(w, http.StatusConflict, "busy", "the running initialisation is still stopping; retry shortly")
	case errors.Is(err, jobs.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, "unavailable", "shutting down")
	default:
		h.s.internalError(w, r, err)
	}
	return true
}

// initialize starts the inbox initialisation: 202 with the new status, or
// 200 with the current one when it already completed or runs.
func (h *jobHandlers) initialize(w http.ResponseWriter, r *http.Request, u users.User) {
	st, err := h.m.InboxStatus(r.Context(), u.ID)
	if err != nil {
		h.s.internalError(w, r, err)
		return
	}
	if st.Status == jobs.StatusCompleted || st.Status == jobs.StatusRunning {
		writeJSON(w, http.StatusOK, st)
		return
	}
	code := http.StatusAccepted
	err = h.m.Start(r.Context(), u.ID, jobs.Initialize)
	if errors.Is(err, jobs.ErrRunning) {
		code, err = http.StatusOK, nil
	}
	if h.jobError(w, r, err) {
		return
	}
	h.writeInboxStatus(w, r, u, code)
}

// reinitialize interrupts a running initialisation, empties the user's
// collection and starts afresh: 202.
func (h *jobHandlers) reinitialize(w http.ResponseWriter, r *http.Request, u users.User) {
	ctx, cancel := context.WithTimeout(r.Context(), reinitializeWait)
	defer cancel()
	if h.jobError(w, r, h.m.Reinitialize(ctx, u.ID)) {
		return
	}
	h.writeInboxStatus(w, r, u, http.StatusAccepted)
}

func (h *jobHandlers) writeInboxStatus(w http.ResponseWriter, r *http.Request, u users.User, code int) {
	st, err := h.m.InboxStatus(r.Context(), u.ID)
	if err != nil {
		h.s.internalError(w, r, err)
		return
	}
	writeJSON(w, code, st)
}

// start starts a tone or label job: 202 {"status": "running"}, or 200 when
// one already runs.
func (h *jobHandlers) start(kind jobs.Kind) userHandler {
	return func(w http.ResponseWriter, r *http.Request, u users.User) {
		code := http.StatusAccepted
		err := h.m.Start(r.Context(), u.ID, kind)
		if errors.Is(err, jobs.ErrRunning) {
			code, err = http.StatusOK, nil
		}
		if h.jobError(w, r, err) {
			return
		}
		writeJSON(w, code, map[string]string{"status": jobs.StatusRunning})
	}
}

// toneProfile answers the user's profile: {language: profile text}.
func (h *jobHandlers) toneProfile(w http.ResponseWriter, r *http.Request, u users.User) {
	p, err := h.m.ToneProfile(r.Context(), u.ID)
	if err != nil {
		h.s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (h *jobHandlers) toneStatus(w http.ResponseWriter, r *http.Request, u users.User) {
	st, err := h.m.Status(r.Context(), u.ID)
	if err != nil {
		h.s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": st.ToneOfVoice})
}

// embeddingModels lists the catalog with, for this user, whether an API
// key is available for each model's provider and which model is in use.
func (h *jobHandlers) embeddingModels(w http.ResponseWriter, r *http.Request, u users.User) {
	st, err := h.s.d.Settings.Get(r.Context(), u.ID)
	if err != nil {
		h.s.internalError(w, r, err)
		return
	}
	keys := jobs.UserKeys(h.catalog, st)
	selected, _, err := jobs.ModelFor(h.catalog, st)
	if err != nil {
		selected = embed.Model{} // an unknown model set: none selected
	}
	type item struct {
		Key            string `json:"key"`
		Provider       string `json:"provider"`
		ModelName      string `json:"model_name"`
		Description    string `json:"description"`
		Dimensions     int    `json:"dimensions"`
		Default        bool   `json:"default"`
		NeedsKey       bool   `json:"needs_key"`
		APIKeyProvided bool   `json:"api_key_provided"`
		Selected       bool   `json:"selected"`
	}
	items := []item{}
	for _, m := range h.catalog.Models() {
		items = append(items, item{
			Key: m.Key, Provider: m.Provider, ModelName: m.Name, Description: m.Description,
			Dimensions: m.Dimensions, Default: m.Default, NeedsKey: m.NeedsKey(),
			APIKeyProvided: m.NeedsKey() && keys != nil && keys(m.Provider),
			Selected:       m.Key == selected.Key,
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": items})
}
