package workflow

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
)

// LogWriter is the part of the agent log (logs.Store) the runner writes.
type LogWriter interface {
	// Insert adds e for user and returns it with its id.
	Insert(ctx context.Context, user userid.ID, e logs.Entry) (logs.Entry, error)
	// Update replaces the user's entry e.ID with e.
	Update(ctx context.Context, user userid.ID, e logs.Entry) error
}

// SettingsSource reads a user's settings (settings.Store): the LLM endpoint
// and model, and the timezone.
type SettingsSource interface {
	Get(ctx context.Context, user userid.ID) (settings.Settings, error)
}

// Runner defaults.
const (
	DefaultLease        = 30 * time.Second
	DefaultPollInterval = time.Second
	DefaultStepTimeout  = 5 * time.Minute
	DefaultWorkers      = 4
	DefaultMaxAttempts  = 10
)

// RunnerConfig configures a Runner; Store, LLM, Tools, Logs and Settings are
// required.
type RunnerConfig struct {
	Store    *Store
	LLM      llm.Client
	Tools    tools.Caller
	Logs     LogWriter
	Settings SettingsSource

	// Workers bounds the instances run at once by this runner (default 4).
	Workers int
	// Owner identifies this runner in claims; unique per replica and
	// process (default: host name, pid and a random suffix).
	Owner string
	// Lease is how long a claim lasts without renewal (default 30s); the
	// runner renews it every Lease/3 while it runs the instance. A crashed
	// runner's instances are resumed by another runner after it.
	// Cancel requests are noticed within PollInterval (or Lease/3 if shorter).
	Lease time.Duration
	// PollInterval is how often the runner looks for claimable instances
	// when not kicked (default 1s).
	PollInterval time.Duration
	// Grace is how long runs under way may go on after Run's context ends
	// (shutdown) before they are interrupted; 0 interrupts at once.
	Grace time.Duration
	// StepTimeout is the deadline of one step, and of the LLM gate (default 5m).
	StepTimeout time.Duration
	// MaxAttempts bounds the claims of one instance: a run interrupted more
	// often (a crash loop) is failed (default 10).
	MaxAttempts int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer gets the runner's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Now is the clock of <<CURRENT_DATE>> and the log rows (default time.Now).
	Now func() time.Time
}

// Runner claims queued instances from the Store and runs them with a bounded
// pool of workers, durably: each step's status and output is saved as it
// ends; a run interrupted by a crash or a shutdown keeps its claim until the
// lease ends (a shutdown ends it at once), after which any runner resumes it
// at its first unfinished step. Completed steps never run again.
//
// It is the mox queue design: a 1-slot kick channel (Kick, called when an
// instance is created and when a worker frees up) and a poll timer wake the
// loop, which claims while a worker is free.
type Runner struct {
	cfg  RunnerConfig
	log  *slog.Logger
	kick chan struct{}
	m    runnerMetrics

	mu      sync.Mutex
	running map[string]bool // ids of the instances this runner is running now
}

type runnerMetrics struct {
	runs        *prometheus.CounterVec
	runDuration prometheus.Histogram
	steps       *prometheus.CounterVec
	queueDepth  prometheus.GaugeFunc
}

// NewRunner checks cfg, fills in defaults and registers the metrics.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("workflow: runner needs a Store")
	case cfg.LLM == nil:
		return nil, errors.New("workflow: runner needs an LLM client")
	case cfg.Tools == nil:
		return nil, errors.New("workflow: runner needs a tool caller")
	case cfg.Logs == nil:
		return nil, errors.New("workflow: runner needs a log writer")
	case cfg.Settings == nil:
		return nil, errors.New("workflow: runner needs a settings source")
	case cfg.Workers < 0, cfg.Lease < 0, cfg.PollInterval < 0, cfg.StepTimeout < 0, cfg.MaxAttempts < 0:
		return nil, errors.New("workflow: negative runner setting")
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = DefaultStepTimeout
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Owner == "" {
		cfg.Owner = defaultOwner()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Runner{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1), running: map[string]bool{}}
	r.m = runnerMetrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inboxd_workflow_runs_total",
			Help: "Workflow runs ended, by status: completed, stopped, failed, cancelled, skipped.",
		}, []string{"status"}),
		runDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "inboxd_workflow_run_duration_seconds",
			Help:    "Time from a workflow run's first start to its end.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800},
		}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inboxd_step_runs_total",
			Help: "Workflow steps ended, by kind (llm, agent, tool, stop_checker) and status (completed, failed, cancelled).",
		}, []string{"kind", "status"}),
		queueDepth: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "inboxd_worker_pool_queue_depth",
			Help:        "Work waiting for a worker, by pool.",
			ConstLabels: prometheus.Labels{"pool": "workflow"},
		}, r.queueDepth),
	}
	for _, s := range []string{StatusCompleted, StatusStopped, StatusFailed, StatusCancelled, StatusSkipped} {
		r.m.runs.WithLabelValues(s)
	}
	for _, k := range []string{KindLLM, KindAgent, KindTool, KindStopChecker} {
		for _, s := range []string{StepCompleted, StepFailed, StepCancelled} {
			r.m.steps.WithLabelValues(k, s)
		}
	}
	if cfg.Registerer != nil {
		cs := []prometheus.Collector{r.m.runs, r.m.runDuration, r.m.steps, r.m.queueDepth}
		for i, c := range cs {
			if err := cfg.Registerer.Register(c); err != nil {
				for _, done := range cs[:i] {
					cfg.Registerer.Unregister(done)
				}
				return nil, fmt.Errorf("workflow: register metrics: %w", err)
			}
		}
	}
	return r, nil
}

func defaultOwner() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b[:])
}

