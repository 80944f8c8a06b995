package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/isolationcheck"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// TestIsolationSweep is issue #8's isolation sweep. Users A and B get data
// everywhere: settings with secrets, a workflow run to the end (instances,
// step outputs, the runner's log rows), more log rows, vectors, a plugin KV
// key and job status. Then B walks every route the router has (the list
// comes from the router, so a new route is covered the day it is added)
// with every id of A's that A's own answers show, and with guessed ones,
// sending an empty and a valid body of the route's kind. Every answer B gets
// is a 404 or B's own: no answer holds anything of A's, admin routes are
// 404, A's answers and KV keys are the same afterwards, and every KV key
// written names an existing user (or is a lease).
func TestIsolationSweep(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s := newSweep(t, b)
			ctx := context.Background()
			s.seed(t, &s.a, "imap."+s.a.mark+".example", 993, "tls")
			// B's IMAP server refuses at once: B's jobs, started by the
			// sweep, fail fast instead of waiting on a dial.
			s.seed(t, &s.b, "127.0.0.1", 1, "none")

			aView, aIDs := s.crawl(t, s.a)
			s.aIDs = aIDs
			s.checkOwnerSees(t, aView)
			bView, _ := s.crawl(t, s.b)
			for path, body := range bView {
				s.expectNoLeak(t, "B's own view: "+path, nil, body)
			}
			// The detector works: the admin's view of A is A's data.
			if _, body := s.send(t, s.admin.key, "GET", "/api/v1/users/"+s.a.ID.String(), ""); len(s.leaks(nil, body)) == 0 {
				t.Fatalf("the leak detector finds nothing of A's in the admin's view of A: %s", body)
			}
			aKV := s.scanKV(t, s.a.ID.KeyPrefix())
			aPoints := s.points(t, s.a)

			s.rec.SetPhase("sweep")
			routes, requests := s.walk(t, aIDs)
			t.Logf("isolation sweep: %d routes, %d requests", routes, requests)
			for _, k := range jobs.Kinds() {
				_ = s.jobs.Wait(ctx, s.b.ID, k) // B's own jobs may fail; only their writes matter
			}
			s.rec.SetPhase("after")

			afterView := s.recrawl(t, s.a, aView)
			for _, p := range slices.Sorted(maps.Keys(aView)) {
				if afterView[p] != aView[p] {
					t.Errorf("A's GET %s changed during B's sweep:\nbefore %s\nafter  %s", p, aView[p], afterView[p])
				}
			}
			if after := s.scanKV(t, s.a.ID.KeyPrefix()); !maps.Equal(after, aKV) {
				t.Errorf("A's KV keys changed during B's sweep:\nbefore %v\nafter  %v", aKV, after)
			}
			if after := s.points(t, s.a); after != aPoints {
				t.Errorf("A's vectors changed during B's sweep:\nbefore %s\nafter  %s", aPoints, after)
			}
			s.auditKVWrites(t)
		})
	}
}

// sweep is one API with every dependency (workflows with a running runner,
// logs, jobs, vectors on the embedded store with the offline embedder,
// tools) over real stores, with users A, B and an admin.
type sweep struct {
	srv   *httptest.Server
	api   *api.Server
	rec   *isolationcheck.RecordingKV
	users *users.Store
	logs  *logs.Store
	vec   *vectors.Embedded
	emb   embed.Embedder
	model embed.Model
	jobs  *jobs.Manager

	a, b, admin sweepUser
	aIDs        []string // every id of A's that A's answers show

	mu      sync.Mutex
	matched map[string]int // router pattern -> requests it answered
}

// sweepUser is a user with an API key; mark is in every piece of the
// user's content (email, settings, workflow, inputs, threads ...).
type sweepUser struct {
	users.User
	key       string
	mark      string
	workflow  string
	steps     []string
	instances []string
}

