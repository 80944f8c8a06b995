package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/users"
	"golang.org/x/crypto/bcrypt"
)

// Session tokens (mode password) are stateless:
//
//	base64url(expiry as 8-byte big-endian unix seconds || 16-byte nonce) "." base64url(MAC)
//
// where MAC = box.MAC("session", sha256(password hash) || payload). Binding
// the password hash means a new password (or a re-hash of the same one)
// invalidates every session; a new secret key does too.
const (
	sessionPurpose    = "session"
	passwordPurpose   = "password-check"
	sessionNonceLen   = 16
	sessionPayloadLen = 8 + sessionNonceLen
	maxSessionToken   = 128 // longer than any token we make
	maxLoginBody      = 4 << 10
)

// HashPassword returns the bcrypt hash of pw for Config.PasswordHash.
func HashPassword(pw string) ([]byte, error) {
	if pw == "" {
		return nil, errors.New("auth: empty password")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return nil, fmt.Errorf("auth: hash password: %w", err)
	}
	return h, nil
}

// checkPassword compares pw with the configured bcrypt hash. bcrypt is slow on
// purpose, so once the right password has been seen its MAC (never the
// password) is kept and later requests with it skip bcrypt; wrong passwords
// always pay the full bcrypt cost.
func (a *Authenticator) checkPassword(pw string) bool {
	if pw == "" {
		return false
	}
	mac := a.box.MAC(passwordPurpose, []byte(pw))
	if ok := a.pwOK.Load(); ok != nil && hmac.Equal(ok[:], mac) {
		return true
	}
	if bcrypt.CompareHashAndPassword(a.pwHash, []byte(pw)) != nil {
		return false
	}
	var m [32]byte
	copy(m[:], mac)
	a.pwOK.Store(&m)
	return true
}

func (a *Authenticator) resolvePassword(r *http.Request) (users.User, error) {
	if r.Header.Get("Authorization") == "" {
		return users.User{}, unauthenticated("missing credentials")
	}
	if _, pw, ok := r.BasicAuth(); ok {
		if !a.checkPassword(pw) {
			return users.User{}, badToken("wrong password")
		}
		return a.defaultUser(r.Context())
	}
	tok, err := bearer(r)
	if err != nil {
		return users.User{}, unauthenticated("expected HTTP Basic credentials or a session token")
	}
	if err := a.checkSession(tok); err != nil {
		return users.User{}, err
	}
	return a.defaultUser(r.Context())
}

func (a *Authenticator) sessionMAC(payload []byte) []byte {
	msg := make([]byte, 0, len(a.pwBinding)+len(payload))
	msg = append(msg, a.pwBinding[:]...)
	msg = append(msg, payload...)
	return a.box.MAC(sessionPurpose, msg)
}

func (a *Authenticator) newSession() (string, time.Time) {
	exp := a.now().Add(a.sessionTTL).Unix()
	var payload [sessionPayloadLen]byte
	binary.BigEndian.PutUint64(payload[:8], uint64(exp))
	_, _ = rand.Read(payload[8:]) // never fails (crypto/rand panics instead)
	tok := base64.RawURLEncoding.EncodeToString(payload[:]) + "." + base64.RawURLEncoding.EncodeToString(a.sessionMAC(payload[:]))
	return tok, time.Unix(exp, 0).UTC()
}

func (a *Authenticator) checkSession(tok string) error {
	if len(tok) > maxSessionToken {
		return badToken("malformed session token")
	}
	p, m, ok := strings.Cut(tok, ".")
	if !ok {
		return badToken("malformed session token")
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil || len(payload) != sessionPayloadLen {
		return badToken("malformed session token")
	}
	mac, err := base64.RawURLEncoding.DecodeString(m)
	if err != nil || !hmac.Equal(mac, a.sessionMAC(payload)) {
		return badToken("invalid session token")
	}
	exp := int64(binary.BigEndian.Uint64(payload[:8]))
	if !a.now().Before(time.Unix(exp, 0)) {
		return badToken("session expired")
	}
	return nil
}

// Login checks the shared password (mode password) and returns a session
// token for "Authorization: Bearer" and its expiry. A wrong password is
// ErrUnauthenticated; in other modes Login fails with errors.ErrUnsupported.
func (a *Authenticator) Login(ctx context.Context, password string) (token string, expires time.Time, err error) {
	if a.mode != ModePassword {
		return "", time.Time{}, fmt.Errorf("auth: login needs mode password, not %q: %w", a.mode, errors.ErrUnsupported)
	}
	if !a.checkPassword(password) {
		return "", time.Time{}, unauthenticated("wrong password")
	}
	u, err := a.defaultUser(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	if u.Disabled {
		return "", time.Time{}, disabled()
	}
	token, expires = a.newSession()
	return token, expires, nil
}

type loginRequest struct {
	Password string `json:"password"`
}

type loginResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// LoginHandler serves POST /api/v1/auth/login: JSON {"password": "..."} ->
// 200 {"token", "expires_at"}, or 401 / 403 in the API's error shape. In modes
// other than password it answers 404. It is mounted outside Middleware.
func (a *Authenticator) LoginHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.mode != ModePassword {
			writeError(w, http.StatusNotFound, "not_found", "login is only available in auth mode password")
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
			return
		}
		var req loginRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxLoginBody)).Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", `the body must be JSON {"password": "..."}`)
			return
		}
		tok, exp, err := a.Login(r.Context(), req.Password)
		switch {
		case err == nil:
			w.Header().Set("Cache-Control", "no-store")
			writeJSON(w, http.StatusOK, loginResponse{Token: tok, ExpiresAt: exp})
		case errors.Is(err, ErrUnauthenticated):
			// No WWW-Authenticate here: this is where credentials are
			// submitted, and a Basic challenge would make browsers pop up
			// their own password dialog over the login form.
			a.log.DebugContext(r.Context(), "auth: login refused", "remote", r.RemoteAddr)
			writeError(w, http.StatusUnauthorized, "unauthenticated", "wrong password")
		default:
			a.writeAuthError(w, r, err)
		}
	})
}
