package pluginhost

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// circuitEnv is a host running the test plugin as "crashy" (the one made
// to crash) and "test" (a healthy neighbour), with fast restarts, and the
// HTTP API on it, as the daemon serves it.
type circuitEnv struct {
	*env
	m    *managed // crashy
	flag string   // crashy-crash_while crashes while this file exists
	api  *httptest.Server
	mets *metrics.Metrics
}

func startCircuitEnv(t *testing.T, tune func(*Config)) *circuitEnv {
	t.Helper()
	mets := metrics.New("test")
	e := startHost(t, []string{"crashy", "test"}, nil, func(c *Config) {
		c.Registerer = mets.Registry
		c.MinBackoff, c.MaxBackoff = 20*time.Millisecond, 100*time.Millisecond
		tune(c)
	})
	ce := &circuitEnv{env: e, m: e.managed("crashy"), flag: filepath.Join(t.TempDir(), "crash"), mets: mets}
	ce.setFlag(t, true)

	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	store := kv.NewSQL(db)
	us := users.NewStore(db)
	logger := slog.New(slog.DiscardHandler)
	a, err := auth.New(auth.Config{Mode: auth.ModeNone}, us, box, logger)
	if err != nil {
		t.Fatal(err)
	}
	ce.api = httptest.NewServer(api.New(api.Deps{
		Auth: a, Users: us, Settings: settings.NewStore(store, box), KV: store, Tools: e.h,
		Workflows: workflow.NewStore(db), // the tool routes come with the workflow routes
		Metrics:   mets, Logger: logger,
		Ready: []api.Check{{Name: "sql", Ping: db.Ping}, {Name: "kv", Ping: store.Ping}},
	}))
	t.Cleanup(ce.api.Close)
	return ce
}

