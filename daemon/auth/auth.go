// Package auth owns the one answer to "which user is making this HTTP
// request". Resolve turns a request into a users.User under the configured
// mode (none, password, apikey or oidc), Middleware puts that user into the
// request context, and UserFrom is the only way handlers read it back. No
// other package looks at credentials: passwords, session tokens, API keys and
// OIDC tokens are checked here and nowhere else, and are never logged.
package auth

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/inboxd/inboxd/daemon/secretbox"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"golang.org/x/crypto/bcrypt"
)

// Mode is the authentication mode (config key auth.mode).
type Mode string

// The authentication modes.
const (
	// ModeNone: every request is the default user.
	ModeNone Mode = "none"
	// ModePassword: one shared password (HTTP Basic or a session token from
	// Login); every request is the default user.
	ModePassword Mode = "password"
	// ModeAPIKey: "Authorization: Bearer <key>" names a local user.
	ModeAPIKey Mode = "apikey"
	// ModeOIDC: "Authorization: Bearer <RS256 JWT>" from the issuer; users are
	// found or created by "sub". API keys are accepted too.
	ModeOIDC Mode = "oidc"
)

var (
	// ErrUnauthenticated: the request carries no valid credentials (HTTP 401).
	ErrUnauthenticated = errors.New("auth: unauthenticated")
	// ErrDisabled: the credentials are valid but the user is disabled (HTTP 403).
	ErrDisabled = errors.New("auth: user is disabled")
)

// UserStore is what auth needs from the users store; *users.Store implements it.
type UserStore interface {
	Get(ctx context.Context, id userid.ID) (users.User, error)
	// EnsureDefault returns the default user, creating it on first use.
	EnsureDefault(ctx context.Context) (users.User, error)
	// UserByAPIKey returns the owner of key, or users.ErrNotFound.
	UserByAPIKey(ctx context.Context, key string) (users.User, error)
	// FindOrCreateBySubject returns the user with OIDC subject, creating it
	// (with email) when there is none.
	FindOrCreateBySubject(ctx context.Context, subject, email string) (users.User, error)
}

// Config configures an Authenticator.
type Config struct {
	Mode Mode
	// PasswordHash is the bcrypt hash of the shared password (mode password);
	// see HashPassword.
	PasswordHash []byte
	// OIDCIssuer is the issuer URL (mode oidc), e.g. "https://tenant.auth0.com/".
	// It must be https, except on a loopback host.
	OIDCIssuer string
	// OIDCAudience must be in every token's "aud" (mode oidc).
	OIDCAudience string
	// OIDCEmailClaim names the claim holding the user's email; default "email".
	OIDCEmailClaim string
	// Admins are emails (case-insensitive) or user ids of admins.
	Admins []string
	// SessionTTL is the lifetime of a session token from Login; default 12h.
	SessionTTL time.Duration
	// HTTPClient fetches the issuer's discovery document and JWKS; default a
	// client with a 10 s timeout.
	HTTPClient *http.Client
}

const (
	defaultSessionTTL = 12 * time.Hour
	defaultEmailClaim = "email"
	httpTimeout       = 10 * time.Second
)

// Authenticator resolves requests to users. It is safe for concurrent use.
type Authenticator struct {
	mode   Mode
	store  UserStore
	box    *secretbox.Box
	log    *slog.Logger
	now    func() time.Time // time.Now; replaced by tests
	admins map[string]struct{}

	// mode password
	pwHash     []byte
	pwBinding  [32]byte                 // sha256 of pwHash, bound into session tokens
	pwOK       atomic.Pointer[[32]byte] // MAC of the password once bcrypt accepted it
	sessionTTL time.Duration

	// mode oidc
	issuer     string // without trailing slash
	audience   string
	emailClaim string
	keys       *keySet
}

