// Package jobs owns inboxd's background jobs: inbox initialisation (the
// user's recent threads embedded into the user's vector collection), label
// descriptions, the tone-of-voice profile, and the incremental vectorisation
// that a cron schedule runs for every initialised user.
//
// Jobs run on a bounded worker pool of their own (separate from polls and
// workflow runs). One job of a kind runs per user at a time, across replicas:
// a job holds the lease "lease:job:{kind}:{uuid}" in the KV (SET NX, renewed
// while it runs, released when it ends). Status, progress and results live
// in the user's own keys (user:{uuid}:inbox_status, inbox_progress,
// tone_of_voice_profile ...), so any replica can answer the API.
//
// Jobs are interruptible (Interrupt: the job stops between batches, status
// "interrupted") and resumable: a job left "running" by a process that died
// (its lease gone) is started again by Run's recovery sweep, and an inbox
// initialisation resumes by skipping the threads whose point is already in
// the collection (point ids derive from thread ids, so nothing is ever
// stored twice). A shutdown leaves running jobs "running" on purpose, for
// the next start to resume.
//
// Nothing here logs message content or secrets: log records carry the user
// id, the job and counts; errors stored for users come from the mail, embed,
// llm and vectors packages, which keep secrets and content out of them.
package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/vectors"
)

// Errors of Start and friends (wrapped with details; test with errors.Is).
var (
	// ErrRunning: a job of that kind already runs (or is queued) for the
	// user, on this replica or another.
	ErrRunning = errors.New("jobs: a job of this kind is already running for the user")
	// ErrNotConfigured: the user's settings lack what the job needs (IMAP
	// account, LLM model, an API key for the embedding model ...).
	ErrNotConfigured = errors.New("jobs: not configured")
	// ErrClosed: the Manager was closed.
	ErrClosed = errors.New("jobs: manager closed")
	// ErrStillStopping: Reinitialize could not stop the running
	// initialisation in time (it runs on another replica that has not
	// noticed the interrupt yet); retry.
	ErrStillStopping = errors.New("jobs: the running initialisation has not stopped yet")
)

// Causes a job's context is cancelled with.
var (
	errInterrupted = errors.New("jobs: interrupted")
	errShutdown    = errors.New("jobs: shutting down")
	errLeaseLost   = errors.New("jobs: lease lost")
)

// Settings is what jobs need of the settings store (*settings.Store).
type Settings interface {
	Get(ctx context.Context, id userid.ID) (settings.Settings, error)
	Update(ctx context.Context, id userid.ID, p settings.Patch) error
}

// Users lists the users, for the recovery sweep and the cron (*users.Store).
type Users interface {
	List(ctx context.Context) ([]users.User, error)
}

// Config configures a Manager. Zero values take the defaults in brackets.
type Config struct {
	Workers int // jobs running at once on this replica [2]
	KV      kv.Store
	// Settings gives each user's IMAP account, embedding model and key,
	// and LLM endpoint; the chosen embedding model is saved back into it.
	Settings Settings
	Vectors  vectors.Store
	Catalog  *embed.Catalog
	LLM      llm.Client
	// Users, when set, enables the recovery sweep and the cron (the CLI
	// runs single jobs without them).
	Users    Users
	MailDial mail.DialOptions
	// Embed tunes the embedding clients (HTTP client, retries).
	Embed embed.Options

	ThreadsPerFolder int           // threads taken from Sent and from All Mail / INBOX [300]
	Since            time.Duration // how far back threads are taken [6 months]
	// ScanPerFolder bounds the messages whose headers are read per folder
	// (the newest ones) to find those threads [10 x ThreadsPerFolder].
	ScanPerFolder int
	// MaxThreadMessages bounds the messages of one thread fetched and
	// embedded (the newest) [100].
	MaxThreadMessages int
	BatchSize         int // threads embedded and upserted together; progress and interrupts are checked between batches [10]

	// IncrementalCron is when incremental vectorisation runs: 5 fields,
	// 6 with seconds, or a descriptor such as "@every 1h" (UTC) ["0 */6 * * *"].
	IncrementalCron string
	// RecoverEvery is how often jobs left running by dead processes are
	// looked for (also once when Run starts) [30s].
	RecoverEvery time.Duration
	LeaseTTL     time.Duration // job lease expiry, renewed every third of it [60s]

	// ToneMinThreads is how many replied-to threads a language needs for a
	// profile [10]; ToneSamples how many diverse threads are sampled [12];
	// TonePairs how many (their message, user's reply) pairs the LLM sees [8].
	ToneMinThreads, ToneSamples, TonePairs int
	LabelMessages                          int // recent messages per label described [10]
	MaxLabels                              int // labels described per user [50]

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Owner names this replica in leases (required).
	Owner string

	// afterBatch, in tests, runs after each stored batch of an
	// initialisation with the progress so far.
	afterBatch func(ctx context.Context, user userid.ID, p Progress)
	now        func() time.Time
}

