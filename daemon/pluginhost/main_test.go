package pluginhost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/sdk"
)

// testPluginBin is the test plugin, built once per test binary by TestMain.
var testPluginBin string

func TestMain(m *testing.M) {
	// Re-executed as a built-in plugin: `<test binary> plugin serve echo`.
	if len(os.Args) == 4 && os.Args[1] == "plugin" && os.Args[2] == "serve" {
		sdk.Serve(builtinEcho(os.Args[3]))
		return
	}
	dir, err := os.MkdirTemp("", "pluginhost-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testPluginBin = filepath.Join(dir, "testplugin")
	build := exec.Command("go", "build", "-o", testPluginBin, "./testdata/testplugin")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the test plugin:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// builtinEcho is the tiny built-in plugin the tests serve from the test
// binary itself.
func builtinEcho(name string) sdk.Plugin {
	return sdk.Plugin{Name: name, Version: "builtin", Tools: []sdk.Tool{{
		Name: "echo", Description: "echoes its arguments",
		Handler: func(ctx context.Context, call sdk.Call) (sdk.Result, error) {
			u, _ := sdk.UserFrom(ctx)
			return sdk.JSON(map[string]any{"args": call.Arguments, "user": u.UserID})
		},
	}}}
}

var (
	alice = userid.MustParse("aaaaaaaa-0000-4000-8000-000000000001")
	bob   = userid.MustParse("bbbbbbbb-0000-4000-8000-000000000002")
)

// fakeKV is an in-memory kv.Store with what the host services use.
type fakeKV struct {
	kv.Store // nil: other methods are not used
	mu       sync.Mutex
	m        map[string]string
}

func newFakeKV() *fakeKV { return &fakeKV{m: map[string]string{}} }

func (f *fakeKV) Get(_ context.Context, key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.m[key]
	if !ok {
		return "", kv.ErrNotFound
	}
	return v, nil
}

func (f *fakeKV) Set(_ context.Context, key, value string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[key] = value
	return nil
}

func (f *fakeKV) Delete(_ context.Context, keys ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		delete(f.m, k)
	}
	return nil
}

func (f *fakeKV) snapshot() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for k, v := range f.m {
		out[k] = v
	}
	return out
}

type fakeSettings map[userid.ID]settings.Settings

func (f fakeSettings) Get(_ context.Context, u userid.ID) (settings.Settings, error) {
	return f[u], nil
}

// syncBuffer collects log output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	h    *Host
	kv   *fakeKV
	logs *syncBuffer
	reg  *prometheus.Registry
}

// startHost starts a host over a plugin directory holding the test plugin
// under each of names, plus the built-ins.
func startHost(t testing.TB, names []string, builtins []string, tune func(*Config)) *env {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		if err := os.Symlink(testPluginBin, filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{kv: newFakeKV(), logs: &syncBuffer{}, reg: prometheus.NewRegistry()}
	cfg := Config{
		Dir: dir, BuiltIn: builtins, Registerer: e.reg,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Services: HostServices{
			KV: e.kv,
			Settings: fakeSettings{
				alice: {IMAPServer: "imap.example", IMAPUsername: "alice", IMAPPassword: "alice-secret"},
				bob:   {IMAPServer: "imap.example", IMAPUsername: "bob", IMAPPassword: "bob-secret"},
			},
		},
	}
	if tune != nil {
		tune(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	e.h = h
	return e
}

// call runs a tool and decodes its JSON content into a map.
func (e *env) call(t testing.TB, user userid.ID, tool string, args any) (map[string]any, tools.Result, error) {
	t.Helper()
	b, _ := json.Marshal(args)
	res, err := e.h.Call(context.Background(), tools.Call{User: user, WorkflowID: "wf-1", InstanceID: "inst-" + user.String()[:4], StepID: "step-1", Tool: tool, Arguments: b})
	if err != nil {
		return nil, res, err
	}
	var m map[string]any
	_ = json.Unmarshal(res.Content, &m)
	return m, res, nil
}

func mustCall(t testing.TB, e *env, user userid.ID, tool string, args any) map[string]any {
	t.Helper()
	m, res, err := e.call(t, user, tool, args)
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	if res.IsError {
		t.Fatalf("%s: tool error %s", tool, res.Content)
	}
	return m
}

func (e *env) managed(name string) *managed {
	e.h.mu.RLock()
	defer e.h.mu.RUnlock()
	return e.h.plugins[name]
}

// waitRunning waits until the plugin runs a process other than old.
func waitRunning(t *testing.T, m *managed, old *proc) *proc {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if p, st := m.current(); st == StateRunning && p != nil && p != old {
			return p
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("plugin %s did not come back: %+v", m.src.name, m.info())
	return nil
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func newTestLogger(w *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
