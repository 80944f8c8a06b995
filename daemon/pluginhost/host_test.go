package pluginhost

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// TestHost runs the ordinary behaviour against one host: discovery, tools,
// user context, host services and their scoping, and the forging attempts.
func TestHost(t *testing.T) {
	vecs, withVectors := vectorServices(t, alice, bob)
	e := startHost(t, []string{"test", "withcreds", "rogue"}, []string{"echo"}, withVectors)

	t.Run("plugins and tools", func(t *testing.T) {
		infos := e.h.Plugins()
		var names []string
		for _, i := range infos {
			names = append(names, i.Name)
			if i.State != StateRunning {
				t.Errorf("%s: state %s (%s)", i.Name, i.State, i.Error)
			}
		}
		if got := len(names); got != 4 || names[0] != "echo" || names[3] != "withcreds" {
			t.Fatalf("plugins %v", names)
		}
		if infos[0].Source != "builtin" || infos[0].Version != "builtin" || infos[2].Version != "1.2.3" {
			t.Errorf("infos %+v", infos)
		}
		specs, err := e.h.Tools(context.Background(), alice)
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]tools.Spec{}
		for _, s := range specs {
			byName[s.Name] = s
		}
		for _, want := range []string{"echo-echo", "test-echo", "test-kv_roundtrip", "withcreds-host_settings", "rogue-forge"} {
			if _, ok := byName[want]; !ok {
				t.Errorf("tool %s missing from %d tools", want, len(specs))
			}
		}
		if s := byName["test-echo"]; s.Description != "echoes text with the caller" || !json.Valid(s.InputSchema) {
			t.Errorf("test-echo spec %+v", s)
		}
		if string(byName["echo-echo"].InputSchema) != `{"type":"object"}` {
			t.Errorf("default schema %s", byName["echo-echo"].InputSchema)
		}
		if _, err := e.h.Tools(context.Background(), userid.ID{}); !errors.Is(err, userid.ErrZero) {
			t.Errorf("zero user: %v", err)
		}
	})

	t.Run("user context for two users concurrently", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 80)
		for i := range 40 {
			for _, u := range []userid.ID{alice, bob} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tool := "test-echo"
					if i%4 == 0 {
						tool = "echo-echo"
					}
					m, _, err := e.call(t, u, tool, map[string]any{"text": u.String()})
					if err != nil {
						errs <- err
						return
					}
					if tool == "echo-echo" {
						if m["user"] != u.String() {
							errs <- errors.New("builtin saw user " + m["user"].(string))
						}
						return
					}
					got := m["user"].(map[string]any)
					if got["UserID"] != u.String() || got["WorkflowID"] != "wf-1" || got["StepID"] != "step-1" ||
						got["InstanceID"] != "inst-"+u.String()[:4] || m["text"] != u.String() {
						errs <- errors.New("wrong context: " + mustJSON(m))
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := testutil.ToFloat64(e.h.metrics.calls.WithLabelValues("test", "echo", resultOK)); n != 60 {
			t.Errorf("ok calls of test-echo: %v", n)
		}
	})

	t.Run("settings only with declared needs", func(t *testing.T) {
		m := mustCall(t, e, alice, "test-host_settings", nil)
		if m["IMAPUsername"] != "alice" || m["IMAPPassword"] != "" {
			t.Errorf("plugin without the need got %v", m)
		}
		m = mustCall(t, e, bob, "withcreds-host_settings", nil)
		if m["IMAPUsername"] != "bob" || m["IMAPPassword"] != "bob-secret" {
			t.Errorf("plugin with the need got %v", m)
		}
		if _, _, err := e.call(t, alice, "test-tone", nil); err == nil || !contains(err.Error(), "did not declare") {
			t.Errorf("tone without the need: %v", err)
		}
		e.kv.m[alice.Key("tone_of_voice_profile")] = `{"en":"brief"}`
		if m := mustCall(t, e, alice, "withcreds-tone", nil); m["en"] != "brief" {
			t.Errorf("tone: %v", m)
		}
	})

	t.Run("kv keys are the plugin's, per user", func(t *testing.T) {
		for _, u := range []userid.ID{alice, bob} {
			m := mustCall(t, e, u, "test-kv_roundtrip", map[string]string{"key": "note", "value": "of " + u.String()})
			if m["value"] != "of "+u.String() || m["found"] != true {
				t.Errorf("roundtrip: %v", m)
			}
		}
		if m := mustCall(t, e, bob, "withcreds-kv_get", map[string]string{"key": "note"}); m["found"] != false {
			t.Errorf("another plugin read test's key: %v", m)
		}
		got := e.kv.snapshot()
		delete(got, alice.Key("tone_of_voice_profile"))
		want := map[string]string{
			"user:" + alice.String() + ":plugin:test:note": "of " + alice.String(),
			"user:" + bob.String() + ":plugin:test:note":   "of " + bob.String(),
		}
		if mustJSON(got) != mustJSON(want) {
			t.Errorf("KV holds %v, want %v", got, want)
		}
		if _, _, err := e.call(t, alice, "test-kv_get", map[string]string{"key": "with space"}); err == nil || !contains(err.Error(), "printable") {
			t.Errorf("bad key: %v", err)
		}
	})

	t.Run("vector upsert is scoped to the calling user", func(t *testing.T) {
		type doc = map[string]any
		// One script: each step sees what the steps before it stored.
		steps := []struct {
			name      string
			user      userid.ID
			docs      []doc
			query     string
			wantCount int
			wantHits  []string // thread ids, best first
		}{
			{"alice stores a thread", alice,
				[]doc{{"ThreadID": "t-alice", "Text": "Invoice 4711 from ACME for the quarterly widgets", "Payload": doc{"subject": "Invoice 4711"}}},
				"ACME invoice", 1, []string{"t-alice"}},
			{"bob sees none of it", bob, nil, "ACME invoice", 0, nil},
			{"bob stores his own", bob,
				[]doc{{"ThreadID": "t-bob", "Text": "Minutes of the garden committee meeting"}},
				"ACME invoice", 1, []string{"t-bob"}},
			{"alice replaces hers", alice,
				[]doc{{"ThreadID": "t-alice", "Text": "Invoice 4711 from ACME, corrected", "Payload": doc{"subject": "Invoice 4711 (corrected)"}}},
				"ACME invoice", 1, []string{"t-alice"}},
			{"bob's thread of the same id is his own", bob,
				[]doc{{"ThreadID": "t-alice", "Text": "Bob's note on the garden committee budget", "Payload": doc{"subject": "bob's"}}},
				"garden committee", 2, []string{"t-bob", "t-alice"}},
			{"alice's is unchanged", alice, nil, "ACME invoice", 1, []string{"t-alice"}},
		}
		for _, st := range steps {
			m := mustCall(t, e, st.user, "test-vector_upsert", map[string]any{"Docs": st.docs, "Query": st.query})
			var got []string
			for _, h := range m["hits"].([]any) {
				got = append(got, h.(map[string]any)["ThreadID"].(string))
			}
			if m["count"] != float64(st.wantCount) || !slices.Equal(got, st.wantHits) {
				t.Errorf("%s: count %v, hits %v; want %d, %v", st.name, m["count"], got, st.wantCount, st.wantHits)
			}
			if st.name == "alice's is unchanged" {
				hit := m["hits"].([]any)[0].(map[string]any)
				if p := hit["Payload"].(map[string]any); p["subject"] != "Invoice 4711 (corrected)" || p["thread_id"] != "t-alice" {
					t.Errorf("alice's payload after bob's upsert: %v", p)
				}
			}
		}
		// The store agrees: each user's collection holds that user's points.
		if got := storedThreads(t, vecs, alice); !slices.Equal(got, []string{"t-alice"}) {
			t.Errorf("alice's collection: %v", got)
		}
		if got := storedThreads(t, vecs, bob); !slices.Equal(got, []string{"t-alice", "t-bob"}) {
			t.Errorf("bob's collection: %v", got)
		}
	})

	t.Run("vector upsert limits and bad documents are refused", func(t *testing.T) {
		type doc = map[string]any
		good := doc{"ThreadID": "good", "Text": "a fine document"}
		cases := []struct {
			name string
			args map[string]any
			want string
		}{
			{"too many documents", map[string]any{"Generate": doc{"N": 101, "TextBytes": 1}},
				"InvalidArgument desc = pluginhost: vector upsert: 101 documents in one request, at most 100: split the batch"},
			{"too many bytes", map[string]any{"Generate": doc{"N": 3, "TextBytes": 1 << 20}},
				"InvalidArgument desc = pluginhost: vector upsert: 3145761 bytes of thread ids, texts and payloads in one request, at most 2097152: split the batch"},
			{"larger than gRPC carries", map[string]any{"Generate": doc{"N": 5, "TextBytes": 1 << 20}},
				"sdk: host vector upsert: 5 documents too large for one call (at most 100 documents and 2097152 bytes: split the batch)"},
			{"blank text", map[string]any{"Docs": []doc{good, {"ThreadID": "x", "Text": " \n"}}},
				`InvalidArgument desc = pluginhost: vector upsert: document 2 (thread "x"): empty text`},
			{"no thread id", map[string]any{"Docs": []doc{{"Text": "hello"}}},
				`InvalidArgument desc = pluginhost: vector upsert: document 1 (thread ""): no thread id`},
			{"reserved payload field", map[string]any{"Docs": []doc{good, {"ThreadID": "x", "Text": "hi", "Payload": doc{"tenant_id": bob.String()}}}},
				`InvalidArgument desc = pluginhost: vector upsert: vectors: invalid argument: payload field "tenant_id" is reserved`},
			{"payload names another thread", map[string]any{"Docs": []doc{{"ThreadID": "x", "Text": "hi", "Payload": doc{"thread_id": "y"}}}},
				`InvalidArgument desc = pluginhost: vector upsert: vectors: invalid argument: payload thread_id y differs from the point id "x"`},
		}
		before := storedThreads(t, vecs, alice)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				_, res, err := e.call(t, alice, "test-vector_upsert", tc.args)
				if err == nil || !contains(err.Error(), tc.want) {
					t.Errorf("got %v (%s)\nwant an error containing %q", err, res.Content, tc.want)
				}
			})
		}
		// A refused request stores nothing, not even its valid documents.
		if got := storedThreads(t, vecs, alice); !slices.Equal(got, before) {
			t.Errorf("alice's collection after refused upserts: %v, before %v", got, before)
		}
	})

	t.Run("forging is refused", func(t *testing.T) {
		e.kv.m[alice.Key("plugin:rogue:secret")] = "alice's"
		e.kv.m[bob.Key("plugin:rogue:secret")] = "bob's"
		// A live token of another plugin for the same user, and a live
		// but expired token of this plugin for the victim.
		foreign, revoke1 := e.h.tokens.mint(alice, "", "test", time.Now().Add(time.Minute))
		defer revoke1()
		expired, revoke2 := e.h.tokens.mint(bob, "", "rogue", time.Now().Add(-time.Second))
		defer revoke2()
		m := mustCall(t, e, alice, "rogue-forge", map[string]string{"victim": bob.String(), "foreign_token": foreign, "expired_token": expired})
		want := map[string]any{
			"forged_user_kv":       "ok:alice's", // the token's user, not the forged one
			"forged_user_settings": "ok:alice|",  // and no password without the need
			"forged_user_upsert":   "ok:",        // into alice's collection (checked below)
			"undeclared_tone":      "refused:PermissionDenied",
		}
		for _, bad := range []string{"foreign_token", "expired_token", "no_token", "tampered_token", "two_tokens"} {
			want[bad] = "refused:PermissionDenied"
			want[bad+"_upsert"] = "refused:PermissionDenied"
		}
		if mustJSON(m) != mustJSON(want) {
			t.Errorf("forge got\n%v\nwant\n%v", m, want)
		}
		// The token of the call above, replayed in a later call (alive
		// until its deadline, but its call has returned).
		m = mustCall(t, e, bob, "rogue-replay", nil)
		if m["replayed_token"] != "refused:PermissionDenied" || m["replayed_token_upsert"] != "refused:PermissionDenied" {
			t.Errorf("replayed token: %v", m)
		}
		// Of the rogue's upserts only the one under its own token landed,
		// in its caller's collection; the victim's has none.
		rogue := func(u userid.ID) []string {
			ids := storedThreads(t, vecs, u)
			return slices.DeleteFunc(ids, func(id string) bool { return !strings.HasPrefix(id, "rogue-") })
		}
		if got := rogue(alice); !slices.Equal(got, []string{"rogue-forged_user"}) {
			t.Errorf("rogue points in the caller's collection: %v", got)
		}
		if got := rogue(bob); len(got) != 0 {
			t.Errorf("rogue points in the victim's collection: %v", got)
		}
		if logs := e.logs.String(); contains(logs, foreign) || contains(logs, expired) {
			t.Error("a token was logged")
		}
	})

	t.Run("errors", func(t *testing.T) {
		_, res, err := e.call(t, alice, "test-tool_error", nil)
		if err != nil || !res.IsError || string(res.Content) != `"no such message \"x\""` {
			t.Errorf("tool error: %v %+v", err, res)
		}
		if _, _, err := e.call(t, alice, "test-fail", nil); err == nil || !contains(err.Error(), "deliberate failure") {
			t.Errorf("handler error: %v", err)
		}
		if _, _, err := e.call(t, alice, "test-panic", nil); err == nil || !contains(err.Error(), "panicked") {
			t.Errorf("panic: %v", err)
		}
		if m := mustCall(t, e, alice, "test-echo", map[string]string{"text": "still alive"}); m["text"] != "still alive" {
			t.Errorf("after panic: %v", m)
		}
		for _, name := range []string{"nope-echo", "test-nope", "noname"} {
			if _, _, err := e.call(t, alice, name, nil); !errors.Is(err, tools.ErrUnknownTool) {
				t.Errorf("%s: %v", name, err)
			}
		}
		if _, err := e.h.Call(context.Background(), tools.Call{User: alice, Tool: "test-echo", Arguments: []byte(`[1]`)}); err == nil {
			t.Error("array arguments accepted")
		}
		if _, err := e.h.Call(context.Background(), tools.Call{Tool: "test-echo"}); !errors.Is(err, userid.ErrZero) {
			t.Errorf("zero user: %v", err)
		}
		if n := testutil.ToFloat64(e.h.metrics.calls.WithLabelValues("test", "tool_error", resultToolError)); n != 1 {
			t.Errorf("tool_error metric %v", n)
		}
		if n := testutil.ToFloat64(e.h.metrics.calls.WithLabelValues("test", "fail", resultError)); n != 1 {
			t.Errorf("error metric %v", n)
		}
	})

	t.Run("output goes to the log", func(t *testing.T) {
		mustCall(t, e, alice, "test-print", map[string]string{"text": "hello-log"})
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			logs := e.logs.String()
			if contains(logs, `"stdout: hello-log"`) && contains(logs, `stderr: hello-log`) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("plugin output not logged:\n%s", e.logs.String())
	})
}