// queueDepth is the gauge's value: queued instances of all users, read at
// scrape time with a short deadline (-1 when the database does not answer).
func (r *Runner) queueDepth() float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := r.cfg.Store.QueueDepth(ctx)
	if err != nil {
		return -1
	}
	return float64(n)
}

// Owner is the id this runner claims instances with.
func (r *Runner) Owner() string { return r.cfg.Owner }

// Kick wakes the runner to claim at once (an instance was created); it
// never blocks.
func (r *Runner) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run claims and runs instances until ctx ends, then waits for its workers.
// Ending ctx interrupts running steps (LLM and tool calls see the
// cancellation); their instances stay running and claimed, with the lease
// ended, so they resume on the next start or on another replica. Run
// returns nil after ctx ended.
//
// With Config.Grace set, ending ctx first stops claiming and lets the runs
// under way go on for up to Grace (each finished step is saved as it ends),
// then interrupts what is left.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	// Runs live under their own context, so that they can outlast ctx by
	// the grace period.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if r.cfg.Grace > 0 {
			drained := make(chan struct{})
			go func() { wg.Wait(); close(drained) }()
			select {
			case <-drained:
			case <-time.After(r.cfg.Grace):
				r.log.Info("workflow: grace period over; interrupting the runs under way")
			}
		}
		stopWork()
		wg.Wait()
	}()
	slots := make(chan struct{}, r.cfg.Workers)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		case <-timer.C:
		}
		r.claimWhileFree(ctx, workCtx, slots, &wg)
		timer.Reset(r.cfg.PollInterval)
	}
}

// claimWhileFree claims instances while a worker slot is free and starts a
// worker for each.
func (r *Runner) claimWhileFree(ctx, workCtx context.Context, slots chan struct{}, wg *sync.WaitGroup) {
	for ctx.Err() == nil {
		select {
		case slots <- struct{}{}:
		default:
			return // all busy: a worker that ends kicks the loop
		}
		inst, steps, err := r.cfg.Store.Claim(ctx, r.cfg.Owner, r.cfg.Lease)
		if err != nil || inst == nil {
			<-slots
			if err != nil && ctx.Err() == nil {
				r.log.Error("workflow: claim failed", "error", err)
			}
			return
		}
		if !r.startRunning(inst.ID) {
			// The claim on a run under way here ran out while it could not
			// be renewed (the database was away), and this runner claimed
			// the run again: a second execution under the same owner would
			// repeat its steps unnoticed. The claim renewed the lease; the
			// run's own heartbeat keeps it.
			r.log.Info("workflow: claimed a run already under way here; it goes on once", "instance_id", inst.ID)
			<-slots
			return // claim more at the next kick or tick
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				r.stopRunning(inst.ID)
				<-slots
				r.Kick()
			}()
			r.execute(workCtx, inst, steps)
		}()
	}
}

// startRunning records that this runner runs instance id; false if it
// already does.
func (r *Runner) startRunning(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running[id] {
		return false
	}
	r.running[id] = true
	return true
}

func (r *Runner) stopRunning(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.running, id)
}

// Causes of the end of a run's context other than the runner's shutdown.
var (
	errCancelRequested = errors.New("workflow: cancel requested")
	errStepTimeout     = errors.New("workflow: step deadline exceeded")
)

// writeCtx is the context of the store writes that record what happened: they
// complete even when ctx was just cancelled (a finished step must not be lost
// and re-run), within a bound.
func writeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
}

// execute runs one claimed instance to its end or until it is interrupted.
func (r *Runner) execute(ctx context.Context, inst *Instance, steps []Step) {
	log := r.log.With("user_id", inst.UserID.String(), "instance_id", inst.ID, "workflow_id", inst.WorkflowID)
	runCtx, cancel := context.WithCancelCause(ctx)
	var hb sync.WaitGroup
	defer func() {
		cancel(nil)
		hb.Wait()
	}()
	hb.Add(1)
	go func() {
		defer hb.Done()
		r.heartbeat(runCtx, cancel, inst, log)
	}()

	rn := &run{r: r, inst: inst, steps: steps, log: log, user: inst.UserID}
	defer func() {
		if p := recover(); p != nil {
			log.Error("workflow: run panicked", "panic", p, "stack", string(debug.Stack()))
			rn.finish(ctx, StatusFailed, fmt.Sprintf("internal error: %v", p))
		}
	}()
	log.Debug("workflow: run claimed", "attempt", inst.Attempts)
	rn.do(runCtx, ctx)
}

// heartbeat renews the claim every Lease/3 and, in between, looks for a
// cancel request every PollInterval (a read); it cancels the run when a
// cancel was requested or the claim was lost.
func (r *Runner) heartbeat(ctx context.Context, cancel context.CancelCauseFunc, inst *Instance, log *slog.Logger) {
	renewEvery := max(r.cfg.Lease/3, time.Millisecond)
	t := time.NewTicker(min(renewEvery, r.cfg.PollInterval))
	defer t.Stop()
	lastRenew := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var (
			cancelRequested bool
			err             error
		)
		if time.Since(lastRenew) >= renewEvery {
			cancelRequested, err = r.cfg.Store.Renew(ctx, inst.UserID, inst.ID, r.cfg.Owner, r.cfg.Lease)
			if err == nil {
				lastRenew = time.Now()
			}
		} else {
			cancelRequested, err = r.cfg.Store.CancelRequested(ctx, inst.UserID, inst.ID, r.cfg.Owner)
		}
		switch {
		case errors.Is(err, ErrLostClaim):
			log.Warn("workflow: claim lost, stopping the run")
			cancel(ErrLostClaim)
			return
		case err != nil:
			if ctx.Err() == nil {
				log.Warn("workflow: renew claim", "error", err)
			}
		case cancelRequested:
			cancel(errCancelRequested)
			return
		}
	}
}
