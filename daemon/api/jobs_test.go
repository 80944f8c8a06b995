package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/fakellm"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// jobsEnv is an API with the job routes over real stores, a jobs.Manager,
// an in-memory IMAP server and a fake LLM.
type jobsEnv struct {
	srv      *httptest.Server
	kv       kv.Store
	users    *users.Store
	settings *settings.Store
	vectors  *vectors.Embedded
	jobs     *jobs.Manager
	imap     *testsvc.MemIMAPServer
	llm      *fakellm.Server
}

func newJobsEnv(t *testing.T) *jobsEnv {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	store := kv.NewSQL(db)
	us := users.NewStore(db)
	st := settings.NewStore(store, box)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := auth.New(auth.Config{Mode: "apikey"}, us, box, logger)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	vec := vectors.NewEmbedded(db, vectors.EmbeddedOptions{})
	m := metrics.New("test")
	mgr, err := jobs.New(jobs.Config{
		KV: store, Settings: st, Vectors: vec, Catalog: cat, Users: us,
		LLM: llm.NewOpenAI(llm.Options{MaxRetries: -1}), Logger: logger, Registerer: m.Registry, Owner: "api-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mgr.Close)
	s := New(Deps{Auth: a, Users: us, Settings: st, KV: store, Metrics: m, Logger: logger, Jobs: mgr, Catalog: cat})
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	e := &jobsEnv{srv: srv, kv: store, users: us, settings: st, vectors: vec, jobs: mgr,
		imap: testsvc.MemIMAP(t, map[string]string{"alice": "alice-pw"}), llm: fakellm.New(t)}
	e.llm.SetHandler(func(fakellm.Request) fakellm.Reply { return fakellm.Text("A description.") })
	return e
}

func (e *jobsEnv) user(t *testing.T, email string, fields map[string]any) (userid.ID, string) {
	t.Helper()
	ctx := context.Background()
	u, err := e.users.Create(ctx, users.NewUser{Email: email})
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.users.CreateAPIKey(ctx, u.ID, "test")
	if err != nil {
		t.Fatal(err)
	}
	if len(fields) > 0 {
		raw, _ := json.Marshal(fields)
		p, err := settings.DecodePatch(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.settings.Update(ctx, u.ID, p); err != nil {
			t.Fatal(err)
		}
	}
	return u.ID, key
}

func (e *jobsEnv) do(t *testing.T, method, path, bearer string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%s %s: %d %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, body
}

func TestJobRoutes(t *testing.T) {
	e := newJobsEnv(t)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		e.imap.Deliver(t, "alice", []byte(fmt.Sprintf("From: Bob <bob@x.example>\r\nTo: alice@a.example\r\nSubject: Hello %d\r\n"+
			"Date: %s\r\nMessage-ID: <m%d@x.example>\r\n\r\nAbout the garden, part %d.\r\n", i, time.Now().Add(-time.Duration(i)*time.Hour).Format(time.RFC1123Z), i, i)))
	}
	a, keyA := e.user(t, "alice@a.example", map[string]any{
		"imap_server": e.imap.Host, "imap_port": e.imap.Port, "imap_security": "none", "imap_username": "alice", "imap_password": "alice-pw",
		"llm_base_url": e.llm.URL(), "llm_model": "m",
	})
	b, keyB := e.user(t, "bob@b.example", map[string]any{"embedding_api_key": "pa-voyage-key"})

	// Unauthenticated: 401 on every job route.
	for _, p := range []string{"POST /api/v1/inbox/initialize", "POST /api/v1/inbox/reinitialize", "POST /api/v1/inbox/tone-of-voice",
		"POST /api/v1/inbox/label-descriptions", "GET /api/v1/settings/tone-of-voice", "GET /api/v1/settings/tone-of-voice/status",
		"GET /api/v1/embedding-models"} {
		method, path, _ := strings.Cut(p, " ")
		if code, _ := e.do(t, method, path, ""); code != 401 {
			t.Errorf("%s without a key: %d", p, code)
		}
	}

	// B has no IMAP account and no LLM: refused with the reason.
	for _, p := range []string{"/api/v1/inbox/initialize", "/api/v1/inbox/reinitialize", "/api/v1/inbox/tone-of-voice", "/api/v1/inbox/label-descriptions"} {
		code, body := e.do(t, "POST", p, keyB)
		if errBody, _ := body["error"].(map[string]any); code != 409 || errBody["code"] != "not_configured" {
			t.Errorf("B POST %s: %d %v", p, code, body)
		}
	}

	code, body := e.do(t, "POST", "/api/v1/inbox/initialize", keyA)
	if code != 202 || body["status"] != "running" {
		t.Fatalf("A initialize: %d %v", code, body)
	}
	if err := e.jobs.Wait(ctx, a, jobs.Initialize); err != nil {
		t.Fatal(err)
	}
	if err := e.jobs.Wait(ctx, a, jobs.ToneOfVoice); err != nil { // the follow-up
		t.Fatal(err)
	}
	code, body = e.do(t, "POST", "/api/v1/inbox/initialize", keyA)
	progress, _ := body["progress"].(map[string]any)
	if code != 200 || body["status"] != "completed" || progress["done"] != float64(5) || progress["total"] != float64(5) || body["last_error"] != "" {
		t.Errorf("A initialize again (no-op): %d %v", code, body)
	}
	if n, _ := e.vectors.Count(ctx, a); n != 5 {
		t.Errorf("A has %d points", n)
	}
	if st, _ := e.jobs.InboxStatus(ctx, b); st.Status != jobs.StatusNotStarted {
		t.Errorf("B's status %+v", st)
	}

	code, body = e.do(t, "POST", "/api/v1/inbox/reinitialize", keyA)
	if code != 202 || body["status"] != "running" {
		t.Fatalf("A reinitialize: %d %v", code, body)
	}
	if err := e.jobs.Wait(ctx, a, jobs.Initialize); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.vectors.Count(ctx, a); n != 5 {
		t.Errorf("A has %d points after reinitialising", n)
	}

	// Tone: A's profile is A's alone.
	if err := e.jobs.Wait(ctx, a, jobs.ToneOfVoice); err != nil {
		t.Fatal(err)
	}
	if err := e.kv.Set(ctx, a.Key("tone_of_voice_profile"), `{"en":"Brief and warm."}`, 0); err != nil {
		t.Fatal(err)
	}
	if code, body := e.do(t, "GET", "/api/v1/settings/tone-of-voice", keyA); code != 200 || len(body) != 1 || body["en"] != "Brief and warm." {
		t.Errorf("A's profile: %d %v", code, body)
	}
	if code, body := e.do(t, "GET", "/api/v1/settings/tone-of-voice", keyB); code != 200 || len(body) != 0 {
		t.Errorf("B's profile: %d %v", code, body)
	}
	if code, body := e.do(t, "GET", "/api/v1/settings/tone-of-voice/status", keyA); code != 200 || body["status"] != "completed" {
		t.Errorf("A's tone status: %d %v", code, body)
	}
	if code, body := e.do(t, "GET", "/api/v1/settings/tone-of-voice/status", keyB); code != 200 || body["status"] != "not_started" {
		t.Errorf("B's tone status: %d %v", code, body)
	}
	code, body = e.do(t, "POST", "/api/v1/inbox/tone-of-voice", keyA)
	if (code != 202 && code != 200) || body["status"] != "running" {
		t.Errorf("A tone: %d %v", code, body)
	}
	if err := e.jobs.Wait(ctx, a, jobs.ToneOfVoice); err != nil {
		t.Fatal(err)
	}
	code, body = e.do(t, "POST", "/api/v1/inbox/label-descriptions", keyA)
	if code != 202 || body["status"] != "running" {
		t.Errorf("A labels: %d %v", code, body)
	}
	if err := e.jobs.Wait(ctx, a, jobs.LabelDescriptions); err != nil {
		t.Fatal(err)
	}

	// Embedding models: per user, with the user's key and choice.
	models := func(key string) map[string]map[string]any {
		code, body := e.do(t, "GET", "/api/v1/embedding-models", key)
		if code != 200 {
			t.Fatalf("embedding-models: %d %v", code, body)
		}
		out := map[string]map[string]any{}
		for _, x := range body["items"].([]any) {
			it := x.(map[string]any)
			out[it["key"].(string)] = it
		}
		return out
	}
	ma, mb := models(keyA), models(keyB)
	if len(ma) != 4 || ma["offline-hash-384"]["selected"] != true || ma["offline-hash-384"]["dimensions"] != float64(384) ||
		ma["text-embedding-3-large"]["default"] != true || ma["text-embedding-3-large"]["api_key_provided"] != false {
		t.Errorf("A's models: %v", ma)
	}
	if mb["voyage-3.5"]["api_key_provided"] != true || mb["voyage-3.5"]["selected"] != true || mb["text-embedding-3-large"]["api_key_provided"] != false {
		t.Errorf("B's models (a Voyage key): %v", mb)
	}
}

// TestSettingsChooseEmbeddingModel: the first GET of a user's settings saves
// the best available embedding model; with no provider key it is the
// offline model.
func TestSettingsChooseEmbeddingModel(t *testing.T) {
	e := newJobsEnv(t)
	id, key := e.user(t, "carol@example.com", nil)
	code, body := e.do(t, "GET", "/api/v1/settings", key)
	cat, _ := embed.LoadCatalog("")
	if code != 200 || body["embedding_model"] != cat.Offline().Key {
		t.Fatalf("GET: %d %v, want embedding_model %q", code, body, cat.Offline().Key)
	}
	if v, err := e.kv.Get(context.Background(), id.Key("embedding_model")); err != nil || v != cat.Offline().Key {
		t.Errorf("stored embedding_model: %q %v", v, err)
	}
}