// vectorServices returns the embedded vector store on a fresh SQLite
// database holding users, and a Config tweak that serves it with the
// built-in offline embedding model (lexical: a query sharing a document's
// words finds it) as every user's model.
func vectorServices(t testing.TB, users ...userid.ID) (vectors.Store, func(*Config)) {
	t.Helper()
	db := testsvc.SQLite(t)
	for _, u := range users {
		// Fixed ids (alice, bob), so not users.Store.Create: collections
		// reference the users table.
		if _, err := db.ExecContext(context.Background(), db.Rebind("INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)"),
			u.String(), u.String()+"@example.com", time.Now().UTC()); err != nil {
			t.Fatal(err)
		}
	}
	catalog, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	model := catalog.Offline()
	store := vectors.NewEmbedded(db, vectors.EmbeddedOptions{})
	return store, func(c *Config) {
		c.Services.Vectors = store
		c.Services.Embedder = func(context.Context, userid.ID) (embed.Embedder, error) {
			return embed.New(model, "", embed.Options{})
		}
	}
}

// storedThreads lists the thread ids in the user's collection, sorted,
// read from the store itself rather than through a plugin.
func storedThreads(t testing.TB, s vectors.Store, u userid.ID) []string {
	t.Helper()
	ctx := context.Background()
	_, dims, exists, err := s.Info(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if !exists {
		return nil
	}
	probe := make([]float32, dims) // any direction: the limit covers every point
	probe[0] = 1
	hits, err := s.SearchVector(ctx, u, probe, vectors.MaxLimit, nil, vectors.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 0, len(hits))
	for _, h := range hits {
		ids = append(ids, h.ID)
	}
	slices.Sort(ids)
	return ids
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestPluginSocketsLeaveWithTheHost: a plugin's gRPC socket lives in the
// host's own directory, and Close removes it with the sockets that killed
// plugins could not remove themselves; nothing is left in $TMPDIR.
func TestPluginSocketsLeaveWithTheHost(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, func(c *Config) { c.MinBackoff = 10 * time.Millisecond })
	dir := e.h.sockDir
	sockets := func() []string {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, de := range entries {
			if de.Type()&os.ModeSocket != 0 {
				names = append(names, de.Name())
			}
		}
		return names
	}
	if got := sockets(); len(got) != 1 {
		t.Fatalf("sockets in %s: %v, want the running plugin's", dir, got)
	}
	m := e.managed("test")
	p, _ := m.current()
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, m, p)
	if got := sockets(); len(got) != 2 {
		t.Fatalf("sockets in %s after a kill and a restart: %v, want the killed plugin's and the new one's", dir, got)
	}
	e.h.Close()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Close, %s: %v; want it removed", dir, err)
	}
}

