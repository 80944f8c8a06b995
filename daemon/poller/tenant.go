package poller

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/userid"
)

// Tenant states, as shown by GET /api/v1/inbox/status and inboxd_tenants.
const (
	StateStarting   = "starting"    // discovered, first poll not done
	StateActive     = "active"      // polling normally
	StateBackoff    = "backoff"     // last poll failed; retrying later
	StateAuthFailed = "auth_failed" // the server refused the login; retrying slowly
	StateElsewhere  = "elsewhere"   // another replica holds the lease
)

// tenant is one polled user. It has no goroutine of its own: its poll clock
// and its lease renewals are timers, a due poll waits in the poller's run
// queue for one of Config.Workers workers, and a renewal runs in its timer's
// short-lived goroutine. So a waiting tenant costs a few hundred bytes rather
// than goroutine stacks grown to the depth of a poll (SQLite, IMAP, MIME
// parsing) and kept until the next one.
type tenant struct {
	p      *Poller
	id     userid.ID
	acct   mail.Account
	ctx    context.Context // ends when the tenant is stopped
	cancel context.CancelFunc
	keeper *leaseKeeper

	// Owned by the poll in flight: a tenant is polled by one worker at a
	// time (queued below), and the run queue's lock orders two polls.
	trigger     triggerState
	triggerHold context.Context // the holding trigger was cached under

	mu      sync.Mutex
	timer   *time.Timer // fires due
	next    time.Time   // when the next poll is due
	queued  bool        // in the run queue or being polled
	again   bool        // poll once more as soon as the current poll ends
	stopped bool

	state      string
	failures   int
	lastStatus time.Time // when the status was last written to the KV
	status     Status
}

func newTenant(p *Poller, ctx context.Context, id userid.ID, acct mail.Account) *tenant {
	t := &tenant{p: p, id: id, acct: acct, state: StateStarting}
	t.ctx, t.cancel = context.WithCancel(ctx)
	t.keeper = &leaseKeeper{t: t}
	return t
}

// start arms the tenant's clocks. The first poll is spread over one
// interval's jitter so that a restart does not poll every inbox in the same
// second; it happens once the lease is held.
func (t *tenant) start() {
	delay := time.Duration(float64(t.p.Interval()) * t.p.cfg.Jitter * rand.Float64())
	t.mu.Lock()
	t.next = time.Now().Add(delay)
	t.timer = time.AfterFunc(delay, t.due)
	t.mu.Unlock()
	t.keeper.start()
}

// stop ends the tenant: no poll or renewal starts after it, and the renewal
// in flight has ended. A poll in flight is cancelled (its context ends) and
// finished by its worker. With release the lease is deleted, for another
// replica to take at once (a clean shutdown); without, it runs out by itself
// (a user no longer polled, or whose account changed: a new tenant of the
// same user may be starting on this replica, and must not find its lease
// deleted under it).
func (t *tenant) stop(release bool) {
	t.cancel()
	t.mu.Lock()
	t.stopped = true
	if t.timer != nil {
		t.timer.Stop()
	}
	t.mu.Unlock()
	t.keeper.stop(release)
}

// due queues the tenant for a worker, unless it is queued already.
func (t *tenant) due() {
	t.mu.Lock()
	if t.stopped || t.queued {
		t.mu.Unlock()
		return
	}
	t.queued = true
	t.mu.Unlock()
	t.p.runq.push(t)
}

// poke asks for a poll now (IDLE saw a change, or Kick).
func (t *tenant) poke() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pollByLocked(time.Time{})
}

// leaseTaken: the lease was just taken; poll when due (at once if the poll
// fell due meanwhile).
func (t *tenant) leaseTaken() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pollByLocked(t.next)
}

// pollByLocked moves the next poll to at (now when at has passed). A poll
// queued or in flight is followed by another at once instead: it may have
// found nothing new, or the lease not held, just before.
func (t *tenant) pollByLocked(at time.Time) {
	switch {
	case t.stopped:
	case t.queued:
		t.again = true
	default:
		t.timer.Reset(max(0, time.Until(at)))
	}
}

func (t *tenant) getState() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state
}

