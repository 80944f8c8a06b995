package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// newLogsEnv is newEnv (embedded KV, SQLite) with the agent log wired in.
func newLogsEnv(t testing.TB, ac auth.Config) (*env, *logs.Store) {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	store := kv.NewSQL(db)
	us := users.NewStore(db)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := auth.New(ac, us, box, logger)
	if err != nil {
		t.Fatal(err)
	}
	ls := logs.NewStore(db)
	s := api.New(api.Deps{
		Auth: a, Users: us, Settings: settings.NewStore(store, box), Logs: ls,
		Metrics: metrics.New("test"), Logger: logger,
		Ready: []api.Check{{Name: "sql", Ping: db.Ping}},
	})
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &env{srv: srv, api: s, kv: store, users: us, box: box}, ls
}

// logRun writes a run for u: a workflow row and two step rows.
func logRun(t testing.TB, ls *logs.Store, u userid.ID, wf, instance string, start time.Time) (logs.Entry, []logs.Entry) {
	t.Helper()
	ctx := context.Background()
	parent, err := ls.Insert(ctx, u, logs.Entry{LogType: logs.TypeWorkflow, WorkflowID: wf, WorkflowName: "name of " + wf,
		WorkflowInstanceID: instance, StartTime: start})
	if err != nil {
		t.Fatal(err)
	}
	var steps []logs.Entry
	for i, typ := range []string{logs.TypeCustomLLM, logs.TypeCustomAgent} {
		e, err := ls.Insert(ctx, u, logs.Entry{LogType: typ, WorkflowID: wf, WorkflowInstanceID: instance,
			StepName: typ, StartTime: start.Add(time.Duration(i+1) * time.Second), Model: "m-" + wf,
			Messages:     json.RawMessage(`[{"role":"user","content":"secret of ` + wf + `"}]`),
			PromptTokens: 100, CompletionTokens: 20, TotalTokens: 120, TotalCost: 0.5})
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, e)
	}
	return parent, steps
}

func items(t testing.TB, body map[string]any) []map[string]any {
	t.Helper()
	raw, ok := body["items"].([]any)
	if !ok {
		t.Fatalf("no items array in %v", body)
	}
	out := make([]map[string]any, len(raw))
	for i, it := range raw {
		out[i] = it.(map[string]any)
	}
	return out
}

