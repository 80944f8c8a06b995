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

// tenant is one polled user: a loop that holds the lease, polls on its own
// clock (or when kicked by IDLE), and backs off on errors.
type tenant struct {
	p      *Poller
	id     userid.ID
	acct   mail.Account
	cancel context.CancelFunc
	kick   chan struct{} // 1-slot: a pending "poll now"
	keeper *leaseKeeper  // set before the tenant's loop starts

	// Owned by the tenant's loop goroutine alone.
	trigger     triggerState
	triggerHold context.Context // the holding trigger was cached under

	mu         sync.Mutex
	state      string
	failures   int
	lastStatus time.Time // when the status was last written to the KV
	status     Status
}

func (t *tenant) poke() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

func (t *tenant) getState() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state
}

// run is the tenant's loop. A lease keeper (its own goroutine) takes the
// lease, renews it every LeaseTTL/3 whatever the polls are doing, and keeps
// a holding context that ends the moment the lease may have expired; every
// poll (and the IDLE watcher) runs under that context, so a replica never
// polls a user it does not hold — even while a slow poll or a wait for a
// worker outlasts a renewal. The lease is released on exit so that another
// replica takes over at once on a clean shutdown.
func (t *tenant) run(ctx context.Context) {
	p := t.p
	renewEvery := p.cfg.LeaseTTL / 3
	keeper := t.keeper
	keeperDone := make(chan struct{})
	go func() {
		defer close(keeperDone)
		keeper.run(ctx, renewEvery)
	}()
	defer func() { <-keeperDone }()

	// The first poll of a tenant is spread over one interval's jitter so that
	// a restart does not poll every inbox in the same second.
	next := time.Now().Add(time.Duration(float64(p.Interval()) * p.cfg.Jitter * rand.Float64()))
	pollTimer := time.NewTimer(time.Until(next))
	defer pollTimer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-keeper.acquired:
			// Held now: poll when due (at once if it fell due meanwhile).
			pollTimer.Reset(max(0, time.Until(next)))
			continue
		case <-t.kick:
		case <-pollTimer.C:
		}
		held := keeper.holding()
		if held == nil {
			t.setState(StateElsewhere)
			pollTimer.Reset(renewEvery)
			continue
		}
		wait := t.pollSlot(held, next)
		if ctx.Err() != nil {
			return
		}
		if held.Err() != nil {
			wait = renewEvery // the lease ended during the poll: nothing was recorded
		}
		next = time.Now().Add(wait)
		pollTimer.Reset(wait)
	}
}

// leaseKeeper holds lease:poll:{uuid} for a tenant.
type leaseKeeper struct {
	t        *tenant
	acquired chan struct{} // 1-slot: the lease was just taken
	retry    chan struct{} // 1-slot: try to take the lease now

	mu     sync.Mutex
	hold   context.Context    // nil or ended: not held
	cancel context.CancelFunc // ends hold
	expiry *time.Timer        // ends hold when the lease may have expired

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

func (k *leaseKeeper) run(ctx context.Context, renewEvery time.Duration) {
	defer k.release()
	tick := time.NewTicker(renewEvery)
	defer tick.Stop()
	for {
		k.renew(ctx, renewEvery)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-k.retry:
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// renew takes or renews the lease once. The holding lasts until the time the
// request was sent plus the TTL, less a margin for clock drift between this
// process and the KV.
func (k *leaseKeeper) renew(ctx context.Context, renewEvery time.Duration) {
	t, p := k.t, k.t.p
	sent := time.Now()
	held := k.holding() != nil
	if !held && !p.mayAcquire() {
		return // at our fair share: leave this user to another replica
	}
	rctx, cancel := context.WithTimeout(ctx, renewEvery)
	ok, err := t.holdLease(rctx, held)
	cancel()
	if ctx.Err() != nil {
		return
	}
	until := sent.Add(p.cfg.LeaseTTL - p.cfg.LeaseTTL/10)
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case ok && k.hold != nil && k.hold.Err() == nil:
		k.expiry.Reset(time.Until(until))
	case ok:
		k.hold, k.cancel = context.WithCancel(ctx)
		k.expiry = time.AfterFunc(time.Until(until), k.cancel)
		select {
		case k.acquired <- struct{}{}:
		default:
		}
		if p.cfg.IDLE {
			hold := k.hold
			k.watchers.Add(1)
			go func() {
				defer k.watchers.Done()
				t.watch(hold)
			}()
		}
	case err != nil:
		// Unknown outcome: the holding ends by itself when its time is up.
		p.log.Warn("poller: lease", "user_id", t.id, "error", err)
	case k.hold != nil && k.hold.Err() == nil:
		p.log.Info("poller: lease lost to another replica", "user_id", t.id)
		k.cancel()
	}
}

// poke asks the keeper to try for the lease now.
func (k *leaseKeeper) poke() {
	select {
	case k.retry <- struct{}{}:
	default:
	}
}

// shed gives the lease up for another replica to take (balancing).
func (k *leaseKeeper) shed() {
	k.t.p.log.Debug("poller: lease shed for balance", "user_id", k.t.id)
	k.release()
}

// release ends the holding and, if the lease may still be ours, deletes it.
func (k *leaseKeeper) release() {
	t, p := k.t, k.t.p
	k.mu.Lock()
	held := k.hold != nil && k.hold.Err() == nil
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

// holdLease takes or renews lease:poll:{uuid}. held says whether we held it.
func (t *tenant) holdLease(ctx context.Context, held bool) (bool, error) {
	p := t.p
	key := leaseKey(t.id)
	if held {
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

// pollSlot waits for a worker and a host slot, polls once, and returns how
// long to wait before the next poll.
func (t *tenant) pollSlot(ctx context.Context, scheduled time.Time) time.Duration {
	p := t.p
	host := p.hostSlot(t.acct.Server)
	p.m.queued.Inc()
	select {
	case p.workers <- struct{}{}:
	case <-ctx.Done():
		p.m.queued.Dec()
		return 0
	}
	select {
	case host <- struct{}{}:
	case <-ctx.Done():
		<-p.workers
		p.m.queued.Dec()
		return 0
	}
	p.m.queued.Dec()
	defer func() { <-host; <-p.workers }()

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

// watch keeps an IDLE connection open and kicks a poll on every change. When
// IDLE fails it retries with backoff; interval polling goes on meanwhile.
func (t *tenant) watch(ctx context.Context) {
	p := t.p
	failures := 0
	for ctx.Err() == nil {
		err := p.inbox.Watch(ctx, t.id, t.acct, t.poke)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrIdleUnsupported) {
			p.log.Info("poller: server cannot IDLE; polling on the interval", "user_id", t.id)
			return
		}
		failures++
		wait := backoff(time.Second, 5*time.Minute, failures)
		p.log.Debug("poller: idle ended", "user_id", t.id, "retry_in", wait.String(), "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err == nil {
			failures = 0
		}
	}
}

// errorMessage is the user-facing text of a poll error.
func errorMessage(err error) string {
	var me *mail.Error
	if errors.As(err, &me) {
		return string(me.Class) + ": " + me.Message()
	}
	return err.Error()
}
