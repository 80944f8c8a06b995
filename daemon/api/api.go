// Package api owns inboxd's HTTP API v1: routing, the JSON conventions (bodies,
// errors, limits), and the handlers. Every handler under /api/v1 gets the
// current user from auth.UserFrom and from nowhere else.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
)

// maxBodyBytes caps every request body: settings and workflows are small.
const maxBodyBytes = 1 << 20

// Check is a named readiness check (a store's Ping).
type Check struct {
	Name string
	Ping func(context.Context) error
}

// Deps are what the API needs; the daemon's start-up passes them in.
type Deps struct {
	Auth     *auth.Authenticator
	Users    *users.Store
	Settings *settings.Store
	// KV is read for per-user state other replicas write (poll status).
	KV kv.Store
	// Workflows and Logs may be nil in tests of other routes; their routes
	// are registered only when set.
	Workflows *workflow.Store
	Logs      *logs.Store
	Tools     tools.Caller
	// Jobs runs background jobs; their routes are registered only when set.
	Jobs    *jobs.Manager
	Catalog *embed.Catalog // GET /api/v1/embedding-models
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	Ready   []Check
	// IMAPDial tunes test-imap connections (timeouts, TLS roots); zero is fine.
	IMAPDial mail.DialOptions
}

// Server is the HTTP API.
type Server struct {
	d        Deps
	mux      *http.ServeMux
	patterns []string
}

// New builds the API's handler with all routes registered.
func New(d Deps) *Server {
	s := &Server{d: d, mux: http.NewServeMux()}
	s.routes()
	return s
}

// ServeHTTP counts every request by route pattern, then routes it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.d.Metrics.Instrument(s.mux).ServeHTTP(w, r)
}

// Routes lists the patterns registered on the router, for tests that must
// cover every route (the isolation sweep).
func (s *Server) Routes() []string { return append([]string(nil), s.patterns...) }

func (s *Server) routes() {
	s.handle("GET /healthz", http.HandlerFunc(s.healthz))
	s.handle("GET /readyz", http.HandlerFunc(s.readyz))
	s.handle("GET /metrics", s.d.Metrics.Handler())
	s.handle("POST /api/v1/auth/login", s.d.Auth.LoginHandler())

	s.user("GET /api/v1/me", s.me)
	s.user("GET /api/v1/settings", s.getSettings)
	s.user("PUT /api/v1/settings", s.putSettings)
	s.user("POST /api/v1/settings/test-imap", s.testIMAP)
	s.user("GET /api/v1/inbox/status", s.inboxStatus)

	if s.d.Workflows != nil {
		s.workflowRoutes()
	}
	if s.d.Logs != nil {
		s.logRoutes()
	}
	if s.d.Jobs != nil {
		s.jobRoutes(s.d.Jobs, s.d.Catalog)
	}

	s.admin("GET /api/v1/users", s.listUsers)
	s.admin("POST /api/v1/users", s.createUser)
	s.admin("GET /api/v1/users/{id}", s.getUser)
	s.admin("DELETE /api/v1/users/{id}", s.disableUser)
	s.admin("POST /api/v1/users/{id}/api-keys", s.createAPIKey)

	// Anything else under /api/ is a JSON 404, after authentication, so
	// that probing unknown paths tells an anonymous caller nothing.
	s.user("/api/", func(w http.ResponseWriter, r *http.Request, _ users.User) {
		writeError(w, http.StatusNotFound, "not_found", "no such resource")
	})
}

// userHandler is a handler that runs as the authenticated user.
type userHandler func(w http.ResponseWriter, r *http.Request, u users.User)

func (s *Server) handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
	s.patterns = append(s.patterns, pattern)
}

func (s *Server) user(pattern string, h userHandler) {
	s.handle(pattern, s.d.Auth.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, ok := auth.UserFrom(r.Context())
		if !ok { // unreachable behind Middleware; refuse rather than guess a user
			writeError(w, http.StatusUnauthorized, "unauthenticated", "no user")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		h(w, r, u)
	})))
}

// admin routes answer 404 to non-admins: only admins see that other users exist.
func (s *Server) admin(pattern string, h userHandler) {
	s.user(pattern, func(w http.ResponseWriter, r *http.Request, u users.User) {
		if !s.d.Auth.IsAdmin(u) {
			writeError(w, http.StatusNotFound, "not_found", "no such resource")
			return
		}
		h(w, r, u)
	})
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	status, code := map[string]string{}, http.StatusOK
	for _, c := range s.d.Ready {
		if err := c.Ping(ctx); err != nil {
			s.d.Logger.Warn("readiness check failed", "check", c.Name, "error", err)
			status[c.Name], code = "unavailable", http.StatusServiceUnavailable
			continue
		}
		status[c.Name] = "ok"
	}
	writeJSON(w, code, map[string]any{"ready": code == http.StatusOK, "checks": status})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, code int, errCode, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]string{"code": errCode, "message": msg}})
}

// internalError logs err with the request's route and answers a 500 that
// does not leak it; a full disk is a 507 saying so, since the client can
// retry once the operator has made room.
func (s *Server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	s.d.Logger.Error("request failed", "route", r.Pattern, "error", err)
	if sqldb.IsDiskFull(err) {
		writeError(w, http.StatusInsufficientStorage, "storage_full", "the server's storage is full: nothing was saved; try again later")
		return
	}
	writeError(w, http.StatusInternalServerError, "internal", "internal error")
}

// readBody reads the whole (size-capped) body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body over %d bytes", tooBig.Limit))
		return nil, false
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_request", "cannot read request body")
		return nil, false
	}
	return b, true
}

// decodeJSON decodes a body into v, refusing unknown fields and trailing data.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	b, ok := readBody(w, r)
	if !ok {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "invalid JSON body: "+err.Error())
		return false
	}
	if !atEnd(dec) {
		writeError(w, http.StatusBadRequest, "bad_request", "invalid JSON body: trailing data")
		return false
	}
	return true
}

// atEnd reports whether nothing but white space follows the value dec has
// decoded. (dec.More misses a stray '}' or ']' after it.)
func atEnd(dec *json.Decoder) bool {
	_, err := dec.Token()
	return err == io.EOF
}