// TestCrashRestart kills the plugin during a call: that call fails with a
// clear error, calls fail fast during the outage, and the restarted plugin
// serves the next call.
func TestCrashRestart(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, func(c *Config) { c.MinBackoff = 300 * time.Millisecond })
	m := e.managed("test")
	p, _ := m.current()

	inflight := make(chan error, 1)
	go func() {
		_, _, err := e.call(t, alice, "test-sleep", map[string]int{"ms": 20000})
		inflight <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-inflight:
		if !errors.Is(err, ErrUnavailable) || !contains(err.Error(), `plugin "test" crashed`) {
			t.Fatalf("in-flight call: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight call did not fail")
	}
	// During the outage: fail fast.
	start := time.Now()
	_, _, err := e.call(t, alice, "test-echo", nil)
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > time.Second {
		t.Fatalf("call during the outage: %v after %s", err, time.Since(start))
	}
	p2 := waitRunning(t, m, p)
	if p2.pid == p.pid {
		t.Fatal("same pid")
	}
	if m := mustCall(t, e, bob, "test-echo", map[string]string{"text": "back"}); m["text"] != "back" {
		t.Errorf("after restart: %v", m)
	}
	if n := testutil.ToFloat64(e.h.metrics.restarts.WithLabelValues("test")); n != 1 {
		t.Errorf("restarts metric %v", n)
	}
	if i := m.info(); i.Restarts != 1 || i.State != StateRunning {
		t.Errorf("info %+v", i)
	}

	// A plugin that exits by itself in a call.
	if _, _, err := e.call(t, alice, "test-crash", nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("crash tool: %v", err)
	}
	waitRunning(t, m, p2)
	mustCall(t, e, alice, "test-echo", nil)
	if n := testutil.ToFloat64(e.h.metrics.restarts.WithLabelValues("test")); n != 2 {
		t.Errorf("restarts metric %v", n)
	}
	if _, err := os.Stat(filepath.Join("/proc", itoa(p.pid))); err == nil {
		t.Errorf("killed process %d still present", p.pid)
	}
}