func newSweep(t *testing.T, b backend) *sweep {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	s := &sweep{rec: isolationcheck.NewRecordingKV(b.newKV(t, db)), users: users.NewStore(db),
		logs: logs.NewStore(db), vec: vectors.NewEmbedded(db, vectors.EmbeddedOptions{}), matched: map[string]int{}}
	s.rec.SetPhase("setup")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	authn, err := auth.New(auth.Config{Mode: "apikey"}, s.users, box, logger)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	s.model = cat.Offline()
	if s.emb, err = embed.New(s.model, "", embed.Options{}); err != nil {
		t.Fatal(err)
	}
	st := settings.NewStore(s.rec, box)
	m := metrics.New("test")
	dial := mail.DialOptions{Timeout: 2 * time.Second}
	s.jobs, err = jobs.New(jobs.Config{KV: s.rec, Settings: st, Vectors: s.vec, Catalog: cat, LLM: sweepLLM{},
		MailDial: dial, Logger: logger, Registerer: m.Registry, Owner: "sweep"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.jobs.Close)

	caller := s.tools()
	wf := workflow.NewStore(db)
	runner, err := workflow.NewRunner(workflow.RunnerConfig{Store: wf, LLM: sweepLLM{}, Tools: caller, Logs: s.logs,
		Settings: st, PollInterval: 20 * time.Millisecond, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	wf.OnInstanceCreated(runner.Kick)
	runCtx, stop := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = runner.Run(runCtx)
	}()
	t.Cleanup(func() { stop(); <-stopped })

	s.api = api.New(api.Deps{
		Auth: authn, Users: s.users, Settings: st, KV: s.rec, Workflows: wf, Logs: s.logs, Tools: caller,
		Jobs: s.jobs, Catalog: cat, Metrics: m, Logger: logger, IMAPDial: dial,
		Ready: []api.Check{{Name: "sql", Ping: db.Ping}, {Name: "kv", Ping: s.rec.Ping}},
	})
	// The router sets r.Pattern on the request it routes: which route
	// answered is recorded, so that coverage is the router's own count.
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.api.ServeHTTP(w, r)
		s.mu.Lock()
		s.matched[r.Pattern]++
		s.mu.Unlock()
	}))
	t.Cleanup(s.srv.Close)

	s.a = s.newUser(t, "alice", false)
	s.b = s.newUser(t, "bob", false)
	s.admin = s.newUser(t, "root", true)
	return s
}

func (s *sweep) newUser(t *testing.T, name string, admin bool) sweepUser {
	t.Helper()
	mark := fmt.Sprintf("%s%016x", name, rand.Uint64())
	u, err := s.users.Create(context.Background(), users.NewUser{Email: mark + "@example.com", DisplayName: "Name of " + mark, Admin: admin})
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.users.CreateAPIKey(context.Background(), u.ID, "sweep")
	if err != nil {
		t.Fatal(err)
	}
	return sweepUser{User: u, key: key, mark: mark}
}

// sweepLLM answers every chat with the text it was sent.
type sweepLLM struct{}

func (sweepLLM) Chat(_ context.Context, req llm.Request) (llm.Response, error) {
	var text strings.Builder
	for _, m := range req.Messages {
		text.WriteString(m.Content)
	}
	return llm.Response{Message: llm.Message{Role: llm.RoleAssistant, Content: "echo: " + text.String()},
		Usage: llm.Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15}, FinishReason: "stop"}, nil
}

// tools are the caller's tools: they reach the caller's own vectors and
// plugin KV the way a plugin does, by the user of the call.
func (s *sweep) tools() *tools.Static {
	result := func(v any) (tools.Result, error) {
		b, err := json.Marshal(v)
		return tools.Result{Content: b}, err
	}
	type args struct {
		Text  string `json:"text"`
		Query string `json:"query"`
	}
	parse := func(raw json.RawMessage) args {
		var a args
		_ = json.Unmarshal(raw, &a) // a tool ignores what it does not understand
		return a
	}
	return tools.NewStatic().
		Add(tools.Spec{Name: "echo-say", Description: "says text back"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
			return result(map[string]string{"said": parse(c.Arguments).Text, "user": c.User.String()})
		}).
		Add(tools.Spec{Name: "memory-search", Description: "searches the caller's threads"}, func(ctx context.Context, c tools.Call) (tools.Result, error) {
			q := parse(c.Arguments).Query
			if q == "" {
				q = "quote request invoice garden"
			}
			hits, err := vectors.Search(ctx, s.vec, s.emb, c.User, q, 10, nil)
			if err != nil {
				return tools.Result{Content: json.RawMessage(`"search failed"`), IsError: true}, nil
			}
			out := []map[string]any{}
			for _, h := range hits {
				out = append(out, map[string]any{"thread_id": h.ID, "payload": h.Payload})
			}
			return result(out)
		}).
		Add(tools.Spec{Name: "memory-kv", Description: "reads the caller's plugin key"}, func(ctx context.Context, c tools.Call) (tools.Result, error) {
			v, err := s.rec.Get(ctx, c.User.Key("plugin:x:k"))
			if err != nil && err != kv.ErrNotFound {
				return tools.Result{}, err
			}
			return result(map[string]string{"value": v})
		})
}