// TestLogsIsolation: two users, each with runs; every view shows a user only
// their own rows, and every id of the other user's is a 404.
func TestLogsIsolation(t *testing.T) {
	e, ls := newLogsEnv(t, auth.Config{Mode: "apikey"})
	a, keyA := e.newUser(t, "alice@example.com", false)
	b, keyB := e.newUser(t, "bob@example.com", false)
	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	pa, sa := logRun(t, ls, a.ID, "wf-a", "run-a", base)
	logRun(t, ls, a.ID, "wf-a", "run-a2", base.Add(time.Hour))
	pb, _ := logRun(t, ls, b.ID, "wf-b", "run-b", base.Add(30*time.Minute))
	get := func(key, path string) (int, map[string]any) {
		return e.do(t, request{method: "GET", path: path, bearer: key})
	}

	for _, c := range []struct {
		key   string
		owner userid.ID
		n     int
	}{{keyA, a.ID, 6}, {keyB, b.ID, 3}} {
		code, body := get(c.key, "/api/v1/logs")
		if code != 200 {
			t.Fatalf("list: %d %v", code, body)
		}
		its := items(t, body)
		if len(its) != c.n || body["next_cursor"] != "" {
			t.Errorf("%s lists %d rows (next %v), want %d", c.owner, len(its), body["next_cursor"], c.n)
		}
		for _, it := range its {
			if it["user_id"] != c.owner.String() {
				t.Errorf("%s's list has a row of %v", c.owner, it["user_id"])
			}
		}
	}
	_, body := get(keyB, "/api/v1/logs?instance_id=run-a")
	if len(items(t, body)) != 0 {
		t.Errorf("B filters on A's instance: %v", body)
	}

	// Grouped: B sees its one run with its two steps.
	code, body := get(keyB, "/api/v1/logs/grouped")
	groups := items(t, body)
	if code != 200 || len(groups) != 1 || groups[0]["id"] != pb.ID || len(groups[0]["children"].([]any)) != 2 {
		t.Fatalf("B's grouped: %d %v", code, body)
	}
	code, body = get(keyA, "/api/v1/logs/grouped?limit=1")
	groups = items(t, body)
	if code != 200 || len(groups) != 1 || groups[0]["workflow_instance_id"] != "run-a2" || body["next_cursor"] == "" {
		t.Fatalf("A's grouped page 1: %d %v", code, body)
	}
	_, body = get(keyA, "/api/v1/logs/grouped?limit=1&cursor="+url.QueryEscape(body["next_cursor"].(string)))
	groups = items(t, body)
	if len(groups) != 1 || groups[0]["id"] != pa.ID || body["next_cursor"] != "" {
		t.Fatalf("A's grouped page 2: %v", body)
	}
	children := groups[0]["children"].([]any)
	if len(children) != 2 || children[0].(map[string]any)["id"] != sa[0].ID || children[1].(map[string]any)["id"] != sa[1].ID {
		t.Errorf("A's run's children: %v", children)
	}

	// Costs: each user's own.
	_, body = get(keyA, "/api/v1/logs/costs")
	if body["rows"] != 4.0 || body["total_cost"] != 2.0 || body["prompt_tokens"] != 400.0 {
		t.Errorf("A's costs: %v", body)
	}
	_, body = get(keyB, "/api/v1/logs/costs?since=2025-06-01T00:00:00Z&until=2025-06-02T00:00:00%2B02:00")
	if body["rows"] != 2.0 || body["total_cost"] != 1.0 || len(body["by_workflow"].([]any)) != 1 {
		t.Errorf("B's costs: %v", body)
	}

	// One row, usage, review: A yes, B 404 exactly as for nothing at all.
	code, body = get(keyA, "/api/v1/logs/"+sa[1].ID)
	if code != 200 || body["id"] != sa[1].ID || body["model"] != "m-wf-a" || !strings.Contains(fmt.Sprint(body["messages"]), "secret of wf-a") {
		t.Errorf("A's row: %d %v", code, body)
	}
	code, body = get(keyA, "/api/v1/logs/usage/run-a")
	if code != 200 || body["total_tokens"] != 240.0 || body["workflow_id"] != "wf-a" || len(body["steps"].([]any)) != 2 {
		t.Errorf("A's usage: %d %v", code, body)
	}
	_, nothing := get(keyB, "/api/v1/logs/"+userid.New().String())
	for _, p := range []string{"/api/v1/logs/" + pa.ID, "/api/v1/logs/" + sa[0].ID, "/api/v1/logs/usage/run-a", "/api/v1/logs/usage/nothing"} {
		code, body := get(keyB, p)
		if code != 404 || fmt.Sprint(body) != fmt.Sprint(nothing) {
			t.Errorf("B: GET %s = %d %v, want 404 %v", p, code, body, nothing)
		}
	}
	code, body = e.do(t, request{method: "POST", path: "/api/v1/logs/" + sa[0].ID + "/review", bearer: keyB,
		body: `{"needs_review": true, "feedback": "hijack"}`})
	if code != 404 || fmt.Sprint(body) != fmt.Sprint(nothing) {
		t.Errorf("B reviews A's row: %d %v", code, body)
	}
	if got, err := ls.Get(context.Background(), a.ID, sa[0].ID); err != nil || got.NeedsReview || got.Feedback != "" {
		t.Errorf("A's row after B's review: %+v %v", got, err)
	}
	code, body = e.do(t, request{method: "POST", path: "/api/v1/logs/" + sa[0].ID + "/review", bearer: keyA,
		body: `{"needs_review": true, "feedback": "too formal"}`})
	if code != 200 || body["needs_review"] != true || body["feedback"] != "too formal" {
		t.Errorf("A reviews: %d %v", code, body)
	}
	_, body = get(keyA, "/api/v1/logs?needs_review=true")
	if its := items(t, body); len(its) != 1 || its[0]["id"] != sa[0].ID {
		t.Errorf("A's review queue: %v", body)
	}
	_, body = get(keyB, "/api/v1/logs?needs_review=true")
	if its := items(t, body); len(its) != 0 {
		t.Errorf("B's review queue: %v", body)
	}
}

