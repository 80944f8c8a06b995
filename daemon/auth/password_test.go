package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/userid"
	"golang.org/x/crypto/bcrypt"
)

// mustHash hashes pw at bcrypt's minimum cost, to keep tests fast.
func mustHash(t testing.TB, pw string) []byte {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func basic(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newPasswordAuth(t *testing.T, pw string, clock *testClock) (*Authenticator, *fakeUserStore) {
	t.Helper()
	store := newFakeUserStore()
	a := newTestAuth(t, Config{Mode: ModePassword, PasswordHash: mustHash(t, pw), SessionTTL: time.Hour}, store, testBox(t, 1), clock)
	return a, store
}

func TestPasswordMode(t *testing.T) {
	clock := newTestClock()
	a, _ := newPasswordAuth(t, "s3cret", clock)
	token, expires, err := a.Login(t.Context(), "s3cret")
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	if want := clock.Now().Add(time.Hour); !expires.Equal(want) {
		t.Errorf("expires = %s, want %s", expires, want)
	}

	payload, mac, _ := strings.Cut(token, ".")
	tamperedMAC := payload + "." + flipChar(mac)
	tamperedPayload := flipChar(payload) + "." + mac
	// A token naming a later expiry, with the MAC of the real one.
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	raw[7]++
	extended := base64.RawURLEncoding.EncodeToString(raw) + "." + mac

	tests := []struct {
		name   string
		header string
		err    error
	}{
		{"no credentials", "", ErrUnauthenticated},
		{"wrong password", basic("admin", "guess"), ErrUnauthenticated},
		{"empty password", basic("admin", ""), ErrUnauthenticated},
		{"password prefix", basic("admin", "s3cre"), ErrUnauthenticated},
		{"right password", basic("admin", "s3cret"), nil},
		{"right password again (cached)", basic("admin", "s3cret"), nil},
		{"any username", basic("", "s3cret"), nil},
		{"wrong password after caching", basic("admin", "s3cret!"), ErrUnauthenticated},
		{"password as bearer", "Bearer s3cret", ErrUnauthenticated},
		{"session token", "Bearer " + token, nil},
		{"tampered MAC", "Bearer " + tamperedMAC, ErrUnauthenticated},
		{"tampered payload", "Bearer " + tamperedPayload, ErrUnauthenticated},
		{"extended expiry", "Bearer " + extended, ErrUnauthenticated},
		{"no dot", "Bearer " + payload + mac, ErrUnauthenticated},
		{"garbage", "Bearer x.y", ErrUnauthenticated},
		{"other scheme", "Digest username=x", ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := a.Resolve(requestWith(tt.header))
			wantErrKind(t, err, tt.err)
			if tt.err == nil && u.ID != userid.Default() {
				t.Fatalf("user = %s, want the default user", u.ID)
			}
		})
	}
	if a.pwOK.Load() == nil {
		t.Error("a verified password was not cached")
	}

	t.Run("expired session", func(t *testing.T) {
		clock.Advance(time.Hour - time.Second)
		if _, err := a.Resolve(requestWith("Bearer " + token)); err != nil {
			t.Fatalf("just before expiry: %v", err)
		}
		clock.Advance(time.Second)
		_, err := a.Resolve(requestWith("Bearer " + token))
		wantErrKind(t, err, ErrUnauthenticated)
		if !strings.Contains(err.Error(), "expired") {
			t.Errorf("err = %v, want it to say expired", err)
		}
	})
}

func flipChar(s string) string {
	b := []byte(s)
	if b[0] == 'A' {
		b[0] = 'B'
	} else {
		b[0] = 'A'
	}
	return string(b)
}

func TestLogin(t *testing.T) {
	a, store := newPasswordAuth(t, "s3cret", nil)
	tests := []struct {
		name string
		pw   string
		err  error
	}{
		{"right", "s3cret", nil},
		{"wrong", "S3cret", ErrUnauthenticated},
		{"empty", "", ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, exp, err := a.Login(t.Context(), tt.pw)
			wantErrKind(t, err, tt.err)
			if tt.err == nil && (tok == "" || exp.IsZero()) {
				t.Fatalf("Login = %q, %s", tok, exp)
			}
			if tt.err != nil && tok != "" {
				t.Fatalf("Login failed but returned a token")
			}
		})
	}

	t.Run("two logins, two tokens", func(t *testing.T) {
		t1, _, _ := a.Login(t.Context(), "s3cret")
		t2, _, _ := a.Login(t.Context(), "s3cret")
		if t1 == t2 {
			t.Fatal("two logins gave the same token")
		}
	})

	t.Run("disabled default user", func(t *testing.T) {
		store.setDisabled(userid.Default(), true)
		defer store.setDisabled(userid.Default(), false)
		_, _, err := a.Login(t.Context(), "s3cret")
		wantErrKind(t, err, ErrDisabled)
	})

	t.Run("other modes", func(t *testing.T) {
		none := newTestAuth(t, Config{Mode: ModeNone}, store, nil, nil)
		if _, _, err := none.Login(t.Context(), "s3cret"); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Login in mode none: err = %v, want ErrUnsupported", err)
		}
	})
}

