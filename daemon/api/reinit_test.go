package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/fakeqdrant"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// twoOfflineModels is a catalog override with two offline models of
// different vector sizes: a user can change model without a provider key.
const twoOfflineModels = `{"models": [
  {"key": "offline-hash-384", "provider": "offline", "model_name": "offline-hash-384", "dimensions": 384,
   "max_input_chars": 8000, "max_batch_size": 256, "default": true},
  {"key": "offline-hash-96", "provider": "offline", "model_name": "offline-hash-96", "dimensions": 96,
   "max_input_chars": 8000, "max_batch_size": 256, "default": false}
]}`

// statusKV is the jobs' KV store: it records the inbox statuses written,
// by key, and can hold the next progress write of one user (the
// initialisation has then marked itself running, listed the threads and
// stored none) until the test releases it.
type statusKV struct {
	kv.Store
	mu       sync.Mutex
	statuses map[string][]string
	hold     string        // the progress key whose next write waits
	held     chan struct{} // closed when that write arrived
	release  chan struct{} // closed by the test to let it through
}

func (s *statusKV) record(key, value string) {
	if strings.HasSuffix(key, ":inbox_status") {
		s.mu.Lock()
		s.statuses[key] = append(s.statuses[key], value)
		s.mu.Unlock()
	}
}

// written returns the statuses written under user's key, and forgets them.
func (s *statusKV) written(user userid.ID) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.statuses[user.Key("inbox_status")]
	delete(s.statuses, user.Key("inbox_status"))
	return out
}

// holdNextProgress makes user's next progress write wait for release.
func (s *statusKV) holdNextProgress(user userid.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold, s.held, s.release = user.Key("inbox_progress"), make(chan struct{}), make(chan struct{})
}

func (s *statusKV) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	s.record(key, value)
	s.mu.Lock()
	held, release := s.held, s.release
	hold := key == s.hold
	if hold {
		s.hold = ""
	}
	s.mu.Unlock()
	if hold {
		close(held)
		select {
		case <-release:
		case <-time.After(30 * time.Second): // the test failed to release it
		}
	}
	return s.Store.Set(ctx, key, value, ttl)
}

func (s *statusKV) SetMany(ctx context.Context, pairs map[string]string) error {
	for k, v := range pairs {
		s.record(k, v)
	}
	return s.Store.SetMany(ctx, pairs)
}

// reinitBackends are the vector stores the model change is tested on:
// tenancy "" is the env's embedded store, else Qdrant (the fake).
var reinitBackends = []struct {
	name    string
	tenancy vectors.Tenancy
}{
	{"embedded", ""},
	{"qdrant-collection", vectors.TenancyCollection},
	{"qdrant-payload", vectors.TenancyPayload},
}

// TestSettingsModelChangeReinitializes: PUT /api/v1/settings with another
// embedding_model (a different vector size) for a user whose inbox is
// initialised recreates that user's collection for the new model and size
// and runs the initialisation again: the status goes back to running (the
// collection then empty, of the new size), then to completed with every
// thread stored again as a vector of the new size. Another user's
// collection, status and vectors are untouched.
func TestSettingsModelChangeReinitializes(t *testing.T) {
	for _, b := range reinitBackends {
		t.Run(b.name, func(t *testing.T) { testModelChange(t, b.tenancy) })
	}
}

