// Package poller owns the multi-tenant inbox watcher: which users are polled,
// when, by which replica (a lease in the KV), through a bounded worker pool,
// and what a poll does — detect new mail by UID against per-user trigger
// state, and start the user's matching workflows exactly once per message.
package poller

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/workflow"
)

// Workflows is what the poller needs of the workflow engine.
type Workflows interface {
	UsersWithActiveTrigger(ctx context.Context, triggerType string) ([]userid.ID, error)
	ListActiveByTrigger(ctx context.Context, user userid.ID, triggerType string) ([]workflow.Workflow, error)
	CreateInstance(ctx context.Context, user userid.ID, workflowID string, in workflow.TriggerInput, idempotencyKey string) (workflow.Instance, bool, error)
}

// Settings gives a user's settings (the IMAP account).
type Settings interface {
	Get(ctx context.Context, user userid.ID) (settings.Settings, error)
}

// Inbox is the IMAP side of a poll, for one user's INBOX. The production
// implementation is IMAPInbox; tests may substitute a fake.
type Inbox interface {
	// Status returns the INBOX's UIDVALIDITY and UIDNEXT.
	Status(ctx context.Context, user userid.ID, acct mail.Account) (MailboxStatus, error)
	// NewUIDs returns the UIDs above after, ascending (at most limit).
	NewUIDs(ctx context.Context, user userid.ID, acct mail.Account, after uint32, limit int) ([]uint32, error)
	// Message fetches and parses one message, with its thread as markdown.
	Message(ctx context.Context, user userid.ID, acct mail.Account, uid uint32) (Message, error)
	// Watch starts watching the INBOX (IMAP IDLE) until ctx ends: changed is
	// called on every change, and ended once, with the reason, when the watch
	// ends (with ctx, or by itself). It returns once the watch is up, or with
	// the error that kept it from starting (ended is not called then):
	// ErrIdleUnsupported when the server cannot IDLE.
	Watch(ctx context.Context, user userid.ID, acct mail.Account, changed func(), ended func(error)) error
}

// ErrIdleUnsupported: the server does not advertise IDLE.
var ErrIdleUnsupported = errors.New("poller: server does not support IDLE")

// MailboxStatus is the part of SELECT/STATUS the poller needs.
type MailboxStatus struct {
	UIDValidity uint32
	UIDNext     uint32
}

// Message is one new message as workflows see it.
type Message struct {
	UID      uint32
	Email    workflow.Email
	Markdown string // the thread as markdown: <<trigger_output>>
	// FromAddress is the bare sender address, lower case, for filter rules
	// and the self-sent check.
	FromAddress string
}

// Config tunes the poller. Zero values take the defaults in brackets.
type Config struct {
	Interval     time.Duration // between polls of one user [60s]
	Jitter       float64       // fraction of Interval added at random [0.1]
	Workers      int           // polls in flight at once [16]
	PerHost      int           // polls in flight against one IMAP host [20]
	IDLE         bool          // watch with IMAP IDLE where the server supports it
	Refresh      time.Duration // how often the set of users is re-read [5s]
	LeaseTTL     time.Duration // lease:poll:{uuid} expiry [30s]
	Owner        string        // this replica's name in leases (required)
	BatchLimit   int           // new messages handled per poll; more are left for the next [50]
	BackoffBase  time.Duration // first retry after an error [10s]
	BackoffMax   time.Duration // longest retry wait [30m]
	AuthBackoff  time.Duration // first retry after an auth failure [5m]
	PollTimeout  time.Duration // bound on one poll [2m]
	StatusWrites time.Duration // minimum time between two status writes of an unchanged state [30s]
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Interval, 60*time.Second)
	def(&c.Refresh, 5*time.Second)
	def(&c.LeaseTTL, 30*time.Second)
	def(&c.BackoffBase, 10*time.Second)
	def(&c.BackoffMax, 30*time.Minute)
	def(&c.AuthBackoff, 5*time.Minute)
	def(&c.PollTimeout, 2*time.Minute)
	def(&c.StatusWrites, 30*time.Second)
	if c.Jitter <= 0 {
		c.Jitter = 0.1
	}
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.PerHost <= 0 {
		c.PerHost = 20
	}
	if c.BatchLimit <= 0 {
		c.BatchLimit = 50
	}
}