// seed gives u data everywhere; every piece of content carries u.mark.
func (s *sweep) seed(t *testing.T, u *sweepUser, imapServer string, imapPort int, security string) {
	t.Helper()
	ctx := context.Background()
	m := u.mark
	s.must(t, u.key, "PUT", "/api/v1/settings", fmt.Sprintf(`{"imap_server":%q,"imap_port":%d,"imap_security":%q,
		"imap_username":%q,"imap_password":%q,"llm_base_url":"http://127.0.0.1:1/v1","llm_model":%q,"llm_api_key":%q,
		"embedding_model":%q,"timezone":"Europe/Amsterdam"}`,
		imapServer, imapPort, security, m+"-user", m+"-imap-password", "model-"+m, m+"-llm-key", s.model.Key), 200)

	var wf map[string]any
	decodeOrFail(t, s.must(t, u.key, "POST", "/api/v1/workflows", fmt.Sprintf(`{
		"name": "Workflow of %[1]s", "description": "Quotes for %[1]s", "active": true,
		"trigger": {"type": "new_email", "filter_rules": {"domain_whitelist": ["%[1]s.example"]}},
		"steps": [
			{"name": "classify", "kind": "llm", "model": "m", "system_prompt": "Classify for %[1]s: <<trigger_output>>"},
			{"name": "stop?", "kind": "stop_checker", "step_to_check": "classify", "mode": "stop_if_output_contains", "match_values": ["never-%[1]s"]},
			{"name": "say", "kind": "tool", "tool": "echo-say", "arguments": {"text": "said <<step_output.classify>>"}}]}`, m), 201), &wf)
	u.workflow, u.steps = wf["id"].(string), wfStepIDs(wf)
	for _, body := range []string{
		fmt.Sprintf(`{"input": "mail for %s", "idempotency_key": "manual-1"}`, m),
		fmt.Sprintf(`{"email": {"from": "Carol <carol@%[1]s.example>", "to": "%[1]s@example.com", "subject": "Quote for %[1]s", "body": "Body of %[1]s"}}`, m),
	} {
		var inst map[string]any
		decodeOrFail(t, s.must(t, u.key, "POST", "/api/v1/workflows/"+u.workflow+"/run", body, 202), &inst)
		u.instances = append(u.instances, inst["id"].(string))
	}
	for _, id := range u.instances {
		s.waitFinished(t, *u, id)
	}
	logRun(t, s.logs, u.ID, "wf-"+m, "run-"+m, time.Now().Add(-time.Hour))

	texts := []string{"Quote request from " + m, "Invoice of " + m, "Garden party with " + m}
	vecs, err := s.emb.Embed(ctx, texts)
	if err != nil {
		t.Fatal(err)
	}
	var points []vectors.Point
	for i, text := range texts {
		points = append(points, vectors.Point{ID: fmt.Sprintf("thread-%s-%d", m, i), Vector: vecs[i],
			Payload: map[string]any{"subject": text, "from": m + "@example.com"}})
	}
	if err := s.vec.Upsert(ctx, u.ID, s.model.Key, s.model.Dimensions, points); err != nil {
		t.Fatal(err)
	}

	if err := s.rec.Set(ctx, u.ID.Key("plugin:x:k"), "plugin value of "+m, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.rec.SetMany(ctx, map[string]string{
		u.ID.Key("inbox_status"):              jobs.StatusCompleted,
		u.ID.Key("inbox_progress"):            `{"done":3,"total":3}`,
		u.ID.Key("tone_of_voice_profile"):     `{"en":"Tone of ` + m + `"}`,
		u.ID.Key("tone_of_voice_status"):      jobs.StatusCompleted,
		u.ID.Key("label_descriptions"):        `{"Label ` + m + `":"Mail about ` + m + `"}`,
		u.ID.Key("label_descriptions_status"): jobs.StatusCompleted,
		u.ID.Key("poll_status"):               `{"state":"auth_failed","last_error":"login rejected for ` + m + `","failures":1}`,
	}); err != nil {
		t.Fatal(err)
	}
}

func (s *sweep) waitFinished(t *testing.T, u sweepUser, instance string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var inst map[string]any
		decodeOrFail(t, s.must(t, u.key, "GET", "/api/v1/instances/"+instance, "", 200), &inst)
		switch inst["status"] {
		case "completed":
			return
		case "failed", "cancelled":
			t.Fatalf("%s's run %s: %v", u.mark, instance, inst)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's run %s did not finish: %v", u.mark, instance, inst)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// send does one request with the given API key and returns the status and
// the body (with a Location header, were there one).
func (s *sweep) send(t *testing.T, key, method, path, body string) (int, string) {
	t.Helper()
	code, got, err := s.request(key, method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	return code, got
}

// request is send for other goroutines than the test's: it returns its error.
func (s *sweep) request(key, method, path, body string) (int, string, error) {
	req, err := http.NewRequest(method, s.srv.URL+path, strings.NewReader(body))
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	return resp.StatusCode, string(raw) + resp.Header.Get("Location"), nil
}

func (s *sweep) must(t *testing.T, key, method, path, body string, want int) string {
	t.Helper()
	code, got := s.send(t, key, method, path, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, got, want)
	}
	return got
}

func decodeOrFail(t *testing.T, raw string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
}

var routeParam = regexp.MustCompile(`\{([A-Za-z_]+)(\.\.\.)?\}`)

// crawl reads everything u can read: every GET route of the router, its
// parameters filled with the ids found so far (twice over, so that ids
// found in one answer open the next), and the tools that read u's vectors
// and plugin KV. It returns the 200 answers by request and every id in them.
func (s *sweep) crawl(t *testing.T, u sweepUser) (map[string]string, []string) {
	t.Helper()
	view, found := map[string]string{}, map[string]bool{}
	read := func(method, path, body string) {
		code, got := s.send(t, u.key, method, path, body)
		if code != 200 {
			return
		}
		view[method+" "+path+" "+body] = got
		var v any
		if json.Unmarshal([]byte(got), &v) == nil {
			collectIDs(v, "", found)
		}
	}
	for round := 0; round < 2; round++ {
		ids := slices.Sorted(maps.Keys(found))
		for _, pattern := range s.api.Routes() {
			method, path, _ := strings.Cut(pattern, " ")
			if method != "GET" || !strings.HasPrefix(path, "/api/") {
				continue
			}
			params := routeParam.FindAllString(path, -1)
			if (len(params) == 0) != (round == 0) {
				continue
			}
			for _, id := range ids {
				if len(params) == 1 {
					read("GET", strings.Replace(path, params[0], id, 1), "")
				}
			}
			if len(params) == 0 {
				read("GET", path, "")
			}
		}
		if round == 0 {
			for _, q := range []string{"/api/v1/logs?limit=1", "/api/v1/logs/grouped?limit=1"} {
				read("GET", q, "") // the paging cursors
			}
			read("POST", "/api/v1/tools/memory/search", `{"query":"quote request invoice garden"}`)
			read("POST", "/api/v1/tools/memory/kv", `{}`)
		}
	}
	return view, slices.Sorted(maps.Keys(found))
}

// recrawl repeats the requests of an earlier crawl.
func (s *sweep) recrawl(t *testing.T, u sweepUser, before map[string]string) map[string]string {
	t.Helper()
	after := map[string]string{}
	for req := range before {
		parts := strings.SplitN(req, " ", 3)
		_, after[req] = s.send(t, u.key, parts[0], parts[1], parts[2])
	}
	return after
}

// collectIDs adds every string under a key "id", "*_id", "*_ids" or
// "next_cursor" of v.
func collectIDs(v any, key string, out map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, y := range x {
			collectIDs(y, k, out)
		}
	case []any:
		for _, y := range x {
			collectIDs(y, key, out)
		}
	case string:
		if x != "" && (key == "id" || key == "next_cursor" || strings.HasSuffix(key, "_id") || strings.HasSuffix(key, "_ids")) {
			out[x] = true
		}
	}
}

// checkOwnerSees makes sure that the data B must not see is there to see:
// A's own answers show every kind of it, so the sweep would notice a leak.
func (s *sweep) checkOwnerSees(t *testing.T, view map[string]string) {
	t.Helper()
	var all strings.Builder
	for _, body := range view {
		all.WriteString(body)
	}
	m := s.a.mark
	for _, want := range []string{
		s.a.Email, "imap." + m + ".example", m + "-user", "Workflow of " + m, "mail for " + m, "Quote for " + m,
		"secret of wf-" + m, "thread-" + m + "-0", "Garden party with " + m, "plugin value of " + m, "Tone of " + m,
		"login rejected for " + m, s.a.workflow, s.a.steps[0], s.a.instances[0], s.a.ID.String(),
	} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("A's own answers never show %q: the sweep could not see it leak", want)
		}
	}
	for _, secret := range []string{m + "-imap-password", m + "-llm-key"} {
		if strings.Contains(all.String(), secret) {
			t.Errorf("A's own answers show the secret %q", secret)
		}
	}
}

