package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/secretbox"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
)

// fakeUserStore is an in-memory fake of *users.Store for these tests.
type fakeUserStore struct {
	mu       sync.Mutex
	users    map[userid.ID]users.User
	apiKeys  map[string]userid.ID
	subjects map[string]userid.ID
	err      error // when set, every method fails with it
	calls    map[string]int
}

var _ UserStore = (*fakeUserStore)(nil)

func newFakeUserStore() *fakeUserStore {
	return &fakeUserStore{
		users:    map[userid.ID]users.User{},
		apiKeys:  map[string]userid.ID{},
		subjects: map[string]userid.ID{},
		calls:    map[string]int{},
	}
}

func (f *fakeUserStore) Get(_ context.Context, id userid.ID) (users.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["Get"]++
	if f.err != nil {
		return users.User{}, f.err
	}
	u, ok := f.users[id]
	if !ok {
		return users.User{}, users.ErrNotFound
	}
	return u, nil
}

func (f *fakeUserStore) EnsureDefault(_ context.Context) (users.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["EnsureDefault"]++
	if f.err != nil {
		return users.User{}, f.err
	}
	id := userid.Default()
	u, ok := f.users[id]
	if !ok {
		u = users.User{ID: id, Email: users.DefaultEmail, CreatedAt: time.Unix(1, 0)}
		f.users[id] = u
	}
	return u, nil
}

func (f *fakeUserStore) UserByAPIKey(_ context.Context, key string) (users.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["UserByAPIKey"]++
	if f.err != nil {
		return users.User{}, f.err
	}
	id, ok := f.apiKeys[key]
	if !ok {
		return users.User{}, users.ErrNotFound
	}
	return f.users[id], nil
}

func (f *fakeUserStore) FindOrCreateBySubject(_ context.Context, subject, email string) (users.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["FindOrCreateBySubject"]++
	if f.err != nil {
		return users.User{}, f.err
	}
	if id, ok := f.subjects[subject]; ok {
		return f.users[id], nil
	}
	u := users.User{ID: userid.New(), Email: email, AuthSubject: subject, CreatedAt: time.Unix(2, 0)}
	f.users[u.ID] = u
	f.subjects[subject] = u.ID
	return u, nil
}

// addUser stores a local user and returns it.
func (f *fakeUserStore) addUser(email string, admin bool) users.User {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := users.User{ID: userid.New(), Email: email, Admin: admin, CreatedAt: time.Unix(3, 0)}
	f.users[u.ID] = u
	return u
}

func (f *fakeUserStore) addAPIKey(key string, id userid.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.apiKeys[key] = id
}

func (f *fakeUserStore) setDisabled(id userid.ID, disabled bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.users[id]
	u.Disabled = disabled
	f.users[id] = u
}

func (f *fakeUserStore) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeUserStore) callCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeUserStore) bySubject(sub string) (users.User, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.subjects[sub]
	return f.users[id], ok
}

// testClock is a settable clock for expiry and refresh tests.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func testBox(t testing.TB, seed byte) *secretbox.Box {
	t.Helper()
	box, err := secretbox.New(bytes.Repeat([]byte{seed}, secretbox.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// newTestAuth builds an Authenticator on clock.
func newTestAuth(t testing.TB, cfg Config, store UserStore, box *secretbox.Box, clock *testClock) *Authenticator {
	t.Helper()
	a, err := New(cfg, store, box, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if clock != nil {
		a.now = clock.Now
	}
	return a
}

// requestWith returns a GET request with the Authorization header set (when not "").
func requestWith(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/api/v1/me", nil)
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	return r
}

// wantErrKind checks err against the expected outcome: nil, ErrUnauthenticated or ErrDisabled.
func wantErrKind(t *testing.T, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("err = %v, want none", err)
	case want != nil && !errors.Is(err, want):
		t.Fatalf("err = %v, want %v", err, want)
	}
	if err != nil && !strings.HasPrefix(err.Error(), "auth: ") {
		t.Errorf("error %q lacks the auth: prefix", err)
	}
}

func TestNewValidates(t *testing.T) {
	store := newFakeUserStore()
	box := testBox(t, 1)
	hash := mustHash(t, "pw")
	tests := []struct {
		name    string
		cfg     Config
		store   UserStore
		box     *secretbox.Box
		wantErr string
	}{
		{"none", Config{Mode: ModeNone}, store, nil, ""},
		{"apikey", Config{Mode: ModeAPIKey}, store, nil, ""},
		{"password", Config{Mode: ModePassword, PasswordHash: hash}, store, box, ""},
		{"oidc https", Config{Mode: ModeOIDC, OIDCIssuer: "https://tenant.example.com/", OIDCAudience: "api"}, store, nil, ""},
		{"oidc loopback http", Config{Mode: ModeOIDC, OIDCIssuer: "http://127.0.0.1:9/", OIDCAudience: "api"}, store, nil, ""},
		{"admins", Config{Mode: ModeNone, Admins: []string{"Boss@Example.com", " 12345678-1234-5678-9012-123456789012 ", ""}}, store, nil, ""},
		{"empty mode", Config{}, store, nil, "no mode"},
		{"unknown mode", Config{Mode: "ldap"}, store, nil, "unknown mode"},
		{"no store", Config{Mode: ModeNone}, nil, nil, "no user store"},
		{"password without hash", Config{Mode: ModePassword}, store, box, "needs a password"},
		{"password bad hash", Config{Mode: ModePassword, PasswordHash: []byte("plaintext")}, store, box, "not a bcrypt hash"},
		{"password without box", Config{Mode: ModePassword, PasswordHash: hash}, store, nil, "secret key"},
		{"password negative ttl", Config{Mode: ModePassword, PasswordHash: hash, SessionTTL: -time.Second}, store, box, "negative"},
		{"oidc without issuer", Config{Mode: ModeOIDC, OIDCAudience: "api"}, store, nil, "needs an issuer"},
		{"oidc plain http", Config{Mode: ModeOIDC, OIDCIssuer: "http://idp.example.com/", OIDCAudience: "api"}, store, nil, "https"},
		{"oidc not a url", Config{Mode: ModeOIDC, OIDCIssuer: "tenant.example.com", OIDCAudience: "api"}, store, nil, "absolute URL"},
		{"oidc without audience", Config{Mode: ModeOIDC, OIDCIssuer: "https://tenant.example.com/"}, store, nil, "audience"},
		{"bad admin", Config{Mode: ModeNone, Admins: []string{"bob"}}, store, nil, "neither an email nor a user id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.cfg, tt.store, tt.box, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if a.Mode() != tt.cfg.Mode {
					t.Errorf("Mode() = %q", a.Mode())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New err = %v, want containing %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "auth: ") {
				t.Errorf("error %q lacks the auth: prefix", err)
			}
		})
	}
}

