package jobs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/qdrant/go-client/qdrant"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/fakellm"
	"github.com/inboxd/inboxd/internal/fakeqdrant"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// probe is a query vector that finds every point of a collection of the
// offline model (in some order).
func (s *stores) probe() []float32 {
	p := make([]float32, s.catalog.Offline().Dimensions)
	p[0] = 1
	return p
}

// point reads one stored thread's payload.
func (s *stores) point(t testing.TB, user userid.ID, threadID string) map[string]any {
	t.Helper()
	mark := s.mark()
	hits, err := s.vectors.SearchVector(context.Background(), user, s.probe(), 1, nil, vectors.Filter{Must: map[string]any{"thread_id": threadID}})
	if err != nil {
		t.Fatal(err)
	}
	s.checkScoped(t, user, mark)
	if len(hits) != 1 {
		t.Fatalf("thread %s: %d points", threadID, len(hits))
	}
	return hits[0].Payload
}

// stored returns the thread ids of every point in user's collection.
func (s *stores) stored(t testing.TB, user userid.ID) map[string]bool {
	t.Helper()
	mark := s.mark()
	hits, err := s.vectors.SearchVector(context.Background(), user, s.probe(), vectors.MaxLimit, nil, vectors.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	s.checkScoped(t, user, mark)
	out := make(map[string]bool, len(hits))
	for _, h := range hits {
		out[h.ID] = true
	}
	return out
}

func search(t testing.TB, s *stores, user userid.ID, query string, limit int) []vectors.Hit {
	t.Helper()
	e, err := embed.New(s.catalog.Offline(), "", embed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mark := s.mark()
	hits, err := vectors.Search(context.Background(), s.vectors, e, user, query, limit, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.checkScoped(t, user, mark)
	return hits
}

// mark is how many requests the fake Qdrant has recorded so far.
func (s *stores) mark() int {
	if s.qdrant == nil {
		return 0
	}
	return len(s.qdrant.Calls(""))
}

// checkScoped checks, in payload tenancy, that the requests since mark
// that read points (a search made as user) carried user's tenant filter,
// and that a query was among them.
func (s *stores) checkScoped(t testing.TB, user userid.ID, mark int) {
	t.Helper()
	if s.tenancy != vectors.TenancyPayload {
		return
	}
	queried := false
	for _, c := range s.qdrant.Calls("")[mark:] {
		f, scoped := c.Filter()
		if !scoped {
			continue
		}
		queried = queried || c.Name() == "Query"
		if got := fakeqdrant.MustKeyword(f, "tenant_id"); got != user.String() {
			t.Errorf("%s as %s carried the tenant filter %q: %v", c.Method, user, got, f)
		}
	}
	if !queried {
		t.Errorf("no query on the wire for a search as %s (the check proves nothing)", user)
	}
}

// checkTenantWire checks the requests of payload-tenancy initialisations:
// every read, count or delete carried the tenant filter of one of the
// users, and every upserted point the tenant of the user whose thread it is
// (owner) or, in the tenant registry, whose point it is.
func checkTenantWire(t *testing.T, calls []fakeqdrant.Call, owner map[string]userid.ID, users ...userid.ID) {
	t.Helper()
	tenants := map[string]bool{}
	for _, u := range users {
		tenants[u.String()] = true
	}
	points := 0
	for _, c := range calls {
		if f, scoped := c.Filter(); scoped && !tenants[fakeqdrant.MustKeyword(f, "tenant_id")] {
			t.Errorf("%s without a user's tenant filter: %v", c.Method, f)
		}
		up, ok := c.Req.(*qdrant.UpsertPoints)
		if !ok {
			continue
		}
		for _, p := range up.GetPoints() {
			tenant, thread := p.GetPayload()["tenant_id"].GetStringValue(), p.GetPayload()["thread_id"].GetStringValue()
			want := p.GetId().GetUuid() // a registry point is the user's id
			if thread != "" {
				want = owner[thread].String()
				points++
			}
			if tenant != want || !tenants[tenant] {
				t.Errorf("upsert to %s of point %s (thread %q) with tenant_id %q, want %q", up.GetCollectionName(), p.GetId().GetUuid(), thread, tenant, want)
			}
		}
	}
	if points != len(owner) {
		t.Errorf("%d thread points upserted, want %d", points, len(owner))
	}
}

// checkQdrantHolds checks what the fake Qdrant holds against want (each
// user's thread ids): in collection tenancy exactly one collection per
// user, holding exactly that user's threads; in payload tenancy the
// model's collection (and the tenant registry), whose points of each
// tenant are exactly that tenant's threads.
func checkQdrantHolds(t *testing.T, s *stores, model string, want map[userid.ID]map[string]bool) {
	t.Helper()
	threadsOf := func(pts []fakeqdrant.Point, tenant string) map[string]bool {
		out := map[string]bool{}
		for _, p := range pts {
			if tenant == "" || p.Payload["tenant_id"].GetStringValue() == tenant {
				out[p.Payload["thread_id"].GetStringValue()] = true
			}
		}
		return out
	}
	var names []string
	switch s.tenancy {
	case vectors.TenancyCollection:
		for u, threads := range want {
			names = append(names, vectors.UserCollection(u))
			c, _ := s.qdrant.Collection(vectors.UserCollection(u))
			if got := threadsOf(c.Points, ""); len(c.Points) != len(threads) || !maps.Equal(got, threads) {
				t.Errorf("collection %s holds %d points of threads %v, want exactly %s's %d", c.Name, len(c.Points), setDiff(got, threads), u, len(threads))
			}
		}
	case vectors.TenancyPayload:
		names = []string{vectors.ModelCollection(model), "inboxd_tenants"}
		c, _ := s.qdrant.Collection(vectors.ModelCollection(model))
		total := 0
		for u, threads := range want {
			total += len(threads)
			if got := threadsOf(c.Points, u.String()); !maps.Equal(got, threads) {
				t.Errorf("tenant %s's points in %s: threads %v, want exactly the user's %d", u, c.Name, setDiff(got, threads), len(threads))
			}
		}
		if len(c.Points) != total {
			t.Errorf("%s holds %d points, want %d", c.Name, len(c.Points), total)
		}
	}
	slices.Sort(names)
	if got := s.qdrant.CollectionNames(); !slices.Equal(got, names) {
		t.Errorf("collections %v, want %v", got, names)
	}
}

// setDiff lists the keys of got that want lacks, and those of want that
// got lacks (prefixed "-"), for error messages.
func setDiff(got, want map[string]bool) []string {
	var out []string
	for k := range got {
		if !want[k] {
			out = append(out, k)
		}
	}
	for k := range want {
		if !got[k] {
			out = append(out, "-"+k)
		}
	}
	slices.Sort(out)
	return out
}

func types(p map[string]any) []string {
	var out []string
	for _, x := range p["messages"].([]any) {
		out = append(out, x.(map[string]any)["type"].(string))
	}
	return out
}

// TestInitializeTwoUsers: A and B initialise some hundred threads each
// from Dovecot, on every vector backend (embedded, Qdrant in collection and
// in payload tenancy); each collection holds exactly its owner's threads
// of the window, searches never cross (in payload tenancy every search on
// the wire carries the caller's tenant filter, and every point written
// its owner's tenant), payloads are complete, and a thread longer than the
// model's input limit is chunked and found.
func TestInitializeTwoUsers(t *testing.T) {
	dc := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw", "bob": "bob-pw"})
	// The jobs only read the mailboxes: every backend initialises the same.
	ca := seed(t, dc, "alice", "a", "alice@a.example", 130, 30)
	cb := seed(t, dc, "bob", "b", "bob@b.example", 110, 0)
	for _, vb := range vectorBackends {
		t.Run(vb.name, func(t *testing.T) { testInitializeTwoUsers(t, vb, dc, ca, cb) })
	}
}

func testInitializeTwoUsers(t *testing.T, vb vectorBackend, dc *testsvc.DovecotServer, ca, cb corpus) {
	s := newStoresOn(t, vb)
	a := s.newUser(t, "alice@a.example", dc, "alice", nil)
	b := s.newUser(t, "bob@b.example", dc, "bob", nil)

	var mu sync.Mutex
	var seen []string // statuses read while batches ran
	var m *Manager
	m, _ = s.manager(t, true, func(c *Config) {
		c.afterBatch = func(_ context.Context, user userid.ID, p Progress) {
			st, err := ReadInboxStatus(context.Background(), s.kv, user)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || st.Progress != p || st.Status != StatusRunning {
				seen = append(seen, "bad")
				return
			}
			seen = append(seen, st.Status)
		}
	})
	ctx := context.Background()
	for _, u := range []userid.ID{a, b} {
		if st, _ := m.InboxStatus(ctx, u); st.Status != StatusNotStarted || st.Progress != (Progress{}) {
			t.Fatalf("before: %+v", st)
		}
		if err := m.Start(ctx, u, Initialize); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Start(ctx, a, Initialize); !errors.Is(err, ErrRunning) {
		t.Errorf("second start: %v, want ErrRunning", err)
	}
	for _, u := range []userid.ID{a, b} {
		if err := m.Wait(ctx, u, Initialize); err != nil {
			t.Fatal(err)
		}
	}
	if s.tenancy == vectors.TenancyPayload {
		owner := map[string]userid.ID{}
		for _, tc := range []struct {
			user userid.ID
			c    corpus
		}{{a, ca}, {b, cb}} {
			for id := range tc.c.threads {
				owner[id] = tc.user
			}
		}
		checkTenantWire(t, s.qdrant.Calls(""), owner, a, b)
	}
	mu.Lock()
	if len(seen) == 0 || slices.Contains(seen, "bad") {
		t.Errorf("statuses during the run: %v", seen)
	}
	mu.Unlock()

	for _, tc := range []struct {
		user userid.ID
		c    corpus
	}{{a, ca}, {b, cb}} {
		st, err := m.InboxStatus(ctx, tc.user)
		if err != nil {
			t.Fatal(err)
		}
		want := Progress{len(tc.c.threads), len(tc.c.threads)}
		if st.Status != StatusCompleted || st.Progress != want || st.LastError != "" {
			t.Errorf("status %+v, want completed %v", st, want)
		}
		if n := s.count(t, tc.user); n != len(tc.c.threads) {
			t.Errorf("%d points, want %d", n, len(tc.c.threads))
		}
		got, _ := s.settings.Get(ctx, tc.user)
		if got.EmbeddingModel != "offline-hash-384" {
			t.Errorf("embedding model saved: %q", got.EmbeddingModel)
		}
		// The collection holds exactly the user's threads: none of the
		// other user's.
		if got := s.stored(t, tc.user); !maps.Equal(got, tc.c.threads) {
			t.Errorf("%s's collection: threads not the user's, and missing: %v", tc.user, setDiff(got, tc.c.threads))
		}
	}
	if s.qdrant != nil {
		checkQdrantHolds(t, s, "offline-hash-384", map[userid.ID]map[string]bool{a: ca.threads, b: cb.threads})
	}

	// Isolation: A searching B's vocabulary finds only A's threads, and
	// the other way round.
	for _, tc := range []struct {
		user  userid.ID
		own   corpus
		query string
	}{{a, ca, cb.uniqueWords}, {b, cb, ca.uniqueWords}, {a, ca, ca.uniqueWords}} {
		hits := search(t, s, tc.user, tc.query, 20)
		if len(hits) == 0 {
			t.Fatalf("no hits for %q", tc.query)
		}
		for _, h := range hits {
			if !tc.own.threads[h.ID] {
				t.Errorf("search as %s returned %q, not one of the user's threads", tc.user, h.ID)
			}
		}
	}

	// Payloads.
	p := s.point(t, a, "a-root-0@a.example")
	if p["message_count"] != int64(3) || p["contains_user_reply"] != true || p["language"] != "en" ||
		!slices.Equal(types(p), []string{"received", "sent", "received"}) ||
		p["subject"] != "invoice and bicycle (0)" || p["thread_id"] != "a-root-0@a.example" {
		t.Errorf("thread 0 payload: %v", p)
	}
	if f, _ := p["folders"].([]any); len(f) != 2 || f[0] != "INBOX" || f[1] != "Sent" {
		t.Errorf("folders: %v", p["folders"])
	}
	if parts, _ := p["participants"].([]any); !slices.Contains(parts, any("alice@a.example")) || !slices.Contains(parts, any("contact0@clients-a.example")) {
		t.Errorf("participants: %v", p["participants"])
	}
	md, _ := p["thread_markdown"].(string)
	if !strings.Contains(md, "# Email Thread") || !strings.Contains(md, "**Messages:** 3") || strings.Contains(md, "> could you please") {
		t.Errorf("markdown:\n%s", md)
	}
	msgs := p["messages"].([]any)
	if body := msgs[1].(map[string]any)["body_cleaned"].(string); strings.Contains(body, "wrote:") || !strings.Contains(body, "thanks for your message") {
		t.Errorf("reply body_cleaned %q", body)
	}
	if p := s.point(t, a, "a-root-110@a.example"); p["language"] != "nl" || p["contains_user_reply"] != true {
		t.Errorf("Dutch thread: language %v, reply %v", p["language"], p["contains_user_reply"])
	}
	if p := s.point(t, a, "a-root-3@a.example"); p["contains_user_reply"] != false || p["message_count"] != int64(1) {
		t.Errorf("unanswered thread: %v", p)
	}
	if p := s.point(t, a, "a-own-0@a.example"); p["contains_user_reply"] != false || !slices.Equal(types(p), []string{"sent"}) {
		t.Errorf("own thread: %v", p)
	}

	// The long thread: longer than the input limit, embedded in chunks
	// (nothing dropped), and found by a word at its very end.
	for _, tc := range []struct {
		user userid.ID
		c    corpus
	}{{a, ca}, {b, cb}} {
		lp := s.point(t, tc.user, tc.c.longThread)
		md := lp["thread_markdown"].(string)
		model := s.catalog.Offline()
		tailAt := strings.Index(md, "Appendix 0:")
		if tailAt <= model.InputLimit() || model.Chunks(md) < 3 || !strings.HasSuffix(strings.TrimSpace(md), ".") {
			t.Errorf("long thread: %d chars, %d chunks, tail at %d", len(md), model.Chunks(md), tailAt)
		}
		// Among the top three: the chunks are averaged into one vector, so the
		// lexical offline model ranks it near, not always at, the top.
		hits := search(t, s, tc.user, tc.c.longWord, 3)
		if !slices.ContainsFunc(hits, func(h vectors.Hit) bool { return h.ID == tc.c.longThread }) {
			ids := make([]string, len(hits))
			for i, h := range hits {
				ids[i] = fmt.Sprintf("%s (%.3f)", h.ID, h.Score)
			}
			t.Errorf("search for the long thread's last words: top 3 %v lack %s", ids, tc.c.longThread)
		}
	}
	// Tone analysis needs an LLM: not started for users without one.
	if st, _ := m.Status(ctx, a); st.ToneOfVoice != StatusNotStarted {
		t.Errorf("tone status %q without an LLM", st.ToneOfVoice)
	}
	if v := value(t, m.m.runs.WithLabelValues(string(Initialize), ResultOK)); v != 2 {
		t.Errorf("runs ok = %v", v)
	}
}

// TestInterruptAndResume: an initialisation interrupted from another
// replica (through the KV) stops at a batch boundary; started again on a
// new Manager over the same stores it skips what is stored and finishes
// with exactly one point per thread.
func TestInterruptAndResume(t *testing.T) {
	dc := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	c := seed(t, dc, "alice", "a", "alice@a.example", 40, 0)
	s := newStores(t)
	a := s.newUser(t, "alice@a.example", dc, "alice", nil)
	ctx := context.Background()

	other, _ := s.manager(t, false, nil) // another replica
	var once sync.Once
	m1, _ := s.manager(t, false, func(cfg *Config) {
		cfg.BatchSize = 5
		cfg.afterBatch = func(_ context.Context, user userid.ID, p Progress) {
			if p.Done >= 15 {
				once.Do(func() {
					if err := other.Interrupt(ctx, user, Initialize); err != nil {
						t.Error(err)
					}
				})
			}
		}
	})
	if err := m1.Start(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if err := m1.Wait(ctx, a, Initialize); !errors.Is(err, errInterrupted) {
		t.Fatalf("interrupted run ended with %v", err)
	}
	st, _ := m1.InboxStatus(ctx, a)
	stored := s.count(t, a)
	if st.Status != StatusInterrupted || stored != 15 || st.Progress.Done != 15 || st.Progress.Total != len(c.threads) {
		t.Fatalf("after the interrupt: %+v, %d points", st, stored)
	}
	if _, err := s.kv.Get(ctx, a.Key(keyInboxInterrupt)); err == nil {
		t.Error("the interrupt flag outlived the run")
	}
	m1.Close()

	var first Progress
	m2, _ := s.manager(t, false, func(cfg *Config) {
		cfg.BatchSize = 5
		cfg.afterBatch = func(_ context.Context, _ userid.ID, p Progress) {
			if first == (Progress{}) {
				first = p
			}
		}
	})
	if err := m2.Start(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if err := m2.Wait(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if first.Done != 20 {
		t.Errorf("the resumed run's first batch brought progress to %d, want 20 (15 skipped)", first.Done)
	}
	st, _ = m2.InboxStatus(ctx, a)
	if n := s.count(t, a); n != len(c.threads) || st.Status != StatusCompleted || st.Progress.Done != n {
		t.Errorf("after resuming: %d points (want %d), %+v", n, len(c.threads), st)
	}
	// Initialising again is a fresh count over the same points: no duplicates.
	if err := m2.Start(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if err := m2.Wait(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if n := s.count(t, a); n != len(c.threads) {
		t.Errorf("after a second run: %d points", n)
	}
}

// TestCrashRecovery: the daemon stops mid-initialisation (the status stays
// running, to be resumed) and a dead replica's lease lingers; a new
// Manager's recovery sweep resumes the job once the lease expired, and it
// finishes without duplicates.
func TestCrashRecovery(t *testing.T) {
	dc := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	c := seed(t, dc, "alice", "a", "alice@a.example", 40, 0)
	s := newStores(t)
	a := s.newUser(t, "alice@a.example", dc, "alice", nil)
	ctx := context.Background()

	var once sync.Once
	stopped := make(chan struct{})
	var stop1 func()
	var m1 *Manager
	m1, stop1 = s.manager(t, true, func(cfg *Config) {
		cfg.BatchSize = 5
		cfg.afterBatch = func(jctx context.Context, _ userid.ID, p Progress) {
			if p.Done >= 10 {
				once.Do(func() { go func() { stop1(); close(stopped) }() })
				<-jctx.Done() // the shutdown lands between two batches
			}
		}
	})
	if err := m1.Start(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	<-stopped
	st, _ := ReadInboxStatus(ctx, s.kv, a)
	if st.Status != StatusRunning || s.count(t, a) != 10 {
		t.Fatalf("after the shutdown: %+v, %d points", st, s.count(t, a))
	}
	if held, _ := m1.Running(ctx, a, Initialize); held {
		t.Fatal("a clean shutdown left the lease")
	}
	// A replica that died without releasing its lease: recovery waits for
	// the lease to expire.
	if ok, err := s.kv.SetNX(ctx, leaseKey(Initialize, a), "dead-replica/0", time.Second); !ok || err != nil {
		t.Fatal(ok, err)
	}
	var mu sync.Mutex
	var first Progress
	start := time.Now()
	m2, _ := s.manager(t, true, func(cfg *Config) {
		cfg.BatchSize = 5
		cfg.afterBatch = func(_ context.Context, _ userid.ID, p Progress) {
			mu.Lock()
			defer mu.Unlock()
			if first == (Progress{}) {
				first = p
			}
		}
	})
	waitFor(t, "the resumed initialisation", 20*time.Second, func() bool {
		st, _ := m2.InboxStatus(ctx, a)
		return st.Status == StatusCompleted
	})
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Errorf("resumed after %v, before the dead replica's lease expired", d)
	}
	mu.Lock()
	if first.Done != 15 {
		t.Errorf("the resumed run's first batch brought progress to %d, want 15 (10 skipped)", first.Done)
	}
	mu.Unlock()
	if n := s.count(t, a); n != len(c.threads) {
		t.Errorf("%d points, want %d", n, len(c.threads))
	}
	for result, want := range map[string]float64{ResultCanceled: 1, ResultOK: 1} {
		if v := value(t, m2.m.runs.WithLabelValues(string(Initialize), result)); v != want {
			t.Errorf("inboxd_job_runs_total{result=%q} = %v, want %v", result, v, want)
		}
	}
}

// toneLLM answers the tone job's two kinds of requests.
func toneLLM(t *testing.T) *fakellm.Server {
	srv := fakellm.New(t)
	srv.ExpectAPIKey("sk-alice")
	srv.SetHandler(func(r fakellm.Request) fakellm.Reply {
		system := r.Messages[0].Content
		switch {
		case strings.Contains(system, "short, polite reply"):
			return fakellm.Text("Dear sender, thank you for your email. Kind regards.")
		case strings.Contains(system, "You study how one person writes"):
			for _, lang := range []string{"English", "Dutch"} {
				if strings.Contains(system, "in "+lang+".") {
					return fakellm.Text("  Writes short, warm " + lang + " replies; signs off informally.  ")
				}
			}
		}
		return fakellm.Error(400, "unexpected prompt")
	})
	return srv
}

// TestToneOfVoice: after an initialisation, the tone job (started by it)
// profiles every language with at least 10 replied-to threads, from pairs
// of (their message, the user's reply), and stores {lang: text}.
func TestToneOfVoice(t *testing.T) {
	dc := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	c := seed(t, dc, "alice", "a", "alice@a.example", 60, 15)
	if c.replied["en"] < 10 || c.replied["nl"] < 10 {
		t.Fatalf("corpus: %v", c.replied)
	}
	srv := toneLLM(t)
	s := newStores(t)
	a := s.newUser(t, "alice@a.example", dc, "alice", map[string]any{
		"llm_base_url": srv.URL(), "llm_model": "tone-model", "llm_api_key": "sk-alice",
	})
	m, _ := s.manager(t, false, func(cfg *Config) { cfg.ToneMinThreads = 10 })
	ctx := context.Background()
	if err := m.Start(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, a, ToneOfVoice); err != nil { // started by the initialisation
		t.Fatal(err)
	}
	st, _ := m.Status(ctx, a)
	if st.ToneOfVoice != StatusCompleted {
		t.Fatalf("tone status %q", st.ToneOfVoice)
	}
	profile, err := m.ToneProfile(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"en": "Writes short, warm English replies; signs off informally.",
		"nl": "Writes short, warm Dutch replies; signs off informally.",
	}
	if len(profile) != 2 || profile["en"] != want["en"] || profile["nl"] != want["nl"] {
		t.Errorf("profile %q", profile)
	}
	// Every analysis saw the user's own replies contrasted with generic ones.
	analyses := 0
	for _, r := range srv.Requests() {
		if r.Model != "tone-model" {
			t.Errorf("model %q", r.Model)
		}
		if strings.Contains(r.Messages[0].Content, "You study how") {
			analyses++
			u := r.Messages[1].Content
			if !strings.Contains(u, "### The person's actual reply") || !strings.Contains(u, "Dear sender") ||
				!(strings.Contains(u, "I will send you the") || strings.Contains(u, "Ik stuur je de gegevens")) {
				t.Errorf("analysis prompt lacks the pairs:\n%s", u)
			}
		}
	}
	if analyses != 2 {
		t.Errorf("%d analyses, want 2", analyses)
	}

	// Fewer replied threads than the minimum: no profile for the language.
	m2, _ := s.manager(t, false, func(cfg *Config) { cfg.ToneMinThreads = 12 })
	if err := m2.Start(ctx, a, ToneOfVoice); err != nil {
		t.Fatal(err)
	}
	if err := m2.Wait(ctx, a, ToneOfVoice); err != nil {
		t.Fatal(err)
	}
	if profile, _ := m2.ToneProfile(ctx, a); len(profile) != 1 || profile["en"] == "" {
		t.Errorf("with a minimum of 12 (nl has %d): %q", c.replied["nl"], profile)
	}
}

// TestLabelDescriptions: every user folder, and no special-use one, gets a
// description written from its recent mail.
func TestLabelDescriptions(t *testing.T) {
	dc := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	mb := openMailbox(t, dc, "alice")
	for _, f := range []string{"Clients", "Newsletters", "Empty"} {
		mb.create(f)
	}
	now := time.Now()
	for i := 0; i < 12; i++ {
		mb.append(msg{folder: "Clients", id: "c" + string(rune('a'+i)) + "@x.example", from: "Client <client@x.example>", to: "alice@a.example",
			subject: "Order", date: now.Add(-time.Duration(i) * time.Hour), body: "Please ship order " + string(rune('A'+i)) + ".\n"})
	}
	mb.append(msg{folder: "Newsletters", id: "n1@news.example", from: "News <news@news.example>", to: "alice@a.example",
		subject: "Weekly", date: now, body: "This week in news.\n"})
	mb.append(msg{folder: "Sent", id: "s1@a.example", from: "alice@a.example", to: "x@x.example", subject: "Hi", date: now, body: "Hi\n"})

	srv := fakellm.New(t)
	srv.SetHandler(func(r fakellm.Request) fakellm.Reply {
		first, _, _ := strings.Cut(r.LastUserMessage(), "\n")
		n := strings.Count(r.LastUserMessage(), "## Message ")
		return fakellm.Text("Mail filed under " + strings.TrimPrefix(first, "Folder: ") + " (" + string(rune('0'+n/10)) + string(rune('0'+n%10)) + " seen).")
	})
	s := newStores(t)
	a := s.newUser(t, "alice@a.example", dc, "alice", map[string]any{"llm_base_url": srv.URL(), "llm_model": "m"})
	noLLM := s.newUser(t, "bob@b.example", dc, "alice", nil)
	m, _ := s.manager(t, false, nil)
	ctx := context.Background()
	if err := m.Start(ctx, noLLM, LabelDescriptions); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("without an LLM: %v", err)
	}
	if err := m.Start(ctx, a, LabelDescriptions); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, a, LabelDescriptions); err != nil {
		t.Fatal(err)
	}
	got, err := m.LabelDescriptions(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Clients": "Mail filed under Clients (10 seen).", "Newsletters": "Mail filed under Newsletters (01 seen)."}
	if len(got) != len(want) || got["Clients"] != want["Clients"] || got["Newsletters"] != want["Newsletters"] {
		t.Errorf("descriptions %q, want %q", got, want)
	}
	if st, _ := m.Status(ctx, a); st.LabelDescriptions != StatusCompleted {
		t.Errorf("status %q", st.LabelDescriptions)
	}
	if got, _ := m.LabelDescriptions(ctx, noLLM); len(got) != 0 {
		t.Errorf("the other user has descriptions: %v", got)
	}
}

// TestIncremental: after the initialisation, new mail in INBOX and Sent is
// embedded by the incremental run (a reply updates its thread's point, a
// new message adds one), only for users whose initialisation completed.
func TestIncremental(t *testing.T) {
	dc := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw", "bob": "bob-pw"})
	c := seed(t, dc, "alice", "a", "alice@a.example", 12, 0)
	s := newStores(t)
	a := s.newUser(t, "alice@a.example", dc, "alice", nil)
	b := s.newUser(t, "bob@b.example", dc, "bob", nil) // never initialised
	m, _ := s.manager(t, false, func(cfg *Config) {
		// No provider is reachable from tests: fail at once.
		cfg.Embed = embed.Options{HTTPClient: &http.Client{Transport: refuse{}}, MaxRetries: -1}
	})
	ctx := context.Background()
	if err := m.Start(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, a, Initialize); err != nil {
		t.Fatal(err)
	}
	before := s.count(t, a)
	mb := openMailbox(t, dc, "alice")
	now := time.Now()
	mb.append(msg{folder: "INBOX", id: "a-new@a.example", from: "New <new@x.example>", to: "alice@a.example", subject: "Brand new",
		date: now, body: "A completely new conversation about the harpsichord.\n"})
	mb.append(msg{folder: "Sent", id: "a-reply-late@a.example", inReplyTo: "a-root-3@a.example", refs: "<a-root-3@a.example>",
		from: "Me <alice@a.example>", to: "contact3@clients-a.example", subject: "Re: late", date: now, body: "Sorry for the late answer.\n"})

	m.incrementalSweep(ctx)
	if err := m.Wait(ctx, a, Incremental); err != nil {
		t.Fatal(err)
	}
	if held, _ := m.Running(ctx, b, Incremental); held {
		t.Error("incremental started for a user never initialised")
	}
	if n := s.count(t, a); n != before+1 {
		t.Errorf("%d points after the incremental run, want %d", n, before+1)
	}
	if p := s.point(t, a, "a-new@a.example"); p["message_count"] != int64(1) {
		t.Errorf("new thread: %v", p)
	}
	if p := s.point(t, a, "a-root-3@a.example"); p["message_count"] != int64(2) || p["contains_user_reply"] != true {
		t.Errorf("answered thread: count %v reply %v", p["message_count"], p["contains_user_reply"])
	}
	// Nothing new: nothing changes.
	if err := m.Start(ctx, a, Incremental); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, a, Incremental); err != nil {
		t.Fatal(err)
	}
	if n := s.count(t, a); n != len(c.threads)+1 {
		t.Errorf("%d points, want %d", n, len(c.threads)+1)
	}
	// A model change recreates the collection and initialises again.
	s.setSettings(t, a, map[string]any{"embedding_model": "text-embedding-3-small", "embedding_api_key": "sk-none"})
	if err := m.Start(ctx, a, Incremental); err != nil {
		t.Fatal(err)
	}
	_ = m.Wait(ctx, a, Incremental)
	var last InboxStatus
	waitFor(t, "the reinitialisation to fail on the unreachable provider", 10*time.Second, func() bool {
		last, _ = m.InboxStatus(ctx, a)
		if last.Status == StatusFailed {
			return true
		}
		t.Logf("%+v", last)
		time.Sleep(500 * time.Millisecond)
		return false
	})
	if !strings.Contains(last.LastError, "no network in tests") {
		t.Errorf("last error %q", last.LastError)
	}
	model, dims, _, _ := s.vectors.Info(ctx, a)
	if model != "text-embedding-3-small" || dims != 1536 || s.count(t, a) != 0 {
		t.Errorf("collection after the model change: %s/%d with %d points", model, dims, s.count(t, a))
	}
}

// TestStartRules: prerequisites, one job per kind and user across
// replicas, and interrupting a job whose process died.
func TestStartRules(t *testing.T) {
	s := newStores(t)
	ctx := context.Background()
	none := s.newUser(t, "none@x.example", nil, "", nil)
	u := s.newUser(t, "u@x.example", nil, "", map[string]any{
		"imap_server": "127.0.0.1", "imap_port": 1, "imap_security": "none", "imap_username": "u", "imap_password": "p",
	})
	m, _ := s.manager(t, false, nil)
	if err := m.Start(ctx, none, Initialize); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("no IMAP account: %v", err)
	}
	if err := m.Start(ctx, u, ToneOfVoice); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("tone without an LLM: %v", err)
	}
	if err := m.Start(ctx, userid.ID{}, Initialize); !errors.Is(err, userid.ErrZero) {
		t.Errorf("zero user: %v", err)
	}
	if err := m.Start(ctx, u, Kind("nope")); err == nil {
		t.Error("unknown kind accepted")
	}
	// Another replica holds the lease.
	if ok, _ := s.kv.SetNX(ctx, leaseKey(Initialize, u), "other/1", time.Minute); !ok {
		t.Fatal("SetNX")
	}
	if err := m.Start(ctx, u, Initialize); !errors.Is(err, ErrRunning) {
		t.Errorf("lease held elsewhere: %v", err)
	}
	// Interrupting it goes through the KV.
	if err := m.Interrupt(ctx, u, Initialize); err != nil {
		t.Fatal(err)
	}
	if v, err := s.kv.Get(ctx, u.Key("inbox_interrupt")); err != nil || v != "1" {
		t.Errorf("inbox_interrupt = %q, %v", v, err)
	}
	// A job left running by a dead process (no lease) is marked interrupted.
	if err := s.kv.Delete(ctx, leaseKey(Initialize, u)); err != nil {
		t.Fatal(err)
	}
	if err := s.kv.Set(ctx, u.Key("inbox_status"), StatusRunning, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Interrupt(ctx, u, Initialize); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.InboxStatus(ctx, u); st.Status != StatusInterrupted {
		t.Errorf("dead job after Interrupt: %q", st.Status)
	}
	// A failing job records its error; the connection error names no secret.
	if err := m.Start(ctx, u, Initialize); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, u, Initialize); err == nil {
		t.Fatal("a run against a closed port succeeded")
	}
	st, _ := m.InboxStatus(ctx, u)
	if st.Status != StatusFailed || !strings.HasPrefix(st.LastError, "imap: ") || strings.Contains(st.LastError, "\"p\"") {
		t.Errorf("failed run: %+v", st)
	}
	// Keys written: only the user's own, and the lease is gone.
	keys, _ := s.kv.Scan(ctx, "")
	for k := range keys {
		if !strings.HasPrefix(k, "user:") {
			t.Errorf("key %q outside user:{uuid}:", k)
		}
	}
	m.Close()
	if err := m.Start(ctx, u, Initialize); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// TestMetricsShareRegistry: the queue gauge coexists with the poller's and
// the workflow runner's on one registry, and two Managers share theirs.
func TestMetricsShareRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	poll := prometheus.NewGauge(prometheus.GaugeOpts{Name: "inboxd_worker_pool_queue_depth", Help: "Work waiting for a worker, by pool.",
		ConstLabels: prometheus.Labels{"pool": "poll"}})
	reg.MustRegister(poll)
	m1, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m1.runs.WithLabelValues(string(ToneOfVoice), ResultOK).Inc()
	m2.queued.Inc()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range families {
		n += len(f.GetMetric())
	}
	if want := 2 + len(Kinds())*len(results()) + len(Kinds()); n != want {
		t.Errorf("%d series, want %d", n, want)
	}
	if v := value(t, m2.runs.WithLabelValues(string(ToneOfVoice), ResultOK)); v != 1 {
		t.Errorf("shared counter = %v", v)
	}
	if v := value(t, m1.queued); v != 1 {
		t.Errorf("shared gauge = %v", v)
	}
}

// refuse is a transport that never reaches anything.
type refuse struct{}

func (refuse) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("no network in tests")
}

// value reads a single-series collector (a counter or gauge).
func value(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var pb dto.Metric
	if err := (<-ch).Write(&pb); err != nil {
		t.Fatal(err)
	}
	if pb.Counter != nil {
		return pb.Counter.GetValue()
	}
	return pb.Gauge.GetValue()
}