// leaks names what of A's is in body: A's mark (in all of A's content) or
// any id of A's, apart from the strings B itself sent (an id echoed in an
// error message is B's input, not A's data) and A's first step id, which
// B's valid bodies plant in B's own workflows (step ids are labels inside
// one workflow: B may well name a step of its own so).
func (s *sweep) leaks(sent []string, body string) []string {
	if len(s.a.steps) > 0 {
		sent = append(sent, s.a.steps[0])
	}
	for _, echo := range sent {
		if echo != "" {
			body = strings.ReplaceAll(body, echo, "")
		}
	}
	var out []string
	if strings.Contains(body, s.a.mark) {
		out = append(out, "A's content ("+s.a.mark+")")
	}
	for _, id := range s.aIDs {
		if strings.Contains(body, id) {
			out = append(out, "A's id "+id)
		}
	}
	return out
}

func (s *sweep) expectNoLeak(t *testing.T, what string, sent []string, body string) {
	t.Helper()
	if l := s.leaks(sent, body); len(l) > 0 {
		t.Errorf("%s shows %s:\n%.2000s", what, strings.Join(l, ", "), body)
	}
}

// walk sends B's requests: every route of the router, with every method a
// pattern without one accepts, its parameters filled with each candidate
// id, an empty and a valid body of the route's kind; then A's ids as
// filters and cursors of every list. It returns how many routes and
// requests it walked.
func (s *sweep) walk(t *testing.T, aIDs []string) (routes, requests int) {
	t.Helper()
	cands, anchors := s.candidates(t, aIDs)
	bodies := s.validBodies()
	for route := range bodies {
		if !slices.Contains(s.api.Routes(), route) {
			t.Errorf("validBodies has bodies for %q, which the router does not have", route)
		}
	}
	s.mu.Lock()
	clear(s.matched)
	s.mu.Unlock()

	// Deletes go last: B's own objects stay there for the other routes.
	var first, deletes []probe
	for _, pattern := range s.api.Routes() {
		method, path, ok := strings.Cut(pattern, " ")
		methods := []string{method}
		if !ok {
			path, methods = pattern, []string{"GET", "POST", "PUT", "PATCH", "DELETE"}
		}
		for _, m := range methods {
			send := []string{""}
			if m != "GET" && m != "DELETE" {
				send = append([]string{"{}"}, bodies[m+" "+path]...)
			}
			var batch []probe
			full, more := fillPath(path, cands, anchors)
			for _, p := range full {
				for _, body := range send {
					batch = append(batch, probe{pattern, m, p, body})
				}
			}
			for _, p := range more {
				batch = append(batch, probe{pattern, m, p, send[0]})
			}
			if m == "DELETE" {
				deletes = append(deletes, batch...)
			} else {
				first = append(first, batch...)
			}
		}
		if method == "GET" && strings.HasPrefix(path, "/api/") && !strings.Contains(path, "{") {
			for _, id := range aIDs {
				q := urlQuery(id)
				for _, query := range []string{"?workflow_id=" + q + "&instance_id=" + q, "?cursor=" + q + "&limit=5"} {
					first = append(first, probe{pattern, method, path + query, ""})
				}
			}
		}
	}
	s.probe(t, first)
	s.probe(t, deletes)

	s.mu.Lock()
	defer s.mu.Unlock()
	requests = len(first) + len(deletes)
	for _, pattern := range s.api.Routes() {
		if s.matched[pattern] == 0 {
			t.Errorf("route %q: none of B's %d requests reached it", pattern, requests)
		}
	}
	return len(s.api.Routes()), requests
}