// poll runs one due poll on a worker and arms the next. Every poll (and the
// IDLE watcher) runs under the lease keeper's holding context, which ends
// the moment the lease may have expired: a replica never polls a user it
// does not hold, even while a slow poll or a wait for a host slot outlasts
// a renewal.
func (t *tenant) poll() {
	p := t.p
	renewEvery := p.cfg.LeaseTTL / 3
	t.mu.Lock()
	scheduled, stopped := t.next, t.stopped
	t.mu.Unlock()
	wait, polled := renewEvery, false
	if !stopped {
		if held := t.keeper.holding(); held == nil {
			t.setState(StateElsewhere)
		} else {
			wait, polled = t.pollSlot(held, scheduled), true
			if held.Err() != nil {
				wait = renewEvery // the lease ended during the poll: nothing was recorded
			}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.queued = false
	if t.stopped {
		return
	}
	if t.again {
		t.again, wait = false, 0
	}
	if polled {
		t.next = time.Now().Add(wait)
	}
	t.timer.Reset(wait)
}

// leaseKeeper holds lease:poll:{uuid} for a tenant: it takes the lease,
// renews it every LeaseTTL/3 whatever the polls are doing, and keeps a
// holding context that ends the moment the lease may have expired. The
// lease is released when the tenant stops, so that another replica takes
// over at once on a clean shutdown.
type leaseKeeper struct {
	t *tenant

	mu       sync.Mutex
	hold     context.Context    // nil or ended: not held
	cancel   context.CancelFunc // ends hold, and counts it out of Poller.held
	expiry   *time.Timer        // ends hold when the lease may have expired
	until    time.Time          // when the lease may expire, if it is ours
	unknown  time.Time          // until when a renewal with a lost answer may have kept the lease ours
	timer    *time.Timer        // fires tick
	ticking  bool               // a tick is running
	again    bool               // tick once more as soon as the current one ends
	stopped  bool
	inflight sync.WaitGroup // the tick running

	watchers sync.WaitGroup // IDLE watchers, one per holding
}

// holding returns the context of the current holding, or nil when the
// lease is not held (or may have expired).
func (k *leaseKeeper) holding() context.Context {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.hold == nil || k.hold.Err() != nil {
		return nil
	}
	return k.hold
}

func (k *leaseKeeper) start() {
	k.mu.Lock()
	k.timer = time.AfterFunc(0, k.tick)
	k.mu.Unlock()
}

// tick takes or renews the lease once and arms the next renewal. Ticks
// never overlap: one that finds another running asks it to go again.
func (k *leaseKeeper) tick() {
	renewEvery := k.t.p.cfg.LeaseTTL / 3
	k.mu.Lock()
	if k.stopped || k.ticking {
		k.again = !k.stopped
		k.mu.Unlock()
		return
	}
	k.ticking = true
	k.inflight.Add(1)
	k.mu.Unlock()
	defer k.inflight.Done()

	started := time.Now()
	taken := k.renew(k.t.ctx, renewEvery)
	if taken {
		k.t.leaseTaken()
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	k.ticking = false
	next := max(0, renewEvery-time.Since(started)) // every renewEvery, however long a renewal takes
	if k.again {
		k.again, next = false, 0
	}
	if !k.stopped {
		k.timer.Reset(next)
	}
}

// stop ends the renewals (waiting for the one in flight) and the holding,
// and with release deletes the lease.
func (k *leaseKeeper) stop(release bool) {
	k.mu.Lock()
	k.stopped = true
	if k.timer != nil {
		k.timer.Stop()
	}
	if !release {
		k.until = time.Time{}
	}
	k.mu.Unlock()
	k.inflight.Wait()
	k.release()
}

// renew takes or renews the lease once; it reports whether the lease was
// just taken (a new holding). The holding lasts until the time the request
// was sent plus the TTL, less a margin for clock drift between this process
// and the KV.
func (k *leaseKeeper) renew(ctx context.Context, renewEvery time.Duration) (taken bool) {
	t, p := k.t, k.t.p
	if ctx.Err() != nil {
		return false
	}
	sent := time.Now()
	held := k.holding() != nil
	if !held && !p.mayAcquire() {
		return false // at our fair share: leave this user to another replica
	}
	k.mu.Lock()
	mayBeOurs := sent.Before(k.unknown)
	k.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, renewEvery)
	ok, err := t.holdLease(rctx, held, mayBeOurs)
	cancel()
	until := sent.Add(p.cfg.LeaseTTL - p.cfg.LeaseTTL/10)
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case ok:
		k.unknown = time.Time{}
	case err != nil:
		k.unknown = until
	}
	if ctx.Err() != nil {
		if ok {
			k.until = until // the tenant is stopping: release deletes what was just taken
		}
		return false
	}
	switch {
	case ok && k.hold != nil && k.hold.Err() == nil:
		k.expiry.Reset(time.Until(until))
		k.until = until
	case ok:
		if k.cancel != nil {
			k.cancel() // the ended holding leaves the count, if it has not yet
		}
		k.until = until
		hold, cancel := context.WithCancel(ctx)
		var ended sync.Once
		p.held.Add(1)
		k.hold, k.cancel = hold, func() {
			ended.Do(func() { p.held.Add(-1) })
			cancel()
		}
		k.expiry = time.AfterFunc(time.Until(until), k.cancel)
		if p.cfg.IDLE {
			hold := k.hold
			k.watchers.Add(1)
			go func() {
				defer k.watchers.Done()
				t.watch(hold, 0)
			}()
		}
		return true
	case err != nil:
		// Unknown outcome: the holding ends by itself when its time is up.
		p.log.Warn("poller: lease", "user_id", t.id, "error", err)
	case k.hold != nil && k.hold.Err() == nil:
		p.log.Info("poller: lease lost to another replica", "user_id", t.id)
		k.until = time.Time{}
		k.cancel()
	}
	return false
}

// poke asks the keeper to try for the lease now.
func (k *leaseKeeper) poke() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.stopped && k.timer != nil {
		k.timer.Reset(0) // a tick already running makes this one go again
	}
}