// TestDeadline: a call that outlives CallTimeout fails with the deadline.
func TestDeadline(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, func(c *Config) { c.CallTimeout = 300 * time.Millisecond })
	start := time.Now()
	_, _, err := e.call(t, alice, "test-sleep", map[string]int{"ms": 10000})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("got %v after %s", err, time.Since(start))
	}
	mustCall(t, e, alice, "test-echo", nil)
}

// TestCloseNoOrphans: after Close no plugin process is left, and calls fail.
func TestCloseNoOrphans(t *testing.T) {
	e := startHost(t, []string{"test", "withcreds"}, []string{"echo"}, nil)
	var pids []int
	for _, n := range []string{"test", "withcreds", "echo"} {
		p, _ := e.managed(n).current()
		pids = append(pids, p.pid)
	}
	// A call in flight while closing.
	done := make(chan error, 1)
	go func() {
		_, _, err := e.call(t, alice, "test-sleep", map[string]int{"ms": 20000})
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	e.h.Close()
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("Close took %s", d)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("plugin process %d remains after Close (kill 0: %v)", pid, err)
		}
	}
	if err := <-done; err == nil {
		t.Error("the in-flight call succeeded")
	}
	for _, i := range e.h.Plugins() {
		if i.State != StateStopped {
			t.Errorf("%s: %s", i.Name, i.State)
		}
	}
	if _, _, err := e.call(t, alice, "test-echo", nil); !errors.Is(err, ErrUnavailable) {
		t.Errorf("call after Close: %v", err)
	}
	e.h.Close() // idempotent
}

