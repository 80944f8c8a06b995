package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/internal/faultproxy"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// Fault injection between the runner and PostgreSQL (issue #8): the
// database goes away while runs are under way.

// TestRetryWrite: a write of a run's state is retried while the database is
// unreachable, and only then.
func TestRetryWrite(t *testing.T) {
	refused := fmt.Errorf("workflow: finish step 1 of x: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	always := func(err error) func(int) error { return func(int) error { return err } }
	first := func(errs ...error) func(int) error {
		return func(call int) error {
			if call < len(errs) {
				return errs[call]
			}
			return nil
		}
	}
	cases := []struct {
		name     string
		answer   func(call int) error // the write's answer to its call-th attempt (from 0)
		shutdown bool                 // the runner's context has ended
		bound    time.Duration        // the write's bound (default 10s)
		want     error
		calls    int // exactly; 0: at least 2
	}{
		{name: "succeeds at once", answer: first(), calls: 1},
		{name: "database back after two refusals", answer: first(refused, refused), calls: 3},
		{name: "a lost claim is final", answer: first(ErrLostClaim), want: ErrLostClaim, calls: 1},
		{name: "an earlier attempt committed", answer: first(refused, errStepState), calls: 2},
		{name: "a step in the wrong state at once is final", answer: first(errStepState), want: errStepState, calls: 1},
		{name: "a shutdown ends the retries", answer: always(refused), shutdown: true, want: refused, calls: 1},
		{name: "the write's bound ends the retries", answer: always(refused), bound: 500 * time.Millisecond, want: refused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent, stop := context.WithCancel(context.Background())
			defer stop()
			if tc.shutdown {
				stop()
			}
			bound := tc.bound
			if bound == 0 {
				bound = 10 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			calls := 0
			err := retryWrite(ctx, parent, func() error {
				calls++
				return tc.answer(calls - 1)
			})
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			if (tc.calls > 0 && calls != tc.calls) || (tc.calls == 0 && calls < 2) {
				t.Errorf("%d attempts, want %d (0: at least 2)", calls, tc.calls)
			}
		})
	}
}

// TestRunnerDatabaseOutage: PostgreSQL goes away (every connection cut,
// new ones refused: what clients see of a restart) while runs are under
// way, during a step, for less or more than the runs' lease. Every run
// resumes and completes, none is lost, and no step runs twice.
func TestRunnerDatabaseOutage(t *testing.T) {
	cases := []struct {
		name          string
		lease, outage time.Duration
		workers       int // more than the runs: a free worker may claim as soon as the database is back
	}{
		{"shorter than the lease", 5 * time.Second, time.Second, 2},
		{"longer than the lease", 500 * time.Millisecond, 2 * time.Second, 2},
		{"longer than the lease, free workers", 500 * time.Millisecond, 2 * time.Second, 8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pg, err := url.Parse(testsvc.Postgres(t))
			if err != nil {
				t.Fatal(err)
			}
			px := faultproxy.New(t, pg.Host)
			pg.Host = px.Addr()
			db := openDB(t, pg.String())
			h := newHarness(t, db)
			user := newUser(t, db)
			args := func(prev string) json.RawMessage {
				return json.RawMessage(`{"prev":"<<step_output.` + prev + `>>"}`)
			}
			w := h.create(user, Workflow{Name: "three tools", Steps: []Step{
				{Name: "one", Kind: KindTool, Tool: "t-step", Arguments: json.RawMessage(`{}`)},
				{Name: "two", Kind: KindTool, Tool: "t-step", Arguments: args("one")},
				{Name: "three", Kind: KindTool, Tool: "t-step", Arguments: args("two")},
			}})

			var (
				mu       sync.Mutex
				calls    = map[string]int{} // instance/step -> tool calls
				outage   sync.Once
				restored = make(chan struct{})
			)
			h.tools.Add(tools.Spec{Name: "t-step"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
				mu.Lock()
				calls[c.InstanceID+"/"+c.StepID]++
				mu.Unlock()
				if c.StepID == w.Steps[1].ID {
					outage.Do(func() {
						px.Refuse(true)
						t.Logf("database outage of %v: %d connections cut", tc.outage, px.Cut())
						time.AfterFunc(tc.outage, func() {
							px.Refuse(false)
							close(restored)
						})
						time.Sleep(200 * time.Millisecond) // the step ends while the database is away
					})
				}
				return textResult("done"), nil
			})

			const runs = 4
			ids := make([]string, runs)
			for i := range ids {
				ids[i] = h.enqueue(user, w.ID, TriggerInput{Markdown: fmt.Sprintf("run %d", i)}).ID
			}
			start(t, h.runner(func(c *RunnerConfig) {
				c.Lease, c.Workers = tc.lease, tc.workers
				c.Logger = slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
			}))
			select {
			case <-restored:
			case <-time.After(30 * time.Second):
				t.Fatal("the runs never reached the outage")
			}
			for _, id := range ids {
				if inst := h.waitFinished(user, id); inst.Status != StatusCompleted {
					t.Errorf("run %s: %s %q %v", id, inst.Status, inst.Error, stepStatuses(inst))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(calls) != runs*len(w.Steps) {
				t.Errorf("%d distinct steps ran, want %d", len(calls), runs*len(w.Steps))
			}
			for key, n := range calls {
				if n != 1 {
					t.Errorf("step %s ran %d times", key, n)
				}
			}
			t.Logf("proxy: %+v", px.Stats())
		})
	}
}

// TestRunnerReclaimOwnRun: the claim on a run under way ran out while its
// runner could not renew it (as in a database outage longer than the
// lease), and the same runner claims the run again as soon as it can. The
// run goes on once: its step is not started a second time.
func TestRunnerReclaimOwnRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, _ string, db *sqldb.DB) {
		h := newHarness(t, db)
		user := newUser(t, db)
		var mu sync.Mutex
		calls := map[string]int{}
		entered, release := make(chan struct{}, 4), make(chan struct{})
		h.tools.Add(tools.Spec{Name: "t-hold"}, func(ctx context.Context, c tools.Call) (tools.Result, error) {
			mu.Lock()
			calls[c.StepID]++
			mu.Unlock()
			entered <- struct{}{}
			select {
			case <-release:
				return textResult("held"), nil
			case <-ctx.Done():
				return tools.Result{}, ctx.Err()
			}
		})
		h.tools.Add(tools.Spec{Name: "t-next"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
			mu.Lock()
			calls[c.StepID]++
			mu.Unlock()
			return textResult("next"), nil
		})
		w := h.create(user, Workflow{Name: "held", Steps: []Step{
			{Name: "hold", Kind: KindTool, Tool: "t-hold", Arguments: json.RawMessage(`{}`)},
			{Name: "next", Kind: KindTool, Tool: "t-next", Arguments: json.RawMessage(`{}`)},
		}})
		inst := h.enqueue(user, w.ID, TriggerInput{Markdown: "x"})
		// A long lease: the run's heartbeat renews it only every 3 s, while
		// the free workers look for claimable runs every 20 ms.
		start(t, h.runner(func(c *RunnerConfig) { c.Lease, c.Workers = 9*time.Second, 4 }))
		<-entered
		if _, err := db.ExecContext(context.Background(), db.Rebind("UPDATE workflow_instances SET claim_expires_at = ? WHERE id = ?"),
			time.Now().UTC().Add(-time.Second), inst.ID); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the run to be claimed again", func() bool {
			return must[Instance](t)(h.store.GetInstance(context.Background(), user, inst.ID)).Attempts == 2
		})
		close(release)
		if done := h.waitFinished(user, inst.ID); done.Status != StatusCompleted {
			t.Fatalf("run: %s %q", done.Status, done.Error)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, s := range w.Steps {
			if calls[s.ID] != 1 {
				t.Errorf("step %s ran %d times, want 1", s.Name, calls[s.ID])
			}
		}
	})
}

// testLog writes a logger's records to the test's log.
type testLog struct{ t testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