func (c *Config) defaults() {
	defInt := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	defDur := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	defInt(&c.Workers, 2)
	defInt(&c.ThreadsPerFolder, 300)
	defInt(&c.ScanPerFolder, 10*c.ThreadsPerFolder)
	defInt(&c.MaxThreadMessages, 100)
	defInt(&c.BatchSize, 10)
	defInt(&c.ToneMinThreads, 10)
	defInt(&c.ToneSamples, max(12, c.ToneMinThreads))
	defInt(&c.TonePairs, 8)
	defInt(&c.LabelMessages, 10)
	defInt(&c.MaxLabels, 50)
	defDur(&c.RecoverEvery, 30*time.Second)
	defDur(&c.LeaseTTL, 60*time.Second)
	if c.IncrementalCron == "" {
		c.IncrementalCron = "0 */6 * * *"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.now == nil {
		c.now = time.Now
	}
}

// since is the oldest date threads are taken from.
func (c *Config) since() time.Time {
	if c.Since > 0 {
		return c.now().Add(-c.Since)
	}
	return c.now().AddDate(0, -6, 0)
}

// Manager runs the jobs. Its methods are safe for concurrent use.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	sched cron.Schedule
	slots chan struct{} // the bounded pool: one token per running job

	base context.Context // parent of every job; cancelled by Close
	stop context.CancelCauseFunc
	wg   sync.WaitGroup

	mu     sync.Mutex
	closed bool
	jobs   map[jobKey]*job // queued or running on this replica
	last   map[jobKey]*job // the last finished job of each user and kind here, for Wait
}

type jobKey struct {
	user userid.ID
	kind Kind
}

// job is one queued or running job of this replica.
type job struct {
	key    jobKey
	lease  string // the lease value: this replica and run
	opts   startOptions
	cancel context.CancelCauseFunc
	done   chan struct{}
	err    error // set before done closes
}

type startOptions struct {
	resumed bool // started by the recovery sweep
}

// New builds a Manager. It starts nothing: Start queues jobs, Run adds the
// recovery sweep and the cron, Close stops everything.
func New(cfg Config) (*Manager, error) {
	cfg.defaults()
	switch {
	case cfg.Owner == "":
		return nil, errors.New("jobs: Config.Owner (the replica name) is required")
	case cfg.KV == nil || cfg.Settings == nil || cfg.Vectors == nil || cfg.Catalog == nil:
		return nil, errors.New("jobs: Config.KV, Settings, Vectors and Catalog are required")
	}
	sched, err := parseCron(cfg.IncrementalCron)
	if err != nil {
		return nil, fmt.Errorf("jobs: incremental cron: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("jobs: metrics: %w", err)
	}
	base, stop := context.WithCancelCause(context.Background())
	return &Manager{
		cfg: cfg, log: cfg.Logger, m: m, sched: sched,
		slots: make(chan struct{}, cfg.Workers),
		base:  base, stop: stop,
		jobs: map[jobKey]*job{}, last: map[jobKey]*job{},
	}, nil
}

// Close cancels every job of this replica (they stay "running" in the KV,
// to be resumed), waits for them to release their leases, and refuses
// further Starts. It is idempotent.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.stop(errShutdown)
	m.wg.Wait()
}

// Start queues a job of kind for user on this replica's pool. It fails with
// ErrRunning when one already runs (here or on another replica), and with
// ErrNotConfigured when the user's settings lack what the job needs.
// Start marks the job running at once; it ends on its own, by Interrupt,
// or by Close.
func (m *Manager) Start(ctx context.Context, user userid.ID, kind Kind) error {
	return m.start(ctx, user, kind, startOptions{}, nil)
}