// New validates cfg and returns an Authenticator. box is required in mode
// password (session tokens); logger may be nil.
func New(cfg Config, store UserStore, box *secretbox.Box, logger *slog.Logger) (*Authenticator, error) {
	if store == nil {
		return nil, errors.New("auth: no user store")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{
		mode:  cfg.Mode,
		store: store,
		box:   box,
		log:   logger,
		now:   time.Now,
	}
	admins, err := parseAdmins(cfg.Admins)
	if err != nil {
		return nil, err
	}
	a.admins = admins

	switch cfg.Mode {
	case ModeNone, ModeAPIKey:
	case ModePassword:
		if len(cfg.PasswordHash) == 0 {
			return nil, errors.New("auth: mode password needs a password (auth.password or auth.password_file)")
		}
		if _, err := bcrypt.Cost(cfg.PasswordHash); err != nil {
			return nil, fmt.Errorf("auth: password hash is not a bcrypt hash: %w", err)
		}
		if box == nil {
			return nil, errors.New("auth: mode password needs the secret key (for session tokens)")
		}
		if cfg.SessionTTL < 0 {
			return nil, fmt.Errorf("auth: session TTL %s is negative", cfg.SessionTTL)
		}
		a.pwHash = append([]byte(nil), cfg.PasswordHash...)
		a.pwBinding = sha256.Sum256(a.pwHash)
		a.sessionTTL = cfg.SessionTTL
		if a.sessionTTL == 0 {
			a.sessionTTL = defaultSessionTTL
		}
	case ModeOIDC:
		issuer, err := checkIssuer(cfg.OIDCIssuer)
		if err != nil {
			return nil, err
		}
		if cfg.OIDCAudience == "" {
			return nil, errors.New("auth: mode oidc needs an audience (auth.oidc_audience)")
		}
		a.issuer = issuer
		a.audience = cfg.OIDCAudience
		a.emailClaim = cfg.OIDCEmailClaim
		if a.emailClaim == "" {
			a.emailClaim = defaultEmailClaim
		}
		client := cfg.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: httpTimeout}
		}
		a.keys = &keySet{
			issuer: issuer,
			client: client,
			log:    logger,
			now:    func() time.Time { return a.now() },
		}
	case "":
		return nil, errors.New("auth: no mode (want none, password, apikey or oidc)")
	default:
		return nil, fmt.Errorf("auth: unknown mode %q (want none, password, apikey or oidc)", cfg.Mode)
	}
	return a, nil
}

// Mode returns the configured mode.
func (a *Authenticator) Mode() Mode { return a.mode }

// checkIssuer returns the issuer URL without trailing slash. It must be https,
// or http on a loopback host (a local development issuer).
func checkIssuer(issuer string) (string, error) {
	if issuer == "" {
		return "", errors.New("auth: mode oidc needs an issuer (auth.oidc_issuer)")
	}
	if err := checkFetchURL(issuer); err != nil {
		return "", fmt.Errorf("auth: oidc issuer: %w", err)
	}
	return strings.TrimRight(issuer, "/"), nil
}

