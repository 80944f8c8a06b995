package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

type backend struct {
	name string
	url  func(tb testing.TB) string
}

// backends returns the two SQL backends; each url call is a fresh database.
func backends() []backend {
	return []backend{
		{"sqlite", func(tb testing.TB) string { return "sqlite://" + tb.TempDir() + "/inboxd.db" }},
		{"postgres", testsvc.Postgres},
	}
}

// forEachBackend runs f on a fresh, migrated database of each backend.
func forEachBackend(t *testing.T, f func(t *testing.T, url string, db *sqldb.DB)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			url := b.url(t)
			f(t, url, openDB(t, url))
		})
	}
}

// openDB opens and migrates the database at url; each call is a separate
// pool, as a separate process would have.
func openDB(t testing.TB, url string) *sqldb.DB {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return db
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func newUser(t testing.TB, db *sqldb.DB) userid.ID {
	t.Helper()
	u, err := users.NewStore(db).Create(context.Background(), users.NewUser{
		Email: "user-" + NewID() + "@example.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	return u.ID
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeLLM scripts chat completions: each call takes the next scripted
// reply, then falls back to fallback (or fails). It records the requests.
type fakeLLM struct {
	mu       sync.Mutex
	script   []func(ctx context.Context, req llm.Request) (llm.Response, error)
	fallback func(ctx context.Context, req llm.Request) (llm.Response, error)
	requests []llm.Request
}

func (f *fakeLLM) Chat(ctx context.Context, req llm.Request) (llm.Response, error) {
	f.mu.Lock()
	req.Messages = append([]llm.Message(nil), req.Messages...)
	f.requests = append(f.requests, req)
	var next func(context.Context, llm.Request) (llm.Response, error)
	if len(f.script) > 0 {
		next, f.script = f.script[0], f.script[1:]
	} else {
		next = f.fallback
	}
	f.mu.Unlock()
	if next == nil {
		return llm.Response{}, errors.New("fakeLLM: no scripted reply left")
	}
	return next(ctx, req)
}

func (f *fakeLLM) Requests() []llm.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]llm.Request(nil), f.requests...)
}

func answer(content string, u llm.Usage) func(context.Context, llm.Request) (llm.Response, error) {
	return func(context.Context, llm.Request) (llm.Response, error) {
		return llm.Response{Message: llm.Message{Role: llm.RoleAssistant, Content: content}, Usage: u, FinishReason: "stop"}, nil
	}
}

func askTools(u llm.Usage, calls ...llm.ToolCall) func(context.Context, llm.Request) (llm.Response, error) {
	return func(context.Context, llm.Request) (llm.Response, error) {
		return llm.Response{Message: llm.Message{Role: llm.RoleAssistant, ToolCalls: calls}, Usage: u, FinishReason: "tool_calls"}, nil
	}
}

func usage(p, c int) llm.Usage {
	return llm.Usage{PromptTokens: p, CompletionTokens: c, TotalTokens: p + c}
}

// fakeLogs is an in-memory agent log.
type fakeLogs struct {
	mu      sync.Mutex
	seq     int
	entries map[string]logs.Entry
	order   []string
}

func newFakeLogs() *fakeLogs { return &fakeLogs{entries: map[string]logs.Entry{}} }

func (f *fakeLogs) Insert(_ context.Context, user userid.ID, e logs.Entry) (logs.Entry, error) {
	if err := user.Check(); err != nil {
		return logs.Entry{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	e.ID = "log-" + strconv.Itoa(f.seq)
	e.UserID = user
	f.entries[e.ID] = e
	f.order = append(f.order, e.ID)
	return e, nil
}

func (f *fakeLogs) Update(_ context.Context, user userid.ID, e logs.Entry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, ok := f.entries[e.ID]
	if !ok || old.UserID != user {
		return fmt.Errorf("fakeLogs: no entry %s of %s", e.ID, user)
	}
	e.UserID = user
	f.entries[e.ID] = e
	return nil
}

// byInstance returns the entries of an instance in insertion order.
func (f *fakeLogs) byInstance(id string) []logs.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []logs.Entry
	for _, lid := range f.order {
		if e := f.entries[lid]; e.WorkflowInstanceID == id {
			out = append(out, e)
		}
	}
	return out
}

// fakeSettings answers every user with the same LLM settings unless set.
type fakeSettings struct {
	mu  sync.Mutex
	def settings.Settings
	per map[userid.ID]settings.Settings
}

func newFakeSettings() *fakeSettings {
	return &fakeSettings{def: settings.Settings{LLMModel: "test-model", LLMAPIKey: "sk-test", Timezone: "UTC"}, per: map[userid.ID]settings.Settings{}}
}

func (f *fakeSettings) Get(_ context.Context, user userid.ID) (settings.Settings, error) {
	if err := user.Check(); err != nil {
		return settings.Settings{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.per[user]; ok {
		return s, nil
	}
	return f.def, nil
}

func (f *fakeSettings) set(user userid.ID, s settings.Settings) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.per[user] = s
}

// textResult is a tool result holding a JSON string.
func textResult(s string) tools.Result {
	b, _ := json.Marshal(s)
	return tools.Result{Content: b}
}

// harness is a store, fakes and a way to run runners over one database.
type harness struct {
	t        *testing.T
	db       *sqldb.DB
	store    *Store
	llm      *fakeLLM
	tools    *tools.Static
	logs     *fakeLogs
	settings *fakeSettings
}

func newHarness(t *testing.T, db *sqldb.DB) *harness {
	return &harness{t: t, db: db, store: NewStore(db), llm: &fakeLLM{}, tools: tools.NewStatic(), logs: newFakeLogs(), settings: newFakeSettings()}
}

// runner builds a Runner over h's fakes (and h's store unless the config
// names another), with fast test timings.
func (h *harness) runner(mod func(*RunnerConfig)) *Runner {
	h.t.Helper()
	cfg := RunnerConfig{
		Store: h.store, LLM: h.llm, Tools: h.tools, Logs: h.logs, Settings: h.settings,
		Workers: 2, Lease: 2 * time.Second, PollInterval: 20 * time.Millisecond, StepTimeout: 5 * time.Second,
		Logger: quietLogger(),
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := NewRunner(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

// start runs r until the returned stop is called (or the test ends).
func start(t testing.TB, r *Runner) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Errorf("runner did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func finished(status string) bool {
	switch status {
	case StatusQueued, StatusRunning:
		return false
	}
	return true
}

// waitStatus polls the instance until cond holds.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) waitFinished(user userid.ID, id string) Instance {
	h.t.Helper()
	var inst Instance
	waitFor(h.t, 20*time.Second, "instance "+id+" to finish", func() bool {
		inst = must[Instance](h.t)(h.store.GetInstance(context.Background(), user, id))
		return finished(inst.Status)
	})
	return inst
}

func (h *harness) create(user userid.ID, w Workflow) Workflow {
	h.t.Helper()
	return must[Workflow](h.t)(h.store.CreateWorkflow(context.Background(), user, w))
}

func (h *harness) enqueue(user userid.ID, workflowID string, in TriggerInput) Instance {
	h.t.Helper()
	inst, _, err := h.store.CreateInstance(context.Background(), user, workflowID, in, "")
	if err != nil {
		h.t.Fatal(err)
	}
	return inst
}

func stepStatuses(inst Instance) []string {
	out := make([]string, len(inst.Steps))
	for i, s := range inst.Steps {
		out[i] = s.Status
	}
	return out
}