// TestDiscoveryFailures: files that are no plugins are skipped or reported,
// and do not stop the others.
func TestDiscoveryFailures(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, func(c *Config) {
		write := func(name, content string, mode os.FileMode) {
			if err := os.WriteFile(filepath.Join(c.Dir, name), []byte(content), mode); err != nil {
				t.Fatal(err)
			}
		}
		write("notaplugin", "#!/bin/sh\necho hello\n", 0o755)
		write("Bad-Name", "#!/bin/sh\n", 0o755)
		write("README", "not executable", 0o644)
		write(".hidden", "#!/bin/sh\n", 0o755)
		if err := os.Symlink(testPluginBin, filepath.Join(c.Dir, "impostor")); err != nil {
			t.Fatal(err)
		}
		c.MinBackoff = time.Hour // no retries during the test
	})
	infos := map[string]Info{}
	for _, i := range e.h.Plugins() {
		infos[i.Name] = i
	}
	if len(infos) != 3 {
		t.Fatalf("plugins %v", infos)
	}
	if infos["test"].State != StateRunning {
		t.Errorf("test: %+v", infos["test"])
	}
	if i := infos["notaplugin"]; i.State != StateFailed || i.Error == "" {
		t.Errorf("notaplugin: %+v", i)
	}
	// The test plugin names itself after its file, so "impostor" works; a
	// name mismatch is checked in describe.
	if _, err := describe("x", nil); err == nil {
		t.Error("describe accepted a nameless plugin")
	}
	if _, _, err := e.call(t, alice, "notaplugin-anything", nil); !errors.Is(err, ErrUnavailable) || !contains(err.Error(), "failed to start") {
		t.Errorf("call to a failed plugin: %v", err)
	}
}