// checkFetchURL refuses URLs keys would be fetched from insecurely.
func checkFetchURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL", raw)
	}
	if u.Host == "" || u.User != nil {
		return fmt.Errorf("%q is not an absolute URL with a host", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q must use https (http only on a loopback host)", raw)
	default:
		return fmt.Errorf("%q must use https", raw)
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func parseAdmins(list []string) (map[string]struct{}, error) {
	admins := make(map[string]struct{}, len(list))
	for _, entry := range list {
		e := strings.TrimSpace(entry)
		if e == "" {
			continue
		}
		if strings.Contains(e, "@") {
			admins[strings.ToLower(e)] = struct{}{}
			continue
		}
		id, err := userid.Parse(e)
		if err != nil {
			return nil, fmt.Errorf("auth: admin %q is neither an email nor a user id", e)
		}
		admins[id.String()] = struct{}{}
	}
	return admins, nil
}

// IsAdmin reports whether u is an admin: flagged admin in the store, or listed
// in Config.Admins by email (case-insensitive) or id.
func (a *Authenticator) IsAdmin(u users.User) bool {
	if u.Admin {
		return true
	}
	if !u.ID.IsZero() {
		if _, ok := a.admins[u.ID.String()]; ok {
			return true
		}
	}
	if u.Email != "" {
		if _, ok := a.admins[strings.ToLower(u.Email)]; ok {
			return true
		}
	}
	return false
}

// authError is an ErrUnauthenticated or ErrDisabled with a reason that may be
// shown to the client. Reasons never contain credentials.
type authError struct {
	kind   error
	reason string
	// badToken: credentials were presented and refused (RFC 6750 invalid_token).
	badToken bool
}

func (e *authError) Error() string {
	if e.reason == "" {
		return e.kind.Error()
	}
	return e.kind.Error() + ": " + e.reason
}

func (e *authError) Unwrap() error { return e.kind }

func unauthenticated(reason string) error {
	return &authError{kind: ErrUnauthenticated, reason: reason}
}

func badToken(reason string) error {
	return &authError{kind: ErrUnauthenticated, reason: reason, badToken: true}
}

func disabled() error { return &authError{kind: ErrDisabled} }

// Resolve returns the user making r. The error wraps ErrUnauthenticated (no
// or bad credentials: 401) or ErrDisabled (403); any other error is a failure
// to decide, such as an unreachable store (500).
func (a *Authenticator) Resolve(r *http.Request) (users.User, error) {
	ctx := r.Context()
	var (
		u   users.User
		err error
	)
	switch a.mode {
	case ModeNone:
		u, err = a.defaultUser(ctx)
	case ModePassword:
		u, err = a.resolvePassword(r)
	case ModeAPIKey:
		var key string
		if key, err = bearer(r); err == nil {
			u, err = a.userByAPIKey(ctx, key)
		}
	case ModeOIDC:
		u, err = a.resolveOIDC(r)
	default:
		err = fmt.Errorf("auth: unknown mode %q", a.mode)
	}
	if err != nil {
		return users.User{}, err
	}
	if u.ID.IsZero() {
		return users.User{}, errors.New("auth: the user store returned a user without id")
	}
	if u.Disabled {
		return users.User{}, disabled()
	}
	return u, nil
}

func (a *Authenticator) defaultUser(ctx context.Context) (users.User, error) {
	u, err := a.store.EnsureDefault(ctx)
	if err != nil {
		return users.User{}, fmt.Errorf("auth: default user: %w", err)
	}
	return u, nil
}

func (a *Authenticator) userByAPIKey(ctx context.Context, key string) (users.User, error) {
	u, err := a.store.UserByAPIKey(ctx, key)
	if errors.Is(err, users.ErrNotFound) {
		return users.User{}, badToken("unknown API key")
	}
	if err != nil {
		return users.User{}, fmt.Errorf("auth: look up API key: %w", err)
	}
	return u, nil
}

// bearer returns the token of "Authorization: Bearer <token>".
func bearer(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", unauthenticated("missing credentials")
	}
	scheme, token, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", unauthenticated("expected a bearer token")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", unauthenticated("empty bearer token")
	}
	return token, nil
}

type ctxKey struct{}

// WithUser returns ctx carrying u, as Middleware does; for tests and internal
// callers (jobs, the CLI) acting as a user.
func WithUser(ctx context.Context, u users.User) context.Context {
	return context.WithValue(ctx, ctxKey{}, u)
}

// UserFrom returns the user Middleware (or WithUser) put into ctx. It is the
// only way handlers learn who they serve; ok is false when there is none.
func UserFrom(ctx context.Context) (users.User, bool) {
	u, ok := ctx.Value(ctxKey{}).(users.User)
	if !ok || u.ID.IsZero() {
		return users.User{}, false
	}
	return u, true
}

// Middleware resolves every request with Resolve and calls next with the user
// in the context. Failures answer 401 (with WWW-Authenticate), 403 or 500 in
// the API's JSON error shape, and next is not called.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := a.Resolve(r)
		if err != nil {
			a.writeAuthError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithUser(r.Context(), u)))
	})
}

// writeAuthError answers a Resolve or Login error.
func (a *Authenticator) writeAuthError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *authError
	reason := ""
	if errors.As(err, &ae) {
		reason = ae.reason
	}
	switch {
	case errors.Is(err, ErrDisabled):
		a.log.DebugContext(r.Context(), "auth: refused disabled user", "method", r.Method, "path", r.URL.Path)
		writeError(w, http.StatusForbidden, "forbidden", "user is disabled")
	case errors.Is(err, ErrUnauthenticated):
		if reason == "" {
			reason = "authentication required"
		}
		a.log.DebugContext(r.Context(), "auth: unauthenticated request", "method", r.Method, "path", r.URL.Path, "reason", reason, "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", a.challenge(ae != nil && ae.badToken))
		writeError(w, http.StatusUnauthorized, "unauthenticated", reason)
	default:
		a.log.ErrorContext(r.Context(), "auth: cannot resolve user", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error")
	}
}

func (a *Authenticator) challenge(badToken bool) string {
	if a.mode == ModePassword {
		return `Basic realm="inboxd"`
	}
	if badToken {
		return `Bearer realm="inboxd", error="invalid_token"`
	}
	return `Bearer realm="inboxd"`
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError writes the API's error shape {"error": {"code", "message"}}.
func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: message}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