// probe is one request of B's.
type probe struct{ pattern, method, path, body string }

// probe sends B's requests from a few goroutines (the order of B's own
// changes does not matter) and checks every answer.
func (s *sweep) probe(t *testing.T, probes []probe) {
	t.Helper()
	next := make(chan probe)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for p := range next {
				s.check(t, p)
			}
		})
	}
	for _, p := range probes {
		next <- p
	}
	close(next)
	wg.Wait()
}

// check sends one request as B and asserts its answer: a 404 on admin
// routes; elsewhere a 404, or a 2xx/4xx holding nothing of A's.
func (s *sweep) check(t *testing.T, p probe) {
	method, path, body := p.method, p.path, p.body
	code, got, err := s.request(s.b.key, method, path, body)
	if err != nil {
		t.Error(err)
		return
	}
	what := fmt.Sprintf("B: %s %s %s = %d", method, path, body, code)
	_, route, _ := strings.Cut(p.pattern, " ")
	switch {
	case strings.HasPrefix(route, "/api/v1/users"):
		if code != http.StatusNotFound {
			t.Errorf("%s on an admin route, want 404: %.500s", what, got)
		}
	case code >= 500, code < 200, code >= 300 && code < 400:
		t.Errorf("%s, want 404 or 2xx/4xx: %.500s", what, got)
	}
	var sent []string
	for _, id := range s.aIDs {
		if strings.Contains(path+body, id) {
			sent = append(sent, id)
		}
	}
	s.expectNoLeak(t, what, sent, got)
}