func (ce *circuitEnv) setFlag(t *testing.T, on bool) {
	t.Helper()
	if !on {
		if err := os.Remove(ce.flag); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.WriteFile(ce.flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// crashWhile calls crashy-crash_while (a crash while the flag exists).
func (ce *circuitEnv) crashWhile(t *testing.T) (tools.Result, error) {
	t.Helper()
	_, res, err := ce.call(t, alice, "crashy-crash_while", map[string]string{"file": ce.flag})
	return res, err
}

// crashUntilOpen crashes the running plugin threshold times, a call each,
// waiting for each restart: every call fails as a crash, and the circuit
// stays closed until the last one opens it.
func (ce *circuitEnv) crashUntilOpen(t *testing.T, threshold int) {
	t.Helper()
	var prev *proc
	for i := 1; i <= threshold; i++ {
		prev = waitRunning(t, ce.m, prev)
		if info := ce.m.info(); info.Circuit != CircuitClosed {
			t.Fatalf("circuit %s after %d crashes, threshold %d", info.Circuit, i-1, threshold)
		}
		_, err := ce.crashWhile(t)
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrCircuitOpen) || !strings.Contains(err.Error(), `plugin "crashy" crashed or went away during the call`) {
			t.Fatalf("call %d: %v, want the crash during the call", i, err)
		}
	}
	// Not closed: open, or already half-open after a short cool-down (both
	// last until a call is answered).
	waitUntil(t, "the circuit to open", func() bool { return ce.m.info().Circuit != CircuitClosed })
}

func (ce *circuitEnv) circuitGauge() float64 {
	return testutil.ToFloat64(ce.h.metrics.circuitOpen.WithLabelValues("crashy"))
}

// get answers the status and body of a GET on the API.
func (ce *circuitEnv) get(t *testing.T, path string) (int, string) {
	t.Helper()
	return ce.do(t, http.MethodGet, path, "")
}

func (ce *circuitEnv) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, ce.api.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestCircuitOpensOnRepeatedCrashes: a plugin whose tool crashes the process
// on every call is restarted after each crash until DefaultCircuitThreshold
// crashes in a row open its circuit. From then on its calls fail at once
// with a clear error naming the end of the cool-down, it is not restarted
// (no process, the restart count stops growing), the gauge says so, and the
// daemon is unaffected: /healthz and /readyz answer 200, the other plugin
// and the API keep serving.
func TestCircuitOpensOnRepeatedCrashes(t *testing.T) {
	ce := startCircuitEnv(t, func(c *Config) { c.CircuitCooldown = 10 * time.Minute })
	const n = DefaultCircuitThreshold
	opening := time.Now()
	ce.crashUntilOpen(t, n)

	info := ce.m.info()
	if info.Circuit != CircuitOpen || info.Restarts != n || info.CircuitOpenUntil.Before(opening.Add(10*time.Minute)) ||
		info.CircuitOpenUntil.After(time.Now().Add(10*time.Minute)) {
		t.Fatalf("info %+v", info)
	}
	if g := ce.circuitGauge(); g != 1 {
		t.Errorf("inboxd_plugin_circuit_open = %v, want 1", g)
	}
	refusedBefore := testutil.ToFloat64(ce.h.metrics.calls.WithLabelValues("crashy", "echo", resultUnavailable))

	wantMsg := `pluginhost: plugin "crashy" is failing: circuit open until ` + info.CircuitOpenUntil.UTC().Format(time.RFC3339) +
		" (5 crashes in a row; last: "
	for i := range 20 {
		tool, args := "crashy-echo", any(map[string]string{"text": "hi"})
		if i%2 == 0 {
			tool, args = "crashy-crash_while", map[string]string{"file": ce.flag}
		}
		_, _, err := ce.call(t, alice, tool, args)
		if !errors.Is(err, ErrCircuitOpen) || !errors.Is(err, ErrUnavailable) || !strings.HasPrefix(err.Error(), wantMsg) {
			t.Fatalf("call %d (%s) while open: %v\nwant an error starting %q", i, tool, err, wantMsg)
		}
	}
	if p, st := ce.m.current(); p != nil || st != StateCircuitOpen {
		t.Errorf("a process runs while the circuit is open: %v %s", p, st)
	}
	if i := ce.m.info(); i.Restarts != n || i.State != StateCircuitOpen {
		t.Errorf("after the refused calls: %+v", i)
	}
	if got := testutil.ToFloat64(ce.h.metrics.restarts.WithLabelValues("crashy")); got != n {
		t.Errorf("inboxd_plugin_restarts_total{crashy} = %v, want %d", got, n)
	}
	if got := testutil.ToFloat64(ce.h.metrics.calls.WithLabelValues("crashy", "echo", resultUnavailable)) - refusedBefore; got != 10 {
		t.Errorf("refused echo calls counted %v, want 10", got)
	}

	// The neighbour and the daemon.
	if m := mustCall(t, ce.env, bob, "test-echo", map[string]string{"text": "still here"}); m["text"] != "still here" {
		t.Errorf("other plugin: %v", m)
	}
	for _, tc := range []struct {
		method, path, body string
		code               int
		contains           string
	}{
		{http.MethodGet, "/healthz", "", http.StatusOK, `"ok"`},
		{http.MethodGet, "/readyz", "", http.StatusOK, `"ready":true`},
		{http.MethodGet, "/api/v1/me", "", http.StatusOK, `"id"`},
		{http.MethodPost, "/api/v1/tools/test/echo", `{"text":"via http"}`, http.StatusOK, `"text":"via http"`},
		{http.MethodPost, "/api/v1/tools/crashy/echo", `{"text":"x"}`, http.StatusBadGateway, `"tool_failed"`},
		{http.MethodGet, "/metrics", "", http.StatusOK, `inboxd_plugin_circuit_open{plugin="crashy"} 1`},
		{http.MethodGet, "/metrics", "", http.StatusOK, `inboxd_plugin_circuit_open{plugin="test"} 0`},
	} {
		code, body := ce.do(t, tc.method, tc.path, tc.body)
		if code != tc.code || !strings.Contains(body, tc.contains) {
			t.Errorf("%s %s: %d %s\nwant %d containing %s", tc.method, tc.path, code, body, tc.code, tc.contains)
		}
	}
	var listed []Info
	for _, i := range ce.h.Plugins() {
		if i.Name == "crashy" {
			listed = append(listed, i)
		}
	}
	if b, _ := json.Marshal(listed); len(listed) != 1 || !strings.Contains(string(b), `"state":"circuit_open","tools":`) ||
		!strings.Contains(string(b), `"circuit":"open","circuit_open_until":"`) {
		t.Errorf("Plugins: %s", b)
	}
}

// TestCircuitProbe: after the cool-down the plugin is started again and
// one call at a time goes through as a probe (the others fail fast). A
// probe that does not end in a crash or an answer (cancelled) leaves it
// half-open; a probe that crashes opens the circuit again with twice the
// cool-down; once the cause of the crashes is gone, the probe's answer
// closes the circuit and the plugin serves as before.
func TestCircuitProbe(t *testing.T) {
	const threshold, cooldown = 3, 300 * time.Millisecond
	ce := startCircuitEnv(t, func(c *Config) {
		c.CircuitThreshold, c.CircuitCooldown, c.CircuitMaxCooldown = threshold, cooldown, time.Hour
	})
	ce.crashUntilOpen(t, threshold)
	halfOpen := func() bool { i := ce.m.info(); return i.Circuit == CircuitHalfOpen && i.State == StateRunning }
	probing := func() bool { ce.m.mu.RLock(); defer ce.m.mu.RUnlock(); return ce.m.cb.probing }

	// A probe in flight: the other calls fail fast; cancelled, it proves
	// nothing and the circuit stays half-open.
	waitUntil(t, "the circuit to be half-open", halfOpen)
	ctx, cancel := context.WithCancel(context.Background())
	blocked := make(chan error, 1)
	go func() {
		_, err := ce.h.Call(ctx, tools.Call{User: alice, Tool: "crashy-block", Arguments: json.RawMessage(`{}`)})
		blocked <- err
	}()
	waitUntil(t, "the probe call to be in flight", probing)
	if _, _, err := ce.call(t, alice, "crashy-echo", nil); !errors.Is(err, ErrCircuitOpen) ||
		err.Error() != `pluginhost: plugin "crashy" is failing: circuit half-open, probing it with one call` {
		t.Fatalf("call during the probe: %v", err)
	}
	cancel()
	if err := <-blocked; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled probe: %v", err)
	}
	if probing() || !halfOpen() {
		t.Fatalf("after a cancelled probe: probing %v, %+v", probing(), ce.m.info())
	}

	// A probe that crashes: open again, for twice as long.
	if _, err := ce.crashWhile(t); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("crashing probe: %v", err)
	}
	reopened := func() bool { // the cool-down of the current opening: doubled
		ce.m.mu.RLock()
		defer ce.m.mu.RUnlock()
		return ce.m.cb.cooldown == 2*cooldown
	}
	waitUntil(t, "the circuit to open again, for twice as long", reopened)
	if i := ce.m.info(); ce.circuitGauge() != 1 || i.Restarts != threshold+1 || i.Circuit == CircuitClosed {
		t.Errorf("reopened: gauge %v, %+v", ce.circuitGauge(), i)
	}

	// The cause is gone: the next probe is answered and closes it.
	ce.setFlag(t, false)
	waitUntil(t, "the circuit to be half-open again", halfOpen)
	if res, err := ce.crashWhile(t); err != nil || string(res.Content) != `"alive"` {
		t.Fatalf("probe: %s %v", res.Content, err)
	}
	info := ce.m.info()
	if info.Circuit != CircuitClosed || info.State != StateRunning || !info.CircuitOpenUntil.IsZero() || ce.circuitGauge() != 0 {
		t.Errorf("after the answered probe: %+v, gauge %v", info, ce.circuitGauge())
	}
	ce.m.mu.RLock()
	cb := ce.m.cb
	ce.m.mu.RUnlock()
	if cb.inARow != 0 || len(cb.crashes) != 0 || cb.cooldown != 0 || cb.halfOpen || ce.m.cbSet.Load() {
		t.Errorf("the circuit was not reset: %+v", cb)
	}
	for range 3 { // concurrent calls go through again
		mustCall(t, ce.env, alice, "crashy-echo", map[string]string{"text": "back"})
	}
	if code, body := ce.do(t, http.MethodPost, "/api/v1/tools/crashy/echo", `{"text":"back"}`); code != http.StatusOK {
		t.Errorf("API call after closing: %d %s", code, body)
	}
}