// shed gives the lease up for another replica to take (balancing).
func (k *leaseKeeper) shed() {
	k.t.p.log.Debug("poller: lease shed for balance", "user_id", k.t.id)
	k.release()
}

// release ends the holding and, if the lease may still be ours, deletes it
// (the holding's context may have ended with the tenant's already: the
// lease is ours until it expires).
func (k *leaseKeeper) release() {
	t, p := k.t, k.t.p
	k.mu.Lock()
	held := time.Now().Before(k.until)
	k.until = time.Time{}
	if k.cancel != nil {
		k.cancel()
		k.expiry.Stop()
	}
	k.mu.Unlock()
	k.watchers.Wait()
	if !held {
		return
	}
	// A fresh context: the tenant's is done, but the release must happen.
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := p.kv.CompareAndDelete(rctx, leaseKey(t.id), p.cfg.Owner); err != nil {
		p.log.Warn("poller: release lease", "user_id", t.id, "error", err)
	}
}

// holdLease takes or renews lease:poll:{uuid}. held says whether we held
// it; mayBeOurs, that a renewal whose answer was lost (a KV outage) may have
// extended it past the end of our holding: such a lease is taken back at
// once rather than left idle until it expires. Otherwise a lease not held
// is only ever taken when free (SET NX), which is what
// TestThreeReplicasSurviveAKill's recording checker reads.
func (t *tenant) holdLease(ctx context.Context, held, mayBeOurs bool) (bool, error) {
	p := t.p
	key := leaseKey(t.id)
	if held || mayBeOurs {
		ok, err := p.kv.CompareAndSwap(ctx, key, p.cfg.Owner, p.cfg.Owner, p.cfg.LeaseTTL)
		if err != nil {
			// Unknown: keep polling only while the lease cannot have expired.
			return false, err
		}
		if ok {
			return true, nil
		}
	}
	return p.kv.SetNX(ctx, key, p.cfg.Owner, p.cfg.LeaseTTL)
}

// pollSlot runs on a worker: it waits for a slot of the user's IMAP host,
// polls once, and returns how long to wait before the next poll.
func (t *tenant) pollSlot(ctx context.Context, scheduled time.Time) time.Duration {
	p := t.p
	host := p.hostSlot(t.acct.Server)
	select {
	case host <- struct{}{}:
	case <-ctx.Done():
		return 0
	}
	defer func() { <-host }()

	start := time.Now()
	if lag := start.Sub(scheduled); lag > 0 {
		p.m.lag.Observe(lag.Seconds())
	} else {
		p.m.lag.Observe(0)
	}
	if t.triggerHold != ctx { // a new holding: another replica may have polled meanwhile
		t.trigger, t.triggerHold = triggerState{}, ctx
	}
	pctx, cancel := context.WithTimeout(ctx, p.cfg.PollTimeout)
	n, err := p.pollOnce(pctx, t.id, t.acct, &t.trigger)
	cancel()
	p.m.duration.Observe(time.Since(start).Seconds())
	if ctx.Err() != nil {
		return 0
	}
	return t.record(ctx, n, err)
}