func testModelChange(t *testing.T, tenancy vectors.Tenancy) {
	ctx := context.Background()
	// The env's API and jobs use the built-in catalog, with one offline
	// model: this test serves the same stores with a catalog of two.
	e := newJobsEnv(t)
	path := filepath.Join(t.TempDir(), "embedding_models.json")
	if err := os.WriteFile(path, []byte(twoOfflineModels), 0o600); err != nil {
		t.Fatal(err)
	}
	cat, err := embed.LoadCatalog(path)
	if err != nil {
		t.Fatal(err)
	}
	var store vectors.Store = e.vectors
	if tenancy != "" {
		b, err := vectors.Open(fakeqdrant.New(t).URL()+"?tenancy="+string(tenancy), nil, vectors.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		store = b
	}
	skv := &statusKV{Store: e.kv, statuses: map[string][]string{}}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := metrics.New("test")
	e.jobs, err = jobs.New(jobs.Config{KV: skv, Settings: e.settings, Vectors: store, Catalog: cat, Users: e.users,
		Logger: logger, Registerer: m.Registry, Owner: "reinit-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.jobs.Close)
	a, err := auth.New(auth.Config{Mode: "apikey"}, e.users, testsvc.SecretBox(t), logger)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(New(Deps{Auth: a, Users: e.users, Settings: e.settings, KV: e.kv, Metrics: m, Logger: logger, Jobs: e.jobs, Catalog: cat}))
	t.Cleanup(e.srv.Close)

	// Ann and Ben, with mailboxes of their own, initialise with the
	// 384-dimensional model.
	mem := testsvc.MemIMAP(t, map[string]string{"ann": "ann-pw", "ben": "ben-pw"})
	threads := map[string]int{"ann": 12, "ben": 7}
	ids, keys := map[string]userid.ID{}, map[string]string{}
	for _, name := range []string{"ann", "ben"} {
		for i := range threads[name] {
			mem.Deliver(t, name, []byte(fmt.Sprintf("From: Zoe <zoe@x.example>\r\nTo: %s@a.example\r\nSubject: %s question %d\r\n"+
				"Date: %s\r\nMessage-ID: <%s-%d@x.example>\r\n\r\nAbout the %s garden and its greenhouse, part %d.\r\n",
				name, name, i, time.Now().Add(-time.Duration(i+1)*time.Hour).Format(time.RFC1123Z), name, i, name, i)))
		}
		ids[name], keys[name] = e.user(t, name+"@a.example", map[string]any{"imap_server": mem.Host, "imap_port": mem.Port,
			"imap_security": "none", "imap_username": name, "imap_password": name + "-pw", "embedding_model": "offline-hash-384"})
		if code, body := e.do(t, "POST", "/api/v1/inbox/initialize", keys[name]); code != 202 {
			t.Fatalf("%s initialize: %d %v", name, code, body)
		}
		if err := e.jobs.Wait(ctx, ids[name], jobs.Initialize); err != nil {
			t.Fatal(err)
		}
		checkCollection(t, store, ids[name], "offline-hash-384", 384, threads[name])
	}
	ann, ben := ids["ann"], ids["ben"]
	benBefore := snapshot(t, store, ben, cat)
	skv.written(ann)
	skv.written(ben)

	// Ann changes model: the collection is recreated and the initialisation
	// runs again. It is held at its first progress write, once it has
	// marked itself running and listed the threads.
	skv.holdNextProgress(ann)
	code, body := putJSON(t, e, "/api/v1/settings", keys["ann"], `{"embedding_model": "offline-hash-96"}`)
	if code != 200 || body["embedding_model"] != "offline-hash-96" {
		t.Fatalf("PUT settings: %d %v", code, body)
	}
	select {
	case <-skv.held:
	case <-time.After(20 * time.Second):
		t.Fatal("the initialisation did not run again after the model change")
	}
	code, body = e.do(t, "GET", "/api/v1/inbox/status", keys["ann"])
	if initSt, _ := body["initialization"].(map[string]any); code != 200 || initSt["status"] != jobs.StatusRunning {
		t.Errorf("status while it runs again: %d %v", code, body)
	}
	checkCollection(t, store, ann, "offline-hash-96", 96, 0)
	close(skv.release)
	if err := e.jobs.Wait(ctx, ann, jobs.Initialize); err != nil {
		t.Fatal(err)
	}
	code, body = e.do(t, "GET", "/api/v1/inbox/status", keys["ann"])
	initSt, _ := body["initialization"].(map[string]any)
	progress, _ := initSt["progress"].(map[string]any)
	want := float64(threads["ann"])
	if code != 200 || initSt["status"] != jobs.StatusCompleted || progress["done"] != want || progress["total"] != want || initSt["last_error"] != "" {
		t.Errorf("status after it ran again: %d %v", code, body)
	}
	if got := skv.written(ann); !slices.Equal(got, []string{jobs.StatusRunning, jobs.StatusCompleted}) {
		t.Errorf("ann's statuses since the PUT: %v, want running then completed", got)
	}
	checkCollection(t, store, ann, "offline-hash-96", 96, threads["ann"])

	// Ben: nothing written, nothing changed.
	if got := skv.written(ben); len(got) != 0 {
		t.Errorf("ben's statuses since ann's PUT: %v", got)
	}
	if after := snapshot(t, store, ben, cat); after != benBefore {
		t.Errorf("ben's collection changed:\nbefore %s\nafter  %s", benBefore, after)
	}
	if st, err := e.jobs.InboxStatus(ctx, ben); err != nil || st.Status != jobs.StatusCompleted || st.Progress.Done != threads["ben"] {
		t.Errorf("ben's status: %+v, %v", st, err)
	}
}

// checkCollection checks that user's collection is for model and dims and
// holds n points, all dims-sized: a search with a dims-sized vector finds
// all of them, one of another size is refused.
func checkCollection(t *testing.T, store vectors.Store, user userid.ID, model string, dims, n int) {
	t.Helper()
	ctx := context.Background()
	gotModel, gotDims, exists, err := store.Info(ctx, user)
	if err != nil || !exists || gotModel != model || gotDims != dims {
		t.Fatalf("collection: %q %d exists %v (%v), want %q %d", gotModel, gotDims, exists, err, model, dims)
	}
	if c, err := store.Count(ctx, user); err != nil || c != n {
		t.Errorf("collection of %q: %d points (%v), want %d", model, c, err, n)
	}
	probe := func(size int) ([]vectors.Hit, error) {
		v := make([]float32, size)
		v[0] = 1
		return store.SearchVector(ctx, user, v, vectors.MaxLimit, nil, vectors.Filter{})
	}
	if hits, err := probe(dims); err != nil || len(hits) != n {
		t.Errorf("search with a %d-dimensional vector: %d hits (%v), want %d", dims, len(hits), err, n)
	}
	other := map[int]int{384: 96, 96: 384}[dims]
	if _, err := probe(other); n > 0 && !errors.Is(err, vectors.ErrInvalid) {
		t.Errorf("search with a %d-dimensional vector in a %d-dimensional collection: %v, want refused", other, dims, err)
	}
}

// snapshot describes user's collection: model, size, count, and a search
// (ids and scores) with the user's model.
func snapshot(t *testing.T, store vectors.Store, user userid.ID, cat *embed.Catalog) string {
	t.Helper()
	ctx := context.Background()
	model, dims, exists, err := store.Info(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	n, err := store.Count(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := cat.Lookup(model)
	emb, err := embed.New(m, "", embed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hits, err := vectors.Search(ctx, store, emb, user, "garden greenhouse question", vectors.MaxLimit, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d exists=%v count=%d hits:", model, dims, exists, n)
	for _, h := range hits {
		fmt.Fprintf(&b, " %s=%.5f", h.ID, h.Score)
	}
	return b.String()
}

// putJSON sends body to path as the bearer of key (jobsEnv.do sends none).
func putJSON(t *testing.T, e *jobsEnv, path, key, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("PUT %s: %d, %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, out
}
