package pluginhost

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// TestWorkflowSurvivesPluginKill puts the crash pieces together as `inboxd
// serve` wires them (the Host is the runner's tool caller): a workflow's
// tool step calls a plugin tool that blocks, and the plugin is killed with
// SIGKILL during the call. The step and the run are recorded failed with an
// error naming the crash, the plugin is restarted (the restarts metric
// counts it), and the next run of the same workflow succeeds on the new
// process.
func TestWorkflowSurvivesPluginKill(t *testing.T) {
	e := startHost(t, []string{"test"}, nil, func(c *Config) { c.MinBackoff = 200 * time.Millisecond })
	db := testsvc.SQLite(t)
	ctx := context.Background()
	u, err := users.NewStore(db).Create(ctx, users.NewUser{Email: "killed-plugin@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	store := workflow.NewStore(db)
	runner, err := workflow.NewRunner(workflow.RunnerConfig{
		Store: store, LLM: llm.NewOpenAI(llm.Options{}), // a tool-only workflow never asks it
		Tools: e.h, Logs: logs.NewStore(db), Settings: fakeSettings{u.ID: {Timezone: "UTC"}},
		Workers: 1, PollInterval: 20 * time.Millisecond, StepTimeout: 30 * time.Second,
		Logger: newTestLogger(e.logs), Registerer: e.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	store.OnInstanceCreated(runner.Kick)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runner.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("runner: %v", err)
		}
	})

	// The step blocks unless the trigger text releases it.
	w, err := store.CreateWorkflow(ctx, u.ID, workflow.Workflow{Name: "kill me", Steps: []workflow.Step{{
		Name: "block", Kind: workflow.KindTool, Tool: "test-block",
		Arguments: json.RawMessage(`{"release": "<<trigger_output>>"}`),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	m := e.managed("test")
	old, _ := m.current()

	first := enqueue(t, store, u.ID, w.ID, "")
	waitUntil(t, "the tool call to be in flight", func() bool {
		return strings.Contains(e.logs.String(), "block: call of instance "+first+" in flight")
	})
	if err := syscall.Kill(old.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	inst := waitEnded(t, store, u.ID, first)
	const crash = `pluginhost: test-block: plugin "test" crashed or went away during the call`
	if inst.Status != workflow.StatusFailed || len(inst.Steps) != 1 {
		t.Fatalf("the run during the crash: %s with %d steps (%s)", inst.Status, len(inst.Steps), inst.Error)
	}
	step := inst.Steps[0]
	t.Logf("recorded step error: %s", step.Error)
	if step.Status != workflow.StepFailed || !strings.HasPrefix(step.Error, "tool test-block: "+crash) || !strings.HasSuffix(step.Error, "it will be restarted") {
		t.Errorf("the step during the crash: %s, error %q", step.Status, step.Error)
	}
	if !strings.HasPrefix(inst.Error, `step "block" failed: tool test-block: `+crash) {
		t.Errorf("the run's error: %q", inst.Error)
	}

	// Restarted: a new process, counted by inboxd_plugin_restarts_total.
	p := waitRunning(t, m, old)
	if p.pid == old.pid {
		t.Fatal("the plugin runs under the killed pid")
	}
	if n := testutil.ToFloat64(e.h.metrics.restarts.WithLabelValues("test")); n != 1 {
		t.Errorf("inboxd_plugin_restarts_total{plugin=\"test\"} = %v, want 1", n)
	}

	second := waitEnded(t, store, u.ID, enqueue(t, store, u.ID, w.ID, "go"))
	if second.Status != workflow.StatusCompleted || second.Steps[0].Output != "released: go" {
		t.Errorf("the run after the restart: %s, step %+v (%s)", second.Status, second.Steps[0], second.Error)
	}
}

func enqueue(t *testing.T, s *workflow.Store, user userid.ID, workflowID, trigger string) string {
	t.Helper()
	inst, _, err := s.CreateInstance(context.Background(), user, workflowID, workflow.TriggerInput{Markdown: trigger}, "")
	if err != nil {
		t.Fatal(err)
	}
	return inst.ID
}

// waitEnded waits until the instance is neither queued nor running.
func waitEnded(t *testing.T, s *workflow.Store, user userid.ID, id string) workflow.Instance {
	t.Helper()
	var inst workflow.Instance
	waitUntil(t, "instance "+id+" to end", func() bool {
		var err error
		if inst, err = s.GetInstance(context.Background(), user, id); err != nil {
			t.Fatal(err)
		}
		return inst.Status != workflow.StatusQueued && inst.Status != workflow.StatusRunning
	})
	return inst
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
