package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/secretbox"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// env is one API under test, over real stores.
type env struct {
	srv   *httptest.Server
	api   *api.Server
	kv    kv.Store
	users *users.Store
	box   *secretbox.Box
}

type backend struct {
	name  string
	newKV func(t testing.TB, db *sqldb.DB) kv.Store
}

func backends() []backend {
	return []backend{
		{"embedded", func(t testing.TB, db *sqldb.DB) kv.Store { return kv.NewSQL(db) }},
		{"redis", func(t testing.TB, db *sqldb.DB) kv.Store {
			s, err := kv.NewRedis(context.Background(), testsvc.Redis(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
	}
}

func newEnv(t testing.TB, b backend, ac auth.Config) *env {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	store := b.newKV(t, db)
	us := users.NewStore(db)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := auth.New(ac, us, box, logger)
	if err != nil {
		t.Fatal(err)
	}
	s := api.New(api.Deps{
		Auth: a, Users: us, Settings: settings.NewStore(store, box), KV: store,
		Workflows: workflow.NewStore(db), Logs: logs.NewStore(db), Tools: tools.NewStatic(),
		Metrics: metrics.New("test"), Logger: logger,
		Ready: []api.Check{{Name: "sql", Ping: db.Ping}, {Name: "kv", Ping: store.Ping}},
	})
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &env{srv: srv, api: s, kv: store, users: us, box: box}
}

// newUser creates a user with an API key.
func (e *env) newUser(t testing.TB, email string, admin bool) (users.User, string) {
	t.Helper()
	ctx := context.Background()
	u, err := e.users.Create(ctx, users.NewUser{Email: email, Admin: admin})
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.users.CreateAPIKey(ctx, u.ID, "test")
	if err != nil {
		t.Fatal(err)
	}
	return u, key
}

type request struct {
	method, path, body string
	bearer             string
	basic              string // password for HTTP Basic
}

func (e *env) do(t testing.TB, r request) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(r.method, e.srv.URL+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	if r.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	if r.basic != "" {
		req.SetBasicAuth("admin", r.basic)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	if len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("%s %s: bad JSON %q", r.method, r.path, raw)
		}
	}
	return resp.StatusCode, body
}

func allKeys(t testing.TB, store kv.Store) []string {
	t.Helper()
	m, err := store.Scan(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortedKeys(id userid.ID, suffixes ...string) []string {
	var out []string
	for _, s := range suffixes {
		out = append(out, id.Key(s))
	}
	sort.Strings(out)
	return out
}

// TestSettingsIsolation is the foundation's core promise, on every KV
// backend: a user's PUT writes exactly that user's keys, GET shows only that
// user's values, and secrets are ciphertext at rest.
func TestSettingsIsolation(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			e := newEnv(t, b, auth.Config{Mode: "apikey"})
			a, keyA := e.newUser(t, "alice@example.com", false)
			bob, keyB := e.newUser(t, "bob@example.com", false)

			if keys := allKeys(t, e.kv); len(keys) != 0 {
				t.Fatalf("KV not empty before any PUT: %v", keys)
			}
			code, got := e.do(t, request{method: "PUT", path: "/api/v1/settings", bearer: keyA, body: `{
				"imap_server": "imap.alice.example", "imap_port": 993, "imap_security": "tls",
				"imap_username": "alice", "imap_password": "alice-imap-secret"}`})
			if code != 200 {
				t.Fatalf("A PUT: %d %v", code, got)
			}
			want := sortedKeys(a.ID, "imap_server", "imap_port", "imap_security", "imap_username", "imap_password")
			if keys := allKeys(t, e.kv); strings.Join(keys, ",") != strings.Join(want, ",") {
				t.Fatalf("after A's PUT the KV holds\n%v\nwant exactly\n%v", keys, want)
			}

			code, _ = e.do(t, request{method: "PUT", path: "/api/v1/settings", bearer: keyB, body: `{
				"imap_server": "imap.bob.example", "imap_username": "bob", "imap_password": "bob-imap-secret",
				"timezone": "Europe/Amsterdam"}`})
			if code != 200 {
				t.Fatalf("B PUT: %d", code)
			}
			want = append(want, sortedKeys(bob.ID, "imap_server", "imap_username", "imap_password", "timezone")...)
			sort.Strings(want)
			keys := allKeys(t, e.kv)
			if strings.Join(keys, ",") != strings.Join(want, ",") {
				t.Fatalf("after B's PUT the KV holds\n%v\nwant exactly\n%v", keys, want)
			}
			for _, k := range keys {
				if !strings.HasPrefix(k, "user:") && !strings.HasPrefix(k, "lease:") {
					t.Errorf("key outside user: and lease: prefixes: %q", k)
				}
			}

			raw, err := e.kv.Get(context.Background(), a.ID.Key("imap_password"))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(raw, "alice-imap-secret") || !strings.HasPrefix(raw, "v1:") {
				t.Errorf("stored imap_password is not ciphertext: %q", raw)
			}
			if plain, err := e.box.Open(raw, a.ID.Key("imap_password")); err != nil || plain != "alice-imap-secret" {
				t.Errorf("stored password does not open to the plaintext: %q %v", plain, err)
			}

			_, gotA := e.do(t, request{method: "GET", path: "/api/v1/settings", bearer: keyA})
			_, gotB := e.do(t, request{method: "GET", path: "/api/v1/settings", bearer: keyB})
			if gotA["imap_server"] != "imap.alice.example" || gotA["imap_username"] != "alice" || gotA["imap_password"] != "*****" || gotA["imap_port"] != 993.0 {
				t.Errorf("A's GET: %v", gotA)
			}
			if gotA["timezone"] != "" {
				t.Errorf("A sees a timezone it never set: %v", gotA["timezone"])
			}
			if gotB["imap_server"] != "imap.bob.example" || gotB["imap_username"] != "bob" || gotB["timezone"] != "Europe/Amsterdam" || gotB["imap_port"] != nil {
				t.Errorf("B's GET: %v", gotB)
			}
			for _, body := range []map[string]any{gotA, gotB} {
				js, _ := json.Marshal(body)
				if bytes.Contains(js, []byte("imap-secret")) {
					t.Errorf("GET leaks a password: %s", js)
				}
			}
		})
	}
}

func TestSettingsPartialUpdateAndValidation(t *testing.T) {
	e := newEnv(t, backends()[0], auth.Config{Mode: "apikey"})
	u, key := e.newUser(t, "carol@example.com", false)
	put := func(body string) (int, map[string]any) {
		return e.do(t, request{method: "PUT", path: "/api/v1/settings", bearer: key, body: body})
	}
	if code, _ := put(`{"imap_server":"imap.example.com","imap_password":"pw1","draft_creation_enabled":true}`); code != 200 {
		t.Fatalf("PUT: %d", code)
	}
	before := allKeys(t, e.kv)

	bad := []struct{ body, field string }{
		{`{"imap_port": 70000}`, "imap_port"},
		{`{"imap_port": 0}`, "imap_port"},
		{`{"imap_port": "abc"}`, "imap_port"},
		{`{"imap_security": "ssl"}`, "imap_security"},
		{`{"timezone": "Mars/Olympus"}`, "timezone"},
		{`{"llm_base_url": "ftp://x"}`, "llm_base_url"},
		{`{"imap_server": "https://imap.example.com/"}`, "imap_server"},
		{`{"draft_creation_enabled": "yes"}`, "draft_creation_enabled"},
		{`{"bogus": 1}`, "bogus"},
		{`{"imap_username": "ok", "imap_port": -1}`, "imap_port"},
		{`[1,2]`, "body"},
		{`not json`, "body"},
	}
	for _, tc := range bad {
		code, body := put(tc.body)
		errObj, _ := body["error"].(map[string]any)
		if code != 400 || errObj["field"] != tc.field || !strings.Contains(errObj["message"].(string), tc.field) {
			t.Errorf("PUT %s: %d %v, want 400 naming %s", tc.body, code, body, tc.field)
		}
	}
	if after := allKeys(t, e.kv); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("refused PUTs changed the KV: %v -> %v", before, after)
	}

	// The mask is ignored, other fields still apply: a partial update.
	if code, _ := put(`{"imap_password":"*****","imap_username":"carol"}`); code != 200 {
		t.Fatal("PUT with mask refused")
	}
	got, err := settings.NewStore(e.kv, e.box).Get(context.Background(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.IMAPPassword != "pw1" || got.IMAPUsername != "carol" || got.IMAPServer != "imap.example.com" || !got.DraftCreationEnabled {
		t.Errorf("after partial PUT: %+v", got)
	}
	// "" and null clear a field.
	if code, _ := put(`{"imap_password":"","imap_username":null}`); code != 200 {
		t.Fatal("clearing PUT refused")
	}
	if _, err := e.kv.Get(context.Background(), u.ID.Key("imap_password")); err != kv.ErrNotFound {
		t.Errorf("cleared password still stored: %v", err)
	}
	_, view := e.do(t, request{method: "GET", path: "/api/v1/settings", bearer: key})
	if view["imap_password"] != "" || view["imap_username"] != "" {
		t.Errorf("after clearing: %v", view)
	}
}

// TestOtherUsersObjectsAre404: user B asking for anything of user A's by id
// gets 404, exactly as for an id that does not exist.
func TestOtherUsersObjectsAre404(t *testing.T) {
	e := newEnv(t, backends()[0], auth.Config{Mode: "apikey"})
	a, _ := e.newUser(t, "alice@example.com", false)
	_, keyB := e.newUser(t, "bob@example.com", false)
	admin, keyAdmin := e.newUser(t, "root@example.com", true)

	for _, pattern := range e.api.Routes() {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok || !strings.Contains(path, "{id}") {
			continue
		}
		for _, id := range []string{a.ID.String(), admin.ID.String(), userid.New().String(), "not-a-uuid"} {
			p := strings.ReplaceAll(path, "{id}", id)
			if code, body := e.do(t, request{method: method, path: p, bearer: keyB, body: "{}"}); code != 404 {
				t.Errorf("B: %s %s = %d %v, want 404", method, p, code, body)
			}
		}
	}
	for _, p := range []string{"/api/v1/users", "/api/v1/nothing/" + a.ID.String()} {
		if code, _ := e.do(t, request{method: "GET", path: p, bearer: keyB}); code != 404 {
			t.Errorf("B: GET %s = %d, want 404", p, code)
		}
	}
	// The admin does see A; B's view of A is the same as of nobody.
	if code, body := e.do(t, request{method: "GET", path: "/api/v1/users/" + a.ID.String(), bearer: keyAdmin}); code != 200 || body["email"] != "alice@example.com" {
		t.Errorf("admin GET user: %d %v", code, body)
	}
	// A's settings stay A's: B's GET shows nothing of them.
	if code, _ := e.do(t, request{method: "PUT", path: "/api/v1/settings", bearer: keyAdmin, body: `{"imap_server":"admin.example"}`}); code != 200 {
		t.Fatal("admin PUT failed")
	}
	if _, body := e.do(t, request{method: "GET", path: "/api/v1/settings", bearer: keyB}); body["imap_server"] != "" {
		t.Errorf("B sees another user's settings: %v", body)
	}
}

func TestAdminAPI(t *testing.T) {
	e := newEnv(t, backends()[0], auth.Config{Mode: "apikey"})
	_, keyAdmin := e.newUser(t, "root@example.com", true)
	code, created := e.do(t, request{method: "POST", path: "/api/v1/users", bearer: keyAdmin, body: `{"email":"Dave@Example.com","display_name":"Dave"}`})
	if code != 201 || created["email"] != "dave@example.com" {
		t.Fatalf("create user: %d %v", code, created)
	}
	id := created["id"].(string)
	if code, _ := e.do(t, request{method: "POST", path: "/api/v1/users", bearer: keyAdmin, body: `{"email":"dave@example.com"}`}); code != 409 {
		t.Errorf("duplicate email: %d, want 409", code)
	}
	if code, _ := e.do(t, request{method: "POST", path: "/api/v1/users", bearer: keyAdmin, body: `{"email":"nope"}`}); code != 400 {
		t.Errorf("bad email: %d, want 400", code)
	}
	if code, _ := e.do(t, request{method: "POST", path: "/api/v1/users", bearer: keyAdmin, body: `{"email":"x@example.com","role":"god"}`}); code != 400 {
		t.Errorf("unknown field: %d, want 400", code)
	}
	for _, body := range []string{`{"email":"y@example.com"} {}`, `{"email":"y@example.com"}}`} {
		if code, _ := e.do(t, request{method: "POST", path: "/api/v1/users", bearer: keyAdmin, body: body}); code != 400 {
			t.Errorf("trailing data %s: %d, want 400", body, code)
		}
	}
	code, keyBody := e.do(t, request{method: "POST", path: "/api/v1/users/" + id + "/api-keys", bearer: keyAdmin, body: `{"name":"laptop"}`})
	if code != 201 {
		t.Fatalf("create key: %d %v", code, keyBody)
	}
	daveKey := keyBody["api_key"].(string)
	if code, me := e.do(t, request{method: "GET", path: "/api/v1/me", bearer: daveKey}); code != 200 || me["id"] != id || me["admin"] != false {
		t.Errorf("dave's me: %d %v", code, me)
	}
	if code, list := e.do(t, request{method: "GET", path: "/api/v1/users", bearer: keyAdmin}); code != 200 || len(list["items"].([]any)) != 2 {
		t.Errorf("list: %d %v", code, list)
	}
	if code, _ := e.do(t, request{method: "DELETE", path: "/api/v1/users/" + id, bearer: keyAdmin}); code != 200 {
		t.Errorf("disable: %d", code)
	}
	if code, _ := e.do(t, request{method: "GET", path: "/api/v1/me", bearer: daveKey}); code != 403 {
		t.Errorf("disabled user's request: %d, want 403", code)
	}
}

// TestPasswordModeGuardsEveryRoute walks the router's own route list: a new
// route is covered the day it is added.
func TestPasswordModeGuardsEveryRoute(t *testing.T) {
	hash, err := auth.HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, backends()[0], auth.Config{Mode: "password", PasswordHash: hash})
	checked := 0
	for _, pattern := range e.api.Routes() {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok {
			method, path = "GET", pattern
		}
		if !strings.HasPrefix(path, "/api/") || path == "/api/v1/auth/login" {
			continue
		}
		path = strings.ReplaceAll(path, "{id}", userid.New().String())
		for _, r := range []request{
			{method: method, path: path, body: "{}"},
			{method: method, path: path, body: "{}", basic: "wrong"},
			{method: method, path: path, body: "{}", bearer: "forged.token"},
		} {
			if code, _ := e.do(t, r); code != 401 {
				t.Errorf("%s %s without the password: %d, want 401", method, path, code)
			}
		}
		checked++
	}
	if checked < 8 {
		t.Fatalf("only %d API routes checked", checked)
	}
	if code, me := e.do(t, request{method: "GET", path: "/api/v1/me", basic: "correct horse"}); code != 200 || me["id"] != userid.Default().String() {
		t.Errorf("with the password: %d %v", code, me)
	}
	code, login := e.do(t, request{method: "POST", path: "/api/v1/auth/login", body: `{"password":"correct horse"}`})
	if code != 200 {
		t.Fatalf("login: %d %v", code, login)
	}
	if code, _ := e.do(t, request{method: "GET", path: "/api/v1/settings", bearer: login["token"].(string)}); code != 200 {
		t.Errorf("with a session token: %d", code)
	}
	if code, _ := e.do(t, request{method: "GET", path: "/healthz"}); code != 200 {
		t.Errorf("healthz must stay open: %d", code)
	}
}

func TestOpsEndpoints(t *testing.T) {
	e := newEnv(t, backends()[0], auth.Config{Mode: "apikey"})
	a, key := e.newUser(t, "alice@example.com", false)
	if code, body := e.do(t, request{method: "GET", path: "/readyz"}); code != 200 || body["ready"] != true {
		t.Errorf("readyz: %d %v", code, body)
	}
	e.do(t, request{method: "GET", path: "/api/v1/users/" + a.ID.String(), bearer: key})
	e.do(t, request{method: "GET", path: "/api/v1/settings", bearer: key})
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(raw)
	for _, want := range []string{
		`inboxd_build_info{`, `go_goroutines`, `process_resident_memory_bytes`,
		`inboxd_http_requests_total{code="200",method="GET",route="GET /api/v1/settings"} 1`,
		`inboxd_http_requests_total{code="404",method="GET",route="GET /api/v1/users/{id}"} 1`,
		`inboxd_http_request_duration_seconds_bucket{method="GET",route="GET /api/v1/settings"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, a.ID.String()) {
		t.Error("/metrics carries a user id")
	}
}

func TestReadyzFailsWhenAStoreIsDown(t *testing.T) {
	e := newEnv(t, backends()[1], auth.Config{Mode: "apikey"})
	if code, _ := e.do(t, request{method: "GET", path: "/readyz"}); code != 200 {
		t.Fatalf("readyz with Redis up: %d", code)
	}
	if err := e.kv.Close(); err != nil {
		t.Fatal(err)
	}
	code, body := e.do(t, request{method: "GET", path: "/readyz"})
	checks, _ := body["checks"].(map[string]any)
	if code != 503 || checks["kv"] != "unavailable" || checks["sql"] != "ok" {
		t.Errorf("readyz with the KV closed: %d %v", code, body)
	}
}

func TestInboxStatus(t *testing.T) {
	e := newEnv(t, backends()[0], auth.Config{Mode: "apikey"})
	a, keyA := e.newUser(t, "alice@example.com", false)
	_, keyB := e.newUser(t, "bob@example.com", false)
	if err := e.kv.Set(context.Background(), a.ID.Key("poll_status"), `{"state":"auth_failed","last_error":"auth: login rejected","failures":2,"next_attempt":"2030-01-02T03:04:05Z"}`, 0); err != nil {
		t.Fatal(err)
	}
	_, got := e.do(t, request{method: "GET", path: "/api/v1/inbox/status", bearer: keyA})
	poll, _ := got["poll"].(map[string]any)
	if poll["state"] != "auth_failed" || poll["last_error"] != "auth: login rejected" || poll["next_attempt"] != "2030-01-02T03:04:05Z" || poll["last_success"] != nil {
		t.Errorf("A's status: %v", got)
	}
	_, got = e.do(t, request{method: "GET", path: "/api/v1/inbox/status", bearer: keyB})
	if poll, _ := got["poll"].(map[string]any); poll["state"] != "not_polled" {
		t.Errorf("B's status: %v", got)
	}
}