// start takes the lease, runs prepare (under the lease, before the job is
// marked running), marks the job running and queues it.
func (m *Manager) start(ctx context.Context, user userid.ID, kind Kind, opts startOptions, prepare func(context.Context) error) error {
	if err := user.Check(); err != nil {
		return err
	}
	if !kind.valid() {
		return fmt.Errorf("jobs: unknown job %q", kind)
	}
	if err := m.precheck(ctx, user, kind); err != nil {
		return err
	}
	key := jobKey{user, kind}
	// The job's context exists from the start, so that Interrupt can
	// cancel a job that is still being set up.
	jctx, cancel := context.WithCancelCause(m.base)
	j := &job{key: key, lease: m.cfg.Owner + "/" + randomHex(), opts: opts, cancel: cancel, done: make(chan struct{})}
	m.mu.Lock()
	switch {
	case m.closed:
		m.mu.Unlock()
		cancel(ErrClosed)
		return ErrClosed
	case m.jobs[key] != nil:
		m.mu.Unlock()
		cancel(ErrRunning)
		return fmt.Errorf("%w (%s)", ErrRunning, kind)
	}
	m.jobs[key] = j
	m.mu.Unlock()
	forget := func(err error) error {
		cancel(err)
		m.mu.Lock()
		delete(m.jobs, key)
		m.mu.Unlock()
		j.err = err
		close(j.done) // a Wait that found the reservation returns
		return err
	}

	ok, err := m.cfg.KV.SetNX(ctx, leaseKey(kind, user), j.lease, m.cfg.LeaseTTL)
	if err != nil {
		return forget(fmt.Errorf("jobs: take lease: %w", err))
	}
	if !ok {
		return forget(fmt.Errorf("%w (%s)", ErrRunning, kind))
	}
	release := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := m.cfg.KV.CompareAndDelete(rctx, leaseKey(kind, user), j.lease); err != nil {
			m.log.Warn("jobs: release lease", "user_id", user, "job", kind, "error", err)
		}
	}
	if prepare != nil {
		if err := prepare(ctx); err != nil {
			release()
			return forget(err)
		}
	}
	if err := m.markRunning(ctx, user, kind, opts); err != nil {
		release()
		return forget(err)
	}

	m.mu.Lock()
	if m.closed { // Close ran meanwhile: it did not see this job
		m.mu.Unlock()
		release()
		return forget(ErrClosed)
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go m.execute(jctx, j)
	return nil
}

// markRunning sets the job's status to running and clears a stale
// interrupt and error. A resumed initialisation keeps its progress.
func (m *Manager) markRunning(ctx context.Context, user userid.ID, kind Kind, opts startOptions) error {
	k := keysOf(kind)
	del := []string{user.Key(k.interrupt)}
	if k.errKey != "" {
		del = append(del, user.Key(k.errKey))
	}
	if err := m.cfg.KV.Delete(ctx, del...); err != nil {
		return fmt.Errorf("jobs: mark running: %w", err)
	}
	if k.status == "" {
		return nil
	}
	pairs := map[string]string{user.Key(k.status): StatusRunning}
	if kind == Initialize && !opts.resumed {
		// Progress counts afresh; threads already stored count as done as
		// soon as the job lists them.
		pairs[user.Key(keyInboxProgress)] = `{"done":0,"total":0}`
	}
	if err := m.cfg.KV.SetMany(ctx, pairs); err != nil {
		return fmt.Errorf("jobs: mark running: %w", err)
	}
	return nil
}

// precheck refuses a job whose prerequisites the user's settings lack, so
// that the API can say so at once.
func (m *Manager) precheck(ctx context.Context, user userid.ID, kind Kind) error {
	st, err := m.cfg.Settings.Get(ctx, user)
	if err != nil {
		return fmt.Errorf("jobs: read settings: %w", err)
	}
	if kind != ToneOfVoice && !st.IMAPComplete() {
		return fmt.Errorf("%w: the IMAP account is not set up (imap_server, imap_username, imap_password)", ErrNotConfigured)
	}
	if (kind == ToneOfVoice || kind == LabelDescriptions) && st.LLMModel == "" {
		return fmt.Errorf("%w: llm_model is not set", ErrNotConfigured)
	}
	if m.cfg.LLM == nil && (kind == ToneOfVoice || kind == LabelDescriptions) {
		return fmt.Errorf("%w: no LLM client", ErrNotConfigured)
	}
	return nil
}