// candidates are the ids B tries: all of A's, B's own (its user, workflow,
// steps and runs), and guessed ones (random, malformed, path tricks,
// another case); anchors are the few that fill the other parameter of a
// two-parameter route: A's and B's workflow and first step, and the parts
// of every tool name.
func (s *sweep) candidates(t *testing.T, aIDs []string) (cands, anchors []string) {
	t.Helper()
	bIDs := slices.Concat([]string{s.b.ID.String(), s.b.workflow}, s.b.steps, s.b.instances)
	aWF, aStep, aInst := s.a.workflow, s.a.steps[0], s.a.instances[0]
	guessed := []string{
		userid.New().String(), userid.New().String(), "not-a-uuid", "..", "..%2F" + aInst,
		aWF + "%2Fsteps%2F" + aStep, "%2E%2E%2F" + aWF, strings.ToUpper(aWF), strings.ToUpper(s.a.ID.String()),
		"%20" + aWF, aWF + "%00",
	}
	cands = distinctStrings(slices.Concat(aIDs, bIDs, guessed))
	anchors = []string{aWF, s.b.workflow, aStep, s.b.steps[0]}
	var list struct{ Items []struct{ Name string } }
	decodeOrFail(t, s.must(t, s.b.key, "GET", "/api/v1/tools", "", 200), &list)
	for _, it := range list.Items {
		plugin, tool, _ := strings.Cut(it.Name, "-")
		anchors = append(anchors, plugin, tool)
	}
	return cands, distinctStrings(anchors)
}