// record updates the tenant's state after a poll and returns the wait
// before the next one.
func (t *tenant) record(ctx context.Context, newMessages int, err error) time.Duration {
	p := t.p
	now := time.Now()
	t.mu.Lock()
	var wait time.Duration
	switch {
	case err == nil:
		p.m.polls.WithLabelValues("ok").Inc()
		t.failures = 0
		t.state = StateActive
		t.status.LastSuccess = now
		t.status.LastError = ""
		wait = jittered(p.Interval(), p.cfg.Jitter)
		if newMessages >= p.cfg.BatchLimit {
			wait = 0 // more mail is waiting: go on at once
		}
	case mail.Classify(err) == mail.ClassAuth:
		p.m.polls.WithLabelValues("auth_error").Inc()
		t.failures++
		t.state = StateAuthFailed
		t.status.LastError = errorMessage(err)
		wait = backoff(p.cfg.AuthBackoff, max(p.cfg.BackoffMax, p.cfg.AuthBackoff), t.failures)
	default:
		p.m.polls.WithLabelValues("error").Inc()
		t.failures++
		t.state = StateBackoff
		t.status.LastError = errorMessage(err)
		wait = backoff(p.cfg.BackoffBase, p.cfg.BackoffMax, t.failures)
	}
	if err != nil {
		t.status.LastErrorAt = now
		p.log.Warn("poller: poll failed", "user_id", t.id, "failures", t.failures, "retry_in", wait.String(), "error", err)
	}
	prevState := t.status.State
	t.status.State = t.state
	t.status.Failures = t.failures
	t.status.NextAttempt = now.Add(wait)
	write := prevState != t.status.State || err != nil || now.Sub(t.lastStatus) >= p.cfg.StatusWrites
	st := t.status
	if write {
		t.lastStatus = now
	}
	t.mu.Unlock()
	if write {
		if err := writeStatus(ctx, p.kv, t.id, st); err != nil {
			p.log.Warn("poller: write status", "user_id", t.id, "error", err)
		}
	}
	return wait
}

func (t *tenant) setState(s string) {
	t.mu.Lock()
	t.state = s
	t.mu.Unlock()
}

// watch starts the IDLE watch of one holding of the lease, which kicks a
// poll on every change. It runs on a goroutine that lives for the dial; a
// watch that ends (or fails to start) is started again after a backoff, by
// a timer, for as long as the holding lasts. Interval polling goes on
// meanwhile. failures counts the failed watches in a row.
func (t *tenant) watch(hold context.Context, failures int) {
	started := time.Now()
	err := t.p.inbox.Watch(hold, t.id, t.acct, t.poke, func(why error) { t.watchEnded(hold, failures, started, why) })
	switch {
	case err != nil:
		t.watchEnded(hold, failures, started, err)
	case failures > 0:
		t.poke() // mail that came while nothing watched has no notice of its own
	}
}

func (t *tenant) watchEnded(hold context.Context, failures int, started time.Time, err error) {
	p := t.p
	if hold.Err() != nil {
		return
	}
	if errors.Is(err, ErrIdleUnsupported) {
		p.log.Info("poller: server cannot IDLE; polling on the interval", "user_id", t.id)
		return
	}
	if time.Since(started) > time.Minute {
		failures = 0 // it ran a while: count afresh
	}
	failures++
	wait := backoff(time.Second, 5*time.Minute, failures)
	p.log.Debug("poller: idle ended", "user_id", t.id, "retry_in", wait.String(), "error", err)
	time.AfterFunc(wait, func() {
		if hold.Err() == nil {
			t.watch(hold, failures)
		}
	})
}

// errorMessage is the user-facing text of a poll error.
func errorMessage(err error) string {
	var me *mail.Error
	if errors.As(err, &me) {
		return string(me.Class) + ": " + me.Message()
	}
	return err.Error()
}