// execute waits for a worker, runs the job while renewing its lease, then
// records the outcome and releases the lease.
func (m *Manager) execute(ctx context.Context, j *job) {
	defer m.wg.Done()
	defer j.cancel(context.Canceled) // after finish read the cause
	user, kind := j.key.user, j.key.kind
	log := m.log.With("user_id", user, "job", kind)

	renewDone := make(chan struct{})
	renewStop := make(chan struct{})
	go func() {
		defer close(renewDone)
		m.renew(ctx, j, renewStop, log)
	}()

	var err error
	m.m.queued.Inc()
	select {
	case m.slots <- struct{}{}:
		m.m.queued.Dec()
		m.m.running.WithLabelValues(string(kind)).Inc()
		start := time.Now()
		log.Debug("jobs: start", "resumed", j.opts.resumed)
		err = m.runJob(ctx, j)
		m.m.running.WithLabelValues(string(kind)).Dec()
		<-m.slots
		log.Info("jobs: finished", "duration", time.Since(start).Round(time.Millisecond).String(), "error", err)
	case <-ctx.Done():
		m.m.queued.Dec()
		err = context.Cause(ctx)
	}
	close(renewStop)
	<-renewDone

	// Outcome first, then the lease: the recovery sweep never sees a
	// released lease over a stale "running".
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	result := m.finish(fctx, ctx, j, err)
	m.m.runs.WithLabelValues(string(kind), result).Inc()
	if _, rerr := m.cfg.KV.CompareAndDelete(fctx, leaseKey(kind, user), j.lease); rerr != nil {
		log.Warn("jobs: release lease", "error", rerr)
	}
	if result == ResultOK && kind == Initialize {
		m.followUp(fctx, user, log)
	}
	if result != ResultOK {
		j.err = err
		if j.err == nil {
			j.err = context.Cause(ctx)
		}
	}
	m.mu.Lock()
	delete(m.jobs, j.key)
	m.last[j.key] = j
	m.mu.Unlock()
	close(j.done)
}

// renew keeps the lease alive every LeaseTTL/3 until stop closes; a lease
// found taken (or unrenewable past its expiry) cancels the job.
func (m *Manager) renew(ctx context.Context, j *job, stop <-chan struct{}, log *slog.Logger) {
	every := m.cfg.LeaseTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, every)
		ok, err := m.cfg.KV.CompareAndSwap(rctx, leaseKey(j.key.kind, j.key.user), j.lease, j.lease, m.cfg.LeaseTTL)
		cancel()
		switch {
		case err != nil:
			log.Warn("jobs: renew lease", "error", err)
			if time.Since(lastOK) > m.cfg.LeaseTTL {
				j.cancel(errLeaseLost)
				return
			}
		case !ok:
			log.Warn("jobs: lease taken over: stopping")
			j.cancel(errLeaseLost)
			return
		default:
			lastOK = time.Now()
		}
	}
}

// runJob dispatches to the job's code. A panic fails the job (logged with
// its stack) instead of the daemon.
func (m *Manager) runJob(ctx context.Context, j *job) (err error) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("jobs: panic", "user_id", j.key.user, "job", j.key.kind, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("jobs: internal error in %s", j.key.kind)
		}
	}()
	user := j.key.user
	switch j.key.kind {
	case Initialize:
		return m.runInitialize(ctx, user)
	case Incremental:
		return m.runIncremental(ctx, user)
	case ToneOfVoice:
		return m.runTone(ctx, user)
	case LabelDescriptions:
		return m.runLabels(ctx, user)
	}
	return fmt.Errorf("jobs: unknown job %q", j.key.kind)
}