// TestLogsRoutesAre404ForOthers sweeps every log route with a path
// parameter: another user's id, a random one and a malformed one are all 404;
// and no log route answers without credentials.
func TestLogsRoutesAre404ForOthers(t *testing.T) {
	e, ls := newLogsEnv(t, auth.Config{Mode: "apikey"})
	a, _ := e.newUser(t, "alice@example.com", false)
	_, keyB := e.newUser(t, "bob@example.com", false)
	pa, _ := logRun(t, ls, a.ID, "wf-a", "run-a", time.Now())
	swept := 0
	for _, pattern := range e.api.Routes() {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok || !strings.HasPrefix(path, "/api/v1/logs") {
			continue
		}
		if code, _ := e.do(t, request{method: method, path: strings.NewReplacer("{id}", pa.ID, "{instance_id}", "run-a").Replace(path), body: "{}"}); code != 401 {
			t.Errorf("%s %s without a key: %d, want 401", method, path, code)
		}
		if !strings.Contains(path, "{") {
			continue
		}
		for _, id := range []string{pa.ID, "run-a", userid.New().String(), "not-a-uuid"} {
			p := strings.NewReplacer("{id}", id, "{instance_id}", id).Replace(path)
			for _, body := range []string{"{}", `{"needs_review": false}`, "not json"} {
				if code, got := e.do(t, request{method: method, path: p, bearer: keyB, body: body}); code != 404 {
					t.Errorf("B: %s %s %s = %d %v, want 404", method, p, body, code, got)
				}
			}
		}
		swept++
	}
	if swept != 3 {
		t.Errorf("swept %d log routes with a path parameter, want 3", swept)
	}
}