func distinctStrings(list []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range list {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// fillPath fills a route's parameters. One parameter: each candidate. Two
// or more: each pair of anchors (full, with every body), then each
// candidate in one place with one of the first four anchors (A's and B's
// workflow and step) or itself in the others (not full: one body). A
// pattern ending in "/" matches everything below it: each candidate is
// appended.
func fillPath(path string, cands, anchors []string) (full, more []string) {
	params := routeParam.FindAllString(path, -1)
	switch {
	case len(params) == 0 && strings.HasSuffix(path, "/"):
		full = []string{path}
		for _, c := range cands {
			full = append(full, path+"v1/"+c)
		}
		return full, nil
	case len(params) == 0:
		return []string{path}, nil
	case len(params) == 1:
		for _, c := range cands {
			full = append(full, strings.Replace(path, params[0], c, 1))
		}
		return full, nil
	}
	fill := func(vals ...string) string {
		p := path
		for i, prm := range params {
			p = strings.Replace(p, prm, vals[min(i, len(vals)-1)], 1)
		}
		return p
	}
	for _, x := range anchors {
		for _, y := range anchors {
			full = append(full, fill(x, y))
		}
	}
	for _, c := range cands {
		more = append(more, fill(c))
		for _, x := range anchors[:4] {
			more = append(more, fill(c, x), fill(x, c))
		}
	}
	return distinctStrings(full), distinctStrings(more)
}

func urlQuery(s string) string {
	r := strings.NewReplacer("%", "%25", "&", "%26", "+", "%2B", "#", "%23", " ", "%20", "=", "%3D", "?", "%3F")
	return r.Replace(s)
}

// validBodies are, by route, bodies a client of that route would send; they
// name A's step ids wherever a body can name a step. A route missing here
// still gets "{}".
func (s *sweep) validBodies() map[string][]string {
	aStep, aSteps, bSteps := s.a.steps[0], s.a.steps, s.b.steps
	steps := fmt.Sprintf(`[{"id":%q,"name":"one","kind":"llm","system_prompt":"x"},
		{"name":"two","kind":"stop_checker","step_to_check":%q,"mode":"stop_if_output_contains","match_values":["no"]}]`, aStep, aStep)
	order := func(ids []string) string {
		b, _ := json.Marshal(map[string][]string{"step_ids": ids})
		return string(b)
	}
	return map[string][]string{
		"POST /api/v1/auth/login":         {`{"password":"guess"}`},
		"PUT /api/v1/settings":            {`{"timezone":"America/New_York"}`},
		"POST /api/v1/settings/test-imap": {""},
		"POST /api/v1/workflows": {`{"name":"B's with A's step ids","steps":` + steps + `}`,
			`{"name":"B's plain","steps":[{"name":"one","kind":"llm","system_prompt":"x"}]}`},
		"POST /api/v1/workflows/import":     {`{"inboxd_workflow":1,"name":"B's import","steps":` + steps + `}`},
		"PATCH /api/v1/workflows/{id}":      {`{"name":"B's rename"}`, `{"steps":` + steps + `}`},
		"PUT /api/v1/workflows/{id}/status": {`{"active":false}`},
		"POST /api/v1/workflows/{id}/steps": {`{"name":"B's step","kind":"llm","system_prompt":"see <<step_output.` + aStep + `>>"}`,
			`{"name":"B's step","kind":"llm","system_prompt":"x"}`},
		"PUT /api/v1/workflows/{id}/steps/order":       {order(aSteps), order(bSteps)},
		"PATCH /api/v1/workflows/{id}/steps/{step_id}": {`{"name":"B's patch"}`, `{"step_to_check":"` + aStep + `"}`},
		"PUT /api/v1/workflows/{id}/trigger":           {`{"type":"new_email"}`},
		"PATCH /api/v1/workflows/{id}/trigger":         {`{"trigger_prompt":"B's gate"}`},
		"POST /api/v1/workflows/{id}/run":              {`{"input":"B's run","idempotency_key":"manual-1"}`},
		"POST /api/v1/logs/{id}/review":                {`{"needs_review":true,"feedback":"B's review"}`},
		"POST /api/v1/tools/{plugin}/{tool}":           {`{"text":"hi","query":"quote request invoice garden"}`},
		"POST /api/v1/users":                           {`{"email":"mallory@example.com"}`},
		"POST /api/v1/users/{id}/api-keys":             {`{"name":"stolen"}`},
	}
}

// scanKV is the KV's keys under prefix with their values.
func (s *sweep) scanKV(t *testing.T, prefix string) map[string]string {
	t.Helper()
	m, err := s.rec.Scan(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// points describes u's collection: its size and what a search finds.
func (s *sweep) points(t *testing.T, u sweepUser) string {
	t.Helper()
	ctx := context.Background()
	n, err := s.vec.Count(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	hits, err := vectors.Search(ctx, s.vec, s.emb, u.ID, "quote request invoice garden", 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(hits)
	return fmt.Sprintf("%d points, search %s", n, b)
}

// auditKVWrites checks every key written through the KV with
// isolationcheck.KeyProblem (user:{uuid}: of an existing user, or a lease),
// and that nothing B's sweep caused names A.
func (s *sweep) auditKVWrites(t *testing.T) {
	t.Helper()
	writes := s.rec.Writes()
	if len(writes) == 0 {
		t.Fatal("no KV write recorded")
	}
	exists := func(id userid.ID) bool {
		_, err := s.users.Get(context.Background(), id)
		return err == nil
	}
	for _, w := range writes {
		if problem := isolationcheck.KeyProblem(w.Key, exists); problem != "" {
			t.Errorf("KV %s of %q (%s): %s", w.Op, w.Key, w.Phase, problem)
		}
		if w.Phase == "sweep" && strings.Contains(w.Key, s.a.ID.String()) {
			t.Errorf("B's sweep caused a KV %s of A's key %q", w.Op, w.Key)
		}
	}
}