// Poller watches the inboxes of every user with complete IMAP settings and
// at least one active new_email workflow.
type Poller struct {
	cfg       Config
	kv        kv.Store
	workflows Workflows
	settings  Settings
	inbox     Inbox
	log       *slog.Logger
	m         *metrics

	runq     *runQueue    // due tenants, for the Config.Workers workers
	interval atomic.Int64 // Config.Interval, changeable live (SIGHUP)
	share    atomic.Int64 // the most leases this replica holds (balancing)
	held     atomic.Int64 // holdings not yet ended, all tenants (leaseKeeper.renew)

	mu      sync.Mutex
	hosts   map[string]chan struct{} // per-host caps
	tenants map[userid.ID]*tenant
}

// New builds a Poller. reg may be nil.
func New(cfg Config, store kv.Store, wf Workflows, st Settings, inbox Inbox, logger *slog.Logger, reg prometheus.Registerer) (*Poller, error) {
	cfg.defaults()
	if cfg.Owner == "" {
		return nil, errors.New("poller: Config.Owner (the replica name) is required")
	}
	p := &Poller{
		cfg: cfg, kv: store, workflows: wf, settings: st, inbox: inbox, log: logger,
		hosts:   map[string]chan struct{}{},
		tenants: map[userid.ID]*tenant{},
	}
	p.interval.Store(int64(cfg.Interval))
	p.m = newMetrics(reg, p)
	p.runq = newRunQueue(p.m.queued)
	return p, nil
}

// Interval is the time between two polls of one user.
func (p *Poller) Interval() time.Duration { return time.Duration(p.interval.Load()) }

// SetInterval changes the poll interval; each user's next poll after the
// current one uses it.
func (p *Poller) SetInterval(d time.Duration) {
	if d > 0 {
		p.interval.Store(int64(d))
	}
}