func itoa(i int) string { return string(mustJSON(i)) }

// TestRescan: a plugin added to the directory starts, one removed stops
// (its process is gone and its tools are unknown), without a restart.
func TestRescan(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, nil)
	old, _ := e.managed("test").current()
	dir := e.h.cfg.Dir
	if err := os.Symlink(testPluginBin, filepath.Join(dir, "withcreds")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "test")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.h.Rescan(ctx, dir); err != nil {
		t.Fatal(err)
	}
	specs, err := e.h.Tools(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
	}
	if !slices.Contains(names, "withcreds-echo") || slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "test-") }) {
		t.Errorf("tools after the rescan: %v", names)
	}
	mustCall(t, e, alice, "withcreds-echo", nil)
	if _, _, err := e.call(t, alice, "test-echo", nil); err == nil {
		t.Error("a removed plugin's tool still answers")
	}
	if _, err := os.Stat(filepath.Join("/proc", itoa(old.pid))); err == nil {
		t.Errorf("the removed plugin's process %d is still there", old.pid)
	}
}

// TestBackoffResetsAfterAnsweredCalls: a plugin killed now and then, after
// serving calls, restarts after the minimum backoff every time; the backoff
// grows only for a plugin that crashes without answering (left to the
// circuit breaker). Without the reset, a plugin killed once a minute was
// down for longer each time (0.5 s, 1 s, ... 1 m: the soak's finding).
func TestBackoffResetsAfterAnsweredCalls(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, func(c *Config) {
		c.MinBackoff = 100 * time.Millisecond
		c.MaxBackoff = 10 * time.Second
	})
	m := e.managed("test")
	for i := range 4 {
		p, _ := m.current()
		if got := mustCall(t, e, alice, "test-echo", map[string]string{"text": "served"}); got["text"] != "served" {
			t.Fatalf("kill %d: call before: %v", i, got)
		}
		if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitRunning(t, m, p)
	}
	var waits []string
	for _, line := range strings.Split(e.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "plugin crashed; restarting" {
			w, _ := rec["retry_in"].(string)
			waits = append(waits, w)
		}
	}
	if len(waits) != 4 {
		t.Fatalf("%d restarts logged, want 4: %v", len(waits), waits)
	}
	for i, w := range waits {
		if w != "100ms" {
			t.Errorf("restart %d waited %s, want the minimum backoff (100ms) after a plugin that served calls", i+1, w)
		}
	}
}