func TestNoneMode(t *testing.T) {
	store := newFakeUserStore()
	a := newTestAuth(t, Config{Mode: ModeNone}, store, nil, nil)
	for _, h := range []string{"", "Bearer whatever", "Basic Zm9vOmJhcg=="} {
		u, err := a.Resolve(requestWith(h))
		if err != nil {
			t.Fatalf("Resolve(%q): %v", h, err)
		}
		if u.ID != userid.Default() {
			t.Fatalf("Resolve(%q) = %s, want the default user", h, u.ID)
		}
	}

	store.setDisabled(userid.Default(), true)
	_, err := a.Resolve(requestWith(""))
	wantErrKind(t, err, ErrDisabled)

	store.setErr(errors.New("database is down"))
	_, err = a.Resolve(requestWith(""))
	if err == nil || errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrDisabled) {
		t.Fatalf("store failure: err = %v, want a non-auth error", err)
	}
}

func TestAPIKeyMode(t *testing.T) {
	store := newFakeUserStore()
	alice := store.addUser("alice@example.com", false)
	bob := store.addUser("bob@example.com", false)
	store.addAPIKey("key-alice", alice.ID)
	store.addAPIKey("key-bob", bob.ID)
	store.setDisabled(bob.ID, true)
	a := newTestAuth(t, Config{Mode: ModeAPIKey}, store, nil, nil)

	tests := []struct {
		name   string
		header string
		want   userid.ID
		err    error
	}{
		{"missing", "", userid.ID{}, ErrUnauthenticated},
		{"empty bearer", "Bearer ", userid.ID{}, ErrUnauthenticated},
		{"basic instead of bearer", "Basic a2V5LWFsaWNlOg==", userid.ID{}, ErrUnauthenticated},
		{"unknown", "Bearer nope", userid.ID{}, ErrUnauthenticated},
		{"valid", "Bearer key-alice", alice.ID, nil},
		{"scheme case-insensitive", "bearer key-alice", alice.ID, nil},
		{"disabled", "Bearer key-bob", userid.ID{}, ErrDisabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := a.Resolve(requestWith(tt.header))
			wantErrKind(t, err, tt.err)
			if u.ID != tt.want {
				t.Fatalf("user = %s, want %s", u.ID, tt.want)
			}
		})
	}

	t.Run("store failure is not a 401", func(t *testing.T) {
		store.setErr(errors.New("database is down"))
		defer store.setErr(nil)
		_, err := a.Resolve(requestWith("Bearer key-alice"))
		if err == nil || errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("err = %v, want a non-auth error", err)
		}
	})
}

type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func decodeAPIError(t *testing.T, rec *httptest.ResponseRecorder) apiError {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var e apiError
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatalf("body %q is not the JSON error shape: %v", rec.Body.String(), err)
	}
	return e
}