// TestLogsPagingHTTP walks 120 rows in pages through the API.
func TestLogsPagingHTTP(t *testing.T) {
	e, ls := newLogsEnv(t, auth.Config{Mode: "apikey"})
	a, keyA := e.newUser(t, "alice@example.com", false)
	b, _ := e.newUser(t, "bob@example.com", false)
	start := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for i := range 120 {
		at := start.Add(time.Duration(i/3) * time.Millisecond) // 3 rows per start time
		if _, err := ls.Insert(context.Background(), a.ID, logs.Entry{LogType: logs.TypeTool, StartTime: at}); err != nil {
			t.Fatal(err)
		}
		if _, err := ls.Insert(context.Background(), b.ID, logs.Entry{LogType: logs.TypeTool, StartTime: at}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	path, pages := "/api/v1/logs?limit=25&log_type=tool", 0
	for {
		code, body := e.do(t, request{method: "GET", path: path, bearer: keyA})
		if code != 200 {
			t.Fatalf("GET %s: %d %v", path, code, body)
		}
		pages++
		for _, it := range items(t, body) {
			id := it["id"].(string)
			if seen[id] || it["user_id"] != a.ID.String() {
				t.Fatalf("row %v twice or not A's", it)
			}
			seen[id] = true
		}
		next := body["next_cursor"].(string)
		if next == "" {
			break
		}
		path = "/api/v1/logs?limit=25&log_type=tool&cursor=" + url.QueryEscape(next)
	}
	if len(seen) != 120 || pages != 5 {
		t.Errorf("%d rows in %d pages, want 120 in 5", len(seen), pages)
	}
	if code, body := e.do(t, request{method: "GET", path: "/api/v1/logs", bearer: keyA}); code != 200 || len(items(t, body)) != logs.DefaultLimit {
		t.Errorf("default page: %d, %d items", code, len(items(t, body)))
	}
}

func TestLogsBadParams(t *testing.T) {
	e, ls := newLogsEnv(t, auth.Config{Mode: "apikey"})
	a, keyA := e.newUser(t, "alice@example.com", false)
	_, steps := logRun(t, ls, a.ID, "wf-a", "run-a", time.Now())
	review := "/api/v1/logs/" + steps[0].ID + "/review"
	cases := []struct {
		method, path, body, field string
	}{
		{"GET", "/api/v1/logs?log_type=workflow_agent", "", "log_type"},
		{"GET", "/api/v1/logs?needs_review=maybe", "", "needs_review"},
		{"GET", "/api/v1/logs?since=yesterday", "", "since"},
		{"GET", "/api/v1/logs?until=2025-13-01T00:00:00Z", "", "until"},
		{"GET", "/api/v1/logs?since=2025-06-02T00:00:00Z&until=2025-06-01T00:00:00Z", "", "until"},
		{"GET", "/api/v1/logs?limit=0", "", "limit"},
		{"GET", "/api/v1/logs?limit=501", "", "limit"},
		{"GET", "/api/v1/logs?limit=ten", "", "limit"},
		{"GET", "/api/v1/logs?cursor=garbage", "", "cursor"},
		{"GET", "/api/v1/logs?cursor=" + url.QueryEscape(strings.Repeat("A", 40)), "", "cursor"},
		{"GET", "/api/v1/logs?typo=1", "", "typo"},
		{"GET", "/api/v1/logs?limit=1&limit=2", "", "limit"},
		{"GET", "/api/v1/logs/grouped?limit=-1", "", "limit"},
		{"GET", "/api/v1/logs/grouped?cursor=%21", "", "cursor"},
		{"GET", "/api/v1/logs/costs?since=2025-06-01", "", "since"},
		{"GET", "/api/v1/logs/costs?limit=5", "", "limit"},
		{"POST", review, `{"feedback": "no verdict"}`, "needs_review"},
		{"POST", review, `{"needs_review": true, "feedback": "` + strings.Repeat("é", logs.MaxFeedbackLen+1) + `"}`, "feedback"},
	}
	for _, c := range cases {
		code, body := e.do(t, request{method: c.method, path: c.path, body: c.body, bearer: keyA})
		errObj, _ := body["error"].(map[string]any)
		if code != 400 || errObj["field"] != c.field || !strings.Contains(fmt.Sprint(errObj["message"]), c.field) {
			t.Errorf("%s %.80s: %d %v, want 400 naming %s", c.method, c.path, code, body, c.field)
		}
	}
	for _, body := range []string{`{"needs_review": "yes"}`, `{"needs_review": true, "extra": 1}`, `not json`} {
		if code, got := e.do(t, request{method: "POST", path: review, body: body, bearer: keyA}); code != 400 {
			t.Errorf("review body %s: %d %v, want 400", body, code, got)
		}
	}
	if got, _ := ls.Get(context.Background(), a.ID, steps[0].ID); got.NeedsReview || got.Feedback != "" {
		t.Errorf("refused reviews changed the row: %+v", got)
	}
	// The limits themselves are fine.
	long := strings.Repeat("é", logs.MaxFeedbackLen)
	if code, body := e.do(t, request{method: "POST", path: review, body: `{"needs_review": false, "feedback": "` + long + `"}`, bearer: keyA}); code != 200 || body["feedback"] != long {
		t.Errorf("feedback of %d characters: %d", logs.MaxFeedbackLen, code)
	}
	for _, p := range []string{"/api/v1/logs?limit=500&needs_review=0&since=2025-06-01T00:00:00.5%2B02:00", "/api/v1/logs/grouped?limit=1&log_type=workflow",
		"/api/v1/logs/costs?since=2025-06-01T00:00:00Z"} {
		if code, body := e.do(t, request{method: "GET", path: p, bearer: keyA}); code != 200 {
			t.Errorf("GET %s: %d %v", p, code, body)
		}
	}
	// Bad parameters are refused before anything is looked up.
	_, keyB := e.newUser(t, "bob@example.com", false)
	if code, _ := e.do(t, request{method: "GET", path: "/api/v1/logs?log_type=nope", bearer: keyB}); code != http.StatusBadRequest {
		t.Errorf("B with a bad log_type: %d", code)
	}
}