func TestSessionsInvalidated(t *testing.T) {
	store := newFakeUserStore()
	box := testBox(t, 1)
	old := newTestAuth(t, Config{Mode: ModePassword, PasswordHash: mustHash(t, "old")}, store, box, nil)
	token, _, err := old.Login(t.Context(), "old")
	if err != nil {
		t.Fatal(err)
	}
	bearerToken := "Bearer " + token

	tests := []struct {
		name string
		a    *Authenticator
		err  error
	}{
		{"same configuration", old, nil},
		{"same hash, restarted", newTestAuth(t, Config{Mode: ModePassword, PasswordHash: old.pwHash}, store, box, nil), nil},
		{"new password", newTestAuth(t, Config{Mode: ModePassword, PasswordHash: mustHash(t, "new")}, store, box, nil), ErrUnauthenticated},
		{"same password, new hash", newTestAuth(t, Config{Mode: ModePassword, PasswordHash: mustHash(t, "old")}, store, box, nil), ErrUnauthenticated},
		{"new secret key", newTestAuth(t, Config{Mode: ModePassword, PasswordHash: old.pwHash}, store, testBox(t, 2), nil), ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.a.Resolve(requestWith(bearerToken))
			wantErrKind(t, err, tt.err)
		})
	}
}

func TestLoginHandler(t *testing.T) {
	a, _ := newPasswordAuth(t, "s3cret", nil)
	none := newTestAuth(t, Config{Mode: ModeNone}, newFakeUserStore(), nil, nil)
	tests := []struct {
		name   string
		a      *Authenticator
		method string
		body   string
		status int
		code   string
	}{
		{"ok", a, http.MethodPost, `{"password": "s3cret"}`, http.StatusOK, ""},
		{"wrong password", a, http.MethodPost, `{"password": "nope"}`, http.StatusUnauthorized, "unauthenticated"},
		{"no password", a, http.MethodPost, `{}`, http.StatusUnauthorized, "unauthenticated"},
		{"not JSON", a, http.MethodPost, `password=s3cret`, http.StatusBadRequest, "bad_request"},
		{"too large", a, http.MethodPost, `{"password": "` + strings.Repeat("x", 8<<10) + `"}`, http.StatusBadRequest, "bad_request"},
		{"GET", a, http.MethodGet, ``, http.StatusMethodNotAllowed, "method_not_allowed"},
		{"mode none", none, http.MethodPost, `{"password": "s3cret"}`, http.StatusNotFound, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			r := httptest.NewRequest(tt.method, "/api/v1/auth/login", strings.NewReader(tt.body))
			tt.a.LoginHandler().ServeHTTP(rec, r)
			if rec.Code != tt.status {
				t.Fatalf("status = %d, want %d (body %s)", rec.Code, tt.status, rec.Body)
			}
			if tt.status != http.StatusOK {
				if e := decodeAPIError(t, rec); e.Error.Code != tt.code {
					t.Fatalf("code = %q, want %q", e.Error.Code, tt.code)
				}
				if strings.Contains(rec.Body.String(), "s3cret") {
					t.Fatalf("the body echoes the password: %s", rec.Body)
				}
				return
			}
			if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}
			var resp struct {
				Token     string    `json:"token"`
				ExpiresAt time.Time `json:"expires_at"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || resp.Token == "" || resp.ExpiresAt.IsZero() {
				t.Fatalf("body %s: %v", rec.Body, err)
			}
			// The token authenticates through the middleware.
			rec2 := httptest.NewRecorder()
			a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if u, ok := UserFrom(r.Context()); !ok || u.ID != userid.Default() {
					t.Errorf("UserFrom = %+v, %v", u, ok)
				}
			})).ServeHTTP(rec2, requestWith("Bearer "+resp.Token))
			if rec2.Code != http.StatusOK {
				t.Fatalf("request with the session token: status %d (%s)", rec2.Code, rec2.Body)
			}
		})
	}
}

func TestHashPassword(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword(h, []byte("correct horse")) != nil {
		t.Fatal("hash does not match its password")
	}
	if _, err := New(Config{Mode: ModePassword, PasswordHash: h}, newFakeUserStore(), testBox(t, 1), nil); err != nil {
		t.Fatalf("New with HashPassword's hash: %v", err)
	}
	for _, bad := range []string{"", strings.Repeat("x", 73)} {
		if _, err := HashPassword(bad); err == nil || !strings.HasPrefix(err.Error(), "auth: ") {
			t.Errorf("HashPassword(%d bytes): err = %v, want an auth: error", len(bad), err)
		}
	}
}

func BenchmarkResolvePasswordBasic(b *testing.B) {
	store := newFakeUserStore()
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.DefaultCost)
	if err != nil {
		b.Fatal(err)
	}
	a := newTestAuth(b, Config{Mode: ModePassword, PasswordHash: h}, store, testBox(b, 1), nil)
	r := requestWith(basic("admin", "s3cret"))
	for b.Loop() {
		if _, err := a.Resolve(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResolvePasswordSession(b *testing.B) {
	store := newFakeUserStore()
	a := newTestAuth(b, Config{Mode: ModePassword, PasswordHash: mustHash(b, "s3cret")}, store, testBox(b, 1), nil)
	tok, _, err := a.Login(b.Context(), "s3cret")
	if err != nil {
		b.Fatal(err)
	}
	r := requestWith("Bearer " + tok)
	for b.Loop() {
		if _, err := a.Resolve(r); err != nil {
			b.Fatal(err)
		}
	}
}