// finish records the outcome of a run in the KV (with ctx) and returns the
// result label. jobCtx is the job's context, for its cancellation cause.
func (m *Manager) finish(ctx, jobCtx context.Context, j *job, err error) string {
	user, kind := j.key.user, j.key.kind
	k := keysOf(kind)
	cause := context.Cause(jobCtx)
	result := ResultOK
	switch {
	case err == nil:
	case errors.Is(err, errInterrupted) || errors.Is(cause, errInterrupted):
		result = ResultInterrupted
	case errors.Is(cause, errShutdown):
		result = ResultCanceled
	case errors.Is(cause, errLeaseLost):
		result = ResultLeaseLost
	default:
		result = ResultFailed
	}
	set := map[string]string{}
	del := []string{user.Key(k.interrupt)}
	status := ""
	switch result {
	case ResultOK:
		status = StatusCompleted
	case ResultInterrupted:
		status = StatusInterrupted
	case ResultFailed:
		status = StatusFailed
		if k.errKey != "" {
			set[user.Key(k.errKey)] = errorMessage(err)
		}
		m.log.Warn("jobs: failed", "user_id", user, "job", kind, "error", err)
	default:
		// Canceled or lease lost: the status stays running, for the next
		// start (or the replica that took the lease) to resume.
		return result
	}
	if k.status != "" {
		set[user.Key(k.status)] = status
	}
	if len(set) > 0 {
		if werr := m.cfg.KV.SetMany(ctx, set); werr != nil {
			m.log.Error("jobs: record outcome", "user_id", user, "job", kind, "error", werr)
		}
	}
	if derr := m.cfg.KV.Delete(ctx, del...); derr != nil {
		m.log.Warn("jobs: clear interrupt", "user_id", user, "job", kind, "error", derr)
	}
	return result
}

// errorMessage is the last_error users see: the error without the chain of
// package prefixes it picked up, bounded.
func errorMessage(err error) string {
	msg := err.Error()
	var me *mail.Error
	if errors.As(err, &me) {
		msg = "imap: " + me.Message()
	}
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	return msg
}

// followUp starts tone analysis after a completed initialisation, when the
// user has an LLM configured.
func (m *Manager) followUp(ctx context.Context, user userid.ID, log *slog.Logger) {
	err := m.Start(ctx, user, ToneOfVoice)
	switch {
	case err == nil:
		log.Debug("jobs: tone analysis started after initialisation")
	case errors.Is(err, ErrNotConfigured), errors.Is(err, ErrRunning), errors.Is(err, ErrClosed):
		log.Debug("jobs: no tone analysis after initialisation", "reason", err)
	default:
		log.Warn("jobs: start tone analysis", "error", err)
	}
}