func TestMiddleware(t *testing.T) {
	store := newFakeUserStore()
	alice := store.addUser("alice@example.com", false)
	bob := store.addUser("bob@example.com", false)
	store.addAPIKey("key-alice", alice.ID)
	store.addAPIKey("key-bob", bob.ID)
	store.setDisabled(bob.ID, true)
	brokenStore := newFakeUserStore()
	brokenStore.setErr(errors.New("database is down"))

	apikey := newTestAuth(t, Config{Mode: ModeAPIKey}, store, nil, nil)
	password := newTestAuth(t, Config{Mode: ModePassword, PasswordHash: mustHash(t, "s3cret")}, store, testBox(t, 1), nil)
	none := newTestAuth(t, Config{Mode: ModeNone}, store, nil, nil)
	broken := newTestAuth(t, Config{Mode: ModeNone}, brokenStore, nil, nil)

	tests := []struct {
		name      string
		a         *Authenticator
		header    string
		status    int
		code      string
		challenge string
		user      userid.ID
	}{
		{"none", none, "", http.StatusOK, "", "", userid.Default()},
		{"apikey ok", apikey, "Bearer key-alice", http.StatusOK, "", "", alice.ID},
		{"apikey missing", apikey, "", http.StatusUnauthorized, "unauthenticated", `Bearer realm="inboxd"`, userid.ID{}},
		{"apikey unknown", apikey, "Bearer nope", http.StatusUnauthorized, "unauthenticated", `Bearer realm="inboxd", error="invalid_token"`, userid.ID{}},
		{"apikey disabled", apikey, "Bearer key-bob", http.StatusForbidden, "forbidden", "", userid.ID{}},
		{"password missing", password, "", http.StatusUnauthorized, "unauthenticated", `Basic realm="inboxd"`, userid.ID{}},
		{"password ok", password, basic("anyone", "s3cret"), http.StatusOK, "", "", userid.Default()},
		{"store down", broken, "", http.StatusInternalServerError, "internal", "", userid.ID{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var seen users.User
			called := false
			h := tt.a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				called = true
				u, ok := UserFrom(r.Context())
				if !ok {
					t.Error("handler: no user in context")
				}
				seen = u
				w.WriteHeader(http.StatusOK)
			}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, requestWith(tt.header))
			if rec.Code != tt.status {
				t.Fatalf("status = %d, want %d (body %s)", rec.Code, tt.status, rec.Body)
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != tt.challenge {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tt.challenge)
			}
			if tt.status == http.StatusOK {
				if !called || seen.ID != tt.user {
					t.Fatalf("handler called=%v with user %s, want %s", called, seen.ID, tt.user)
				}
				return
			}
			if called {
				t.Fatal("handler called on a refused request")
			}
			if e := decodeAPIError(t, rec); e.Error.Code != tt.code || e.Error.Message == "" {
				t.Fatalf("error = %+v, want code %q and a message", e.Error, tt.code)
			}
		})
	}
}

func TestMiddlewareNeverEchoesCredentials(t *testing.T) {
	store := newFakeUserStore()
	var logs bytes.Buffer
	a, err := New(Config{Mode: ModeAPIKey}, store, nil, slogTo(&logs))
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	a.Middleware(http.NotFoundHandler()).ServeHTTP(rec, requestWith("Bearer super-secret-key-value"))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("status = %d", rec.Code)
	}
	for what, s := range map[string]string{"body": rec.Body.String(), "log": logs.String()} {
		if strings.Contains(s, "super-secret-key-value") {
			t.Errorf("the %s contains the presented key: %s", what, s)
		}
	}
	if logs.Len() == 0 {
		t.Error("the refusal was not logged at debug level")
	}
}

func TestUserContext(t *testing.T) {
	if _, ok := UserFrom(context.Background()); ok {
		t.Fatal("UserFrom on an empty context reported a user")
	}
	if _, ok := UserFrom(WithUser(context.Background(), users.User{})); ok {
		t.Fatal("UserFrom reported a user with the zero id")
	}
	u := users.User{ID: userid.New(), Email: "a@example.com"}
	got, ok := UserFrom(WithUser(context.Background(), u))
	if !ok || got != u {
		t.Fatalf("UserFrom = %+v, %v; want %+v", got, ok, u)
	}
}

func TestIsAdmin(t *testing.T) {
	listedID := userid.New()
	a := newTestAuth(t, Config{Mode: ModeNone, Admins: []string{"Boss@Example.COM", strings.ToUpper(listedID.String())}}, newFakeUserStore(), nil, nil)
	tests := []struct {
		name string
		u    users.User
		want bool
	}{
		{"flagged in store", users.User{ID: userid.New(), Admin: true}, true},
		{"listed by email, other case", users.User{ID: userid.New(), Email: "boss@example.com"}, true},
		{"listed by id", users.User{ID: listedID, Email: "x@example.com"}, true},
		{"not listed", users.User{ID: userid.New(), Email: "worker@example.com"}, false},
		{"no email", users.User{ID: userid.New()}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := a.IsAdmin(tt.u); got != tt.want {
				t.Fatalf("IsAdmin = %v, want %v", got, tt.want)
			}
		})
	}
}