// TestCircuitCountsCrashesInARow: crashes count towards the threshold only
// while no call is answered between them (a result, or an error of the
// tool's handler: the process served it) and only within the window; and
// a negative threshold turns the breaker off.
func TestCircuitCountsCrashesInARow(t *testing.T) {
	const threshold = 3
	for _, tc := range []struct {
		name   string
		tune   func(*Config)
		answer string // a tool called after each crash
	}{
		{"a call answered between crashes", func(*Config) {}, "crashy-echo"},
		{"a handler error between crashes", func(*Config) {}, "crashy-fail"},
		{"crashes further apart than the window", func(c *Config) { c.CircuitWindow = time.Nanosecond }, ""},
		{"breaker off", func(c *Config) { c.CircuitThreshold = -1 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := startCircuitEnv(t, func(c *Config) {
				c.CircuitThreshold, c.CircuitCooldown = threshold, 10*time.Minute
				tc.tune(c)
			})
			var prev *proc
			for i := 1; i <= 2*threshold; i++ {
				prev = waitRunning(t, ce.m, prev)
				if tc.answer != "" && i > 1 {
					if _, _, err := ce.call(t, alice, tc.answer, nil); errors.Is(err, ErrUnavailable) {
						t.Fatalf("%s: %v", tc.answer, err)
					}
				}
				if _, err := ce.crashWhile(t); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrCircuitOpen) {
					t.Fatalf("crash %d: %v", i, err)
				}
			}
			waitRunning(t, ce.m, prev) // restarted, not shut off
			if info := ce.m.info(); info.Circuit != CircuitClosed || info.Restarts != 2*threshold || ce.circuitGauge() != 0 {
				t.Errorf("after %d crashes: %+v, gauge %v", 2*threshold, info, ce.circuitGauge())
			}
		})
	}
}