// Run discovers tenants every Refresh and polls them on Config.Workers
// workers until ctx ends; it returns after every poll has ended and every
// tenant has released its lease.
func (p *Poller) Run(ctx context.Context) error {
	var workers, stops sync.WaitGroup
	for range p.cfg.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				t, ok := p.runq.pop()
				if !ok {
					return
				}
				t.poll()
			}
		}()
	}
	defer func() {
		p.mu.Lock()
		stopping := p.tenants
		p.tenants = map[userid.ID]*tenant{}
		p.mu.Unlock()
		for _, t := range stopping {
			t.cancel() // polls in flight end now
		}
		p.runq.close()
		workers.Wait()
		// A few releases at a time: each deletes a lease within a timeout
		// of its own, which a thousand at once would spend queueing for
		// SQLite's write lock.
		slots := make(chan struct{}, 16)
		for _, t := range stopping {
			stops.Add(1)
			slots <- struct{}{}
			go func() {
				defer func() { <-slots; stops.Done() }()
				t.stop(true)
			}()
		}
		stops.Wait()
	}()
	defer p.leaveReplicas()
	tick := time.NewTicker(min(p.cfg.Refresh, p.cfg.LeaseTTL/3))
	defer tick.Stop()
	lastDiscover := time.Time{}
	for {
		if time.Since(lastDiscover) >= p.cfg.Refresh {
			if err := p.discover(ctx, &stops); err != nil && ctx.Err() == nil {
				p.log.Error("poller: discover tenants", "error", err)
			}
			lastDiscover = time.Now()
		}
		if err := p.balance(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("poller: replica heartbeat", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Balancing. Each replica announces itself with lease:replica:{owner}
// (expiring after one lease period), and holds at most a fair share of the
// polled users: ceil(users/replicas) plus a little slack. A replica over its
// share releases leases, which the others take; one that dies stops counting
// within a lease period, so the survivors' shares grow in time to take its
// users over.

func replicaKey(owner string) string { return "lease:replica:" + owner }

// balance refreshes this replica's heartbeat, recomputes the fair share, and
// sheds the leases held beyond it.
func (p *Poller) balance(ctx context.Context) error {
	if err := p.kv.Set(ctx, replicaKey(p.cfg.Owner), "1", p.cfg.LeaseTTL); err != nil {
		return err
	}
	live, err := p.kv.Scan(ctx, "lease:replica:")
	if err != nil {
		return err
	}
	replicas := max(len(live), 1)
	p.mu.Lock()
	users := len(p.tenants)
	share := (users+replicas-1)/replicas + max(1, users/(20*replicas))
	p.share.Store(int64(share))
	var held, free []*tenant
	for _, t := range p.tenants {
		if t.keeper.holding() != nil {
			held = append(held, t)
		} else {
			free = append(free, t)
		}
	}
	p.mu.Unlock()
	if len(held) > share {
		for _, t := range held[share:] {
			t.keeper.shed()
		}
		return nil
	}
	// Room for more: the free users' keepers try now rather than at their
	// next renewal (a new replica's share, or a dead one's users).
	for _, t := range free[:min(len(free), share-len(held))] {
		t.keeper.poke()
	}
	return nil
}

// mayAcquire reports whether this replica may take one more lease. It is
// asked by every tenant without its lease at every renewal, so it counts
// nothing: a count of holdings is kept as they start and end.
func (p *Poller) mayAcquire() bool {
	share := p.share.Load()
	return share <= 0 || p.held.Load() < share // share <= 0: not computed yet
}

// leaveReplicas removes this replica's heartbeat on a clean stop.
func (p *Poller) leaveReplicas() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.kv.Delete(ctx, replicaKey(p.cfg.Owner)); err != nil {
		p.log.Warn("poller: leave replicas", "error", err)
	}
}

// discover starts each new eligible user, restarts one whose IMAP account
// changed, and stops users no longer eligible (stops counts the stops in
// flight).
func (p *Poller) discover(ctx context.Context, stops *sync.WaitGroup) error {
	ids, err := p.workflows.UsersWithActiveTrigger(ctx, workflow.TriggerNewEmail)
	if err != nil {
		return err
	}
	want := map[userid.ID]mail.Account{}
	unread := map[userid.ID]bool{} // settings unreadable now: left as they are
	for _, id := range ids {
		st, err := p.settings.Get(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // stopping: a partial read must not stop tenants
			}
			p.log.Warn("poller: read settings", "user_id", id, "error", err)
			unread[id] = true
			continue
		}
		if st.IMAPComplete() {
			want[id] = st.IMAPAccount()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, t := range p.tenants {
		if unread[id] {
			continue // a failed read is no reason to stop polling
		}
		if acct, ok := want[id]; !ok || acct != t.acct {
			delete(p.tenants, id)
			stops.Add(1)
			go func() {
				defer stops.Done()
				t.stop(false)
			}()
		}
	}
	for id, acct := range want {
		if _, ok := p.tenants[id]; ok {
			continue
		}
		t := newTenant(p, ctx, id, acct)
		p.tenants[id] = t
		t.start()
	}
	return nil
}

// Kick asks for an immediate poll of user, if this replica polls it.
func (p *Poller) Kick(user userid.ID) {
	p.mu.Lock()
	t := p.tenants[user]
	p.mu.Unlock()
	if t != nil {
		t.poke()
	}
}

// runQueue is the FIFO of tenants whose poll is due, served by the
// workers. A tenant is in it at most once (tenant.queued).
type runQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []*tenant
	head   int
	closed bool
	gauge  prometheus.Gauge // inboxd's polls waiting for a worker
}

func newRunQueue(gauge prometheus.Gauge) *runQueue {
	q := &runQueue{gauge: gauge}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *runQueue) push(t *tenant) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, t)
	q.mu.Unlock()
	q.gauge.Inc()
	q.cond.Signal()
}

// pop waits for a due tenant; false once the queue is closed.
func (q *runQueue) pop() (*tenant, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head == len(q.items) && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return nil, false
	}
	t := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	q.gauge.Dec()
	return t, true
}

// close wakes the workers to exit; tenants still queued are dropped (they
// are being stopped).
func (q *runQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.gauge.Sub(float64(len(q.items) - q.head))
	q.items, q.head = nil, 0
	q.mu.Unlock()
	q.cond.Broadcast()
}

// hostSlot returns the semaphore capping polls against one IMAP host.
func (p *Poller) hostSlot(host string) chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.hosts[host]
	if !ok {
		s = make(chan struct{}, p.cfg.PerHost)
		p.hosts[host] = s
	}
	return s
}

// states counts tenants by state, for the inboxd_tenants gauge.
func (p *Poller) states() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, t := range p.tenants {
		out[t.getState()]++
	}
	return out
}

// jittered returns d plus up to frac*d at random, so tenants spread out.
func jittered(d time.Duration, frac float64) time.Duration {
	return d + time.Duration(rand.Float64()*frac*float64(d))
}

// backoff is the wait after n consecutive failures (n >= 1): base doubling,
// capped, with jitter.
func backoff(base, ceiling time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	return jittered(d/2, 1) // between d/2 and d
}

func leaseKey(id userid.ID) string { return "lease:poll:" + id.String() }