// Wait waits until the latest job of kind for user started on this
// replica has ended (at once when it has already), and returns why it did
// not complete: nil when it completed, or when none was started here.
func (m *Manager) Wait(ctx context.Context, user userid.ID, kind Kind) error {
	key := jobKey{user, kind}
	m.mu.Lock()
	j := m.jobs[key]
	if j == nil {
		j = m.last[key]
	}
	m.mu.Unlock()
	if j == nil {
		return nil
	}
	select {
	case <-j.done:
		return j.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Running reports whether a job of kind runs (or is queued) for user on any
// replica: whether its lease is held.
func (m *Manager) Running(ctx context.Context, user userid.ID, kind Kind) (bool, error) {
	if err := user.Check(); err != nil {
		return false, err
	}
	_, err := m.cfg.KV.Get(ctx, leaseKey(kind, user))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, kv.ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("jobs: read lease: %w", err)
}

// Interrupt stops user's job of kind: at once when it runs on this
// replica, else at its next batch (through user:{uuid}:inbox_interrupt or
// the kind's interrupt key). A job left running by a dead process is marked
// interrupted, so that recovery does not resume it. Nothing running is a
// no-op.
func (m *Manager) Interrupt(ctx context.Context, user userid.ID, kind Kind) error {
	if err := user.Check(); err != nil {
		return err
	}
	if !kind.valid() {
		return fmt.Errorf("jobs: unknown job %q", kind)
	}
	m.mu.Lock()
	j := m.jobs[jobKey{user, kind}]
	m.mu.Unlock()
	if j != nil {
		j.cancel(errInterrupted)
		return nil
	}
	k := keysOf(kind)
	held, err := m.Running(ctx, user, kind)
	if err != nil {
		return err
	}
	if held {
		if err := m.cfg.KV.Set(ctx, user.Key(k.interrupt), "1", 24*time.Hour); err != nil {
			return fmt.Errorf("jobs: interrupt: %w", err)
		}
		return nil
	}
	if k.status == "" {
		return nil
	}
	// No live lease: a status still "running" belongs to a dead process.
	status, err := m.cfg.KV.Get(ctx, user.Key(k.status))
	if errors.Is(err, kv.ErrNotFound) || (err == nil && status != StatusRunning) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("jobs: interrupt: %w", err)
	}
	if err := m.cfg.KV.Set(ctx, user.Key(k.status), StatusInterrupted, 0); err != nil {
		return fmt.Errorf("jobs: interrupt: %w", err)
	}
	m.log.Info("jobs: marked a dead job interrupted", "user_id", user, "job", kind)
	return nil
}

// Reinitialize interrupts user's inbox initialisation and incremental
// vectorisation, waits (bounded by ctx) until they stopped, empties the
// user's collection (for the user's current embedding model), and starts
// the initialisation afresh.
func (m *Manager) Reinitialize(ctx context.Context, user userid.ID) error {
	if err := user.Check(); err != nil {
		return err
	}
	if err := m.precheck(ctx, user, Initialize); err != nil {
		return err
	}
	for _, kind := range []Kind{Initialize, Incremental} {
		if err := m.Interrupt(ctx, user, kind); err != nil {
			return err
		}
	}
	for _, kind := range []Kind{Initialize, Incremental} {
		if err := m.awaitStopped(ctx, user, kind); err != nil {
			return err
		}
	}
	return m.start(ctx, user, Initialize, startOptions{}, func(ctx context.Context) error {
		st, err := m.cfg.Settings.Get(ctx, user)
		if err != nil {
			return fmt.Errorf("jobs: read settings: %w", err)
		}
		model, err := m.userModel(ctx, user, st)
		if err != nil {
			return err
		}
		if err := m.cfg.Vectors.Recreate(ctx, user, model.Key, model.Dimensions); err != nil {
			return fmt.Errorf("jobs: recreate collection: %w", err)
		}
		if err := m.cfg.KV.Delete(ctx, user.Key(keyInboxCursor)); err != nil {
			return fmt.Errorf("jobs: reset cursor: %w", err)
		}
		m.log.Info("jobs: collection recreated for reinitialisation", "user_id", user, "model", model.Key)
		return nil
	})
}

// awaitStopped waits until user's job of kind no longer runs anywhere.
func (m *Manager) awaitStopped(ctx context.Context, user userid.ID, kind Kind) error {
	if err := m.Wait(ctx, user, kind); err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w: %v", ErrStillStopping, err)
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		held, err := m.Running(ctx, user, kind)
		if err != nil {
			return err
		}
		if !held {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%s)", ErrStillStopping, kind)
		case <-t.C:
		}
	}
}

// InboxStatus is the user's inbox initialisation state (see ReadInboxStatus).
func (m *Manager) InboxStatus(ctx context.Context, user userid.ID) (InboxStatus, error) {
	return ReadInboxStatus(ctx, m.cfg.KV, user)
}

// Status is the state of every user-visible job of user.
func (m *Manager) Status(ctx context.Context, user userid.ID) (Statuses, error) {
	return readStatuses(ctx, m.cfg.KV, user)
}

// ToneProfile is the user's tone-of-voice profile: language code to profile
// text (empty when none was written).
func (m *Manager) ToneProfile(ctx context.Context, user userid.ID) (map[string]string, error) {
	return readJSONMap(ctx, m.cfg.KV, user, keyToneProfile)
}

// LabelDescriptions is the user's label descriptions: folder name to
// description (empty when none were written).
func (m *Manager) LabelDescriptions(ctx context.Context, user userid.ID) (map[string]string, error) {
	return readJSONMap(ctx, m.cfg.KV, user, keyLabelDescriptions)
}

// interrupted reports (as errInterrupted) that the user asked the job to
// stop through the KV, or the job's context ended. Jobs call it between
// batches.
func (m *Manager) interrupted(ctx context.Context, user userid.ID, kind Kind) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	_, err := m.cfg.KV.Get(ctx, user.Key(keysOf(kind).interrupt))
	switch {
	case err == nil:
		return errInterrupted
	case errors.Is(err, kv.ErrNotFound):
		return nil
	}
	return fmt.Errorf("jobs: read interrupt: %w", err)
}

func randomHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
