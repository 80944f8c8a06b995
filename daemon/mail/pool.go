package mail

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/prometheus/client_golang/prometheus"
)

// Pool defaults.
const (
	DefaultPoolPerUser   = 2
	DefaultPoolGlobal    = 1000
	DefaultPoolIdleCheck = 60 * time.Second
	DefaultPoolMaxIdle   = 10 * time.Minute
)

// ErrPoolClosed is returned by Acquire after Close.
var ErrPoolClosed = errors.New("mail: connection pool closed")

// PoolOptions configures a Pool. Zero values mean the defaults.
type PoolOptions struct {
	// PerUser caps the connections open (in use, idle or being dialed) for
	// one key. Servers limit connections per account (Gmail 15, Dovecot 10
	// per user and IP by default). Default 2.
	PerUser int
	// Global caps the connections open for all keys together. Default 1000.
	Global int
	// IdleCheck: a connection idle for longer than this is checked with NOOP
	// before it is handed out again. Default 60s; negative checks every time.
	IdleCheck time.Duration
	// MaxIdle: connections idle for longer than this are closed. Default 10m.
	MaxIdle time.Duration
	// Dial is passed to Dial for new connections; its Timeout also bounds
	// the NOOP health check.
	Dial DialOptions
	// Registerer, when set, gets the gauge inboxd_imap_connections (open
	// connections, no labels). Several pools may share one registerer: they
	// then share the gauge.
	Registerer prometheus.Registerer
	// Logger receives debug records about connections the pool drops (key
	// and reason only, never credentials or mail). Nil discards them.
	Logger *slog.Logger
}

// Pool keeps logged-in IMAP connections per key (a user id) for reuse,
// within a per-key and a global cap. All methods are safe for concurrent use.
//
// Connections are keyed by the key and a hash of the Account: when a
// user's settings change (another password or server), the old connections
// are never handed out for the new account.
type Pool struct {
	opts  PoolOptions
	dial  func(context.Context, Account, DialOptions) (*imapclient.Client, error)
	gauge prometheus.Gauge
	log   *slog.Logger

	mu     sync.Mutex
	users  map[string]*poolUser
	open   int           // connections open or being dialed, all keys
	idle   int           // idle connections, all keys
	wake   chan struct{} // closed (and replaced) whenever capacity may have freed up
	closed bool

	stop        chan struct{}
	janitorDone chan struct{}

	dials, reuses, checks, dropped atomic.Int64
}

type poolUser struct {
	open int         // connections of this key open or being dialed
	idle []*poolConn // most recently released last
	hash accountKey  // the account of the most recent Acquire
	gen  uint64      // bumped by CloseUser: older connections are not reused
}

// poolConn is one connection as the pool tracks it, lent out or idle.
type poolConn struct {
	key      string
	hash     accountKey
	gen      uint64
	client   *imapclient.Client
	lastUsed time.Time // when it was last released

	// changes counts the EXISTS and EXPUNGE responses the server sent
	// outside a SELECT (see Conn.CheckMailbox); written by the client's
	// reader goroutine.
	changes atomic.Uint64
	// selected is the read-only selection Conn.CheckMailbox last made, as
	// long as nothing else used the connection (Conn.Client); owned by the
	// borrower.
	selected selection
}

type accountKey [sha256.Size]byte

// hashAccount identifies an account's connection-relevant settings without
// keeping its secrets.
func hashAccount(a Account) accountKey {
	h := sha256.New()
	for _, s := range []string{a.Server, string(a.Security), a.Username, a.Password, a.OAuthToken} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var port [8]byte
	binary.BigEndian.PutUint64(port[:], uint64(a.Port))
	h.Write(port[:])
	var k accountKey
	copy(k[:], h.Sum(nil))
	return k
}

// Conn is a connection lent by a Pool. Use Client for IMAP commands, then
// hand it back with Release, or with Discard after any error: a connection
// that saw a protocol error, a timeout or a canceled context is in an
// unknown state and must not be reused. A Conn must not be used after
// Release or Discard; calling either again is a no-op.
type Conn struct {
	pool *Pool
	pc   *poolConn
	done atomic.Bool
}

// Client returns the logged-in IMAP client. The caller may select anything
// on it, so the selection CheckMailbox keeps is forgotten.
func (c *Conn) Client() *imapclient.Client {
	c.pc.selected = selection{}
	return c.pc.client
}

// Release returns the connection to the pool for reuse. The caller must have
// finished every command (and stopped any IDLE). A connection that was
// closed meanwhile, belongs to an account that changed or to a key that was
// closed, or comes back to a closed pool is closed instead.
func (c *Conn) Release() {
	if c.done.Swap(true) {
		return
	}
	c.pool.put(c.pc, true)
}

// Discard closes the connection and frees its slot.
func (c *Conn) Discard() {
	if c.done.Swap(true) {
		return
	}
	c.pool.put(c.pc, false)
}

// NewPool makes a pool. It fails only when the gauge cannot be registered
// (another collector of the same name but a different kind).
func NewPool(opts PoolOptions) (*Pool, error) {
	if opts.PerUser <= 0 {
		opts.PerUser = DefaultPoolPerUser
	}
	if opts.Global <= 0 {
		opts.Global = DefaultPoolGlobal
	}
	if opts.IdleCheck == 0 {
		opts.IdleCheck = DefaultPoolIdleCheck
	}
	if opts.MaxIdle <= 0 {
		opts.MaxIdle = DefaultPoolMaxIdle
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "inboxd_imap_connections",
		Help: "IMAP connections open (in use or idle in the pool).",
	})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(gauge); err != nil {
			var are prometheus.AlreadyRegisteredError
			existing, ok := prometheus.Gauge(nil), false
			if errors.As(err, &are) {
				existing, ok = are.ExistingCollector.(prometheus.Gauge)
			}
			if !ok {
				return nil, fmt.Errorf("mail: register inboxd_imap_connections: %w", err)
			}
			gauge = existing
		}
	}
	p := &Pool{
		opts:        opts,
		dial:        Dial,
		gauge:       gauge,
		log:         log,
		users:       map[string]*poolUser{},
		wake:        make(chan struct{}),
		stop:        make(chan struct{}),
		janitorDone: make(chan struct{}),
	}
	go p.janitor()
	return p, nil
}

// PoolStats is a snapshot of a pool's state and counters.
type PoolStats struct {
	Open    int   // connections open or being dialed
	Idle    int   // connections idle in the pool
	Keys    int   // keys with at least one connection
	Dials   int64 // connections dialed successfully
	Reuses  int64 // Acquire calls served by an idle connection
	Checks  int64 // NOOP health checks sent
	Dropped int64 // connections closed by the pool (dead, stale, idle too long, discarded)
}

// Stats returns the pool's current state and counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	s := PoolStats{Open: p.open, Idle: p.idle, Keys: len(p.users)}
	p.mu.Unlock()
	s.Dials, s.Reuses, s.Checks, s.Dropped = p.dials.Load(), p.reuses.Load(), p.checks.Load(), p.dropped.Load()
	return s
}

// Acquire returns a logged-in connection for key and acct: an idle one of
// the same key and account when there is one (checked with NOOP if it was
// idle longer than IdleCheck), else a new one. When the per-key or the
// global cap is reached it waits, bounded by ctx, for a connection to be
// released; idle connections of other keys are closed to make room under
// the global cap. Dial errors are returned as they are (*Error); running
// out of ctx while waiting is an *Error of class ClassTimeout.
func (p *Pool) Acquire(ctx context.Context, key string, acct Account) (*Conn, error) {
	hash := hashAccount(acct)
	for {
		if err := ctx.Err(); err != nil {
			return nil, p.waitError(ctx, err, "before a connection was free")
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		u := p.user(key)
		var stale []*poolConn
		if u.hash != hash {
			// The account changed: its idle connections are of no use.
			u.hash = hash
			stale, u.idle = u.idle, nil
			p.idle -= len(stale)
		}
		if n := len(u.idle); n > 0 {
			c := u.idle[n-1]
			u.idle[n-1] = nil
			u.idle = u.idle[:n-1]
			p.idle--
			idleFor := time.Since(c.lastUsed)
			p.mu.Unlock()
			p.closeAll(stale, "account changed")
			if ok := p.healthy(ctx, c, idleFor); ok {
				p.reuses.Add(1)
				return &Conn{pool: p, pc: c}, nil
			}
			if err := ctx.Err(); err != nil {
				return nil, p.waitError(ctx, err, "checking an idle connection")
			}
			continue
		}
		if u.open < p.opts.PerUser {
			var victim *poolConn
			if p.open >= p.opts.Global {
				victim = p.evictIdleLocked()
			}
			if p.open < p.opts.Global {
				u.open++
				p.open++
				gen := u.gen
				p.mu.Unlock()
				p.closeAll(stale, "account changed")
				if victim != nil {
					p.closeConn(victim, "evicted to make room under the global limit")
				}
				return p.dialNew(ctx, key, hash, gen, acct)
			}
		}
		wake := p.wake
		perUser := u.open >= p.opts.PerUser
		p.mu.Unlock()
		p.closeAll(stale, "account changed")

		select {
		case <-wake:
		case <-ctx.Done():
			p.mu.Lock()
			p.forgetLocked(key, u)
			p.mu.Unlock()
			what := fmt.Sprintf("the global limit of %d", p.opts.Global)
			if perUser {
				what = fmt.Sprintf("the limit of %d per user", p.opts.PerUser)
			}
			return nil, p.waitError(ctx, ctx.Err(), "waiting for a free IMAP connection ("+what+" is reached)")
		}
	}
}

func (p *Pool) waitError(ctx context.Context, cause error, doing string) error {
	verb := "timed out"
	if errors.Is(cause, context.Canceled) {
		verb = "canceled"
	}
	return &Error{Class: ClassTimeout, Op: "acquire", Err: &causeError{msg: verb + " " + doing, cause: cause}}
}

// user returns key's state, creating it. Callers hold p.mu.
func (p *Pool) user(key string) *poolUser {
	u, ok := p.users[key]
	if !ok {
		u = &poolUser{}
		p.users[key] = u
	}
	return u
}

// evictIdleLocked removes the least recently used idle connection of any
// key and frees its slot, to make room under the global cap. The caller
// closes it (closeConn) after unlocking. Callers hold p.mu.
func (p *Pool) evictIdleLocked() *poolConn {
	if p.idle == 0 {
		return nil
	}
	var victim *poolConn
	var vu *poolUser
	for _, u := range p.users {
		if len(u.idle) > 0 && (victim == nil || u.idle[0].lastUsed.Before(victim.lastUsed)) {
			victim, vu = u.idle[0], u
		}
	}
	if victim == nil {
		return nil
	}
	vu.idle[0] = nil
	vu.idle = vu.idle[1:]
	p.idle--
	vu.open--
	p.open--
	p.forgetLocked(victim.key, vu)
	return victim
}

// forgetLocked drops a key's state once nothing refers to it.
func (p *Pool) forgetLocked(key string, u *poolUser) {
	if u.open == 0 && len(u.idle) == 0 && p.users[key] == u {
		delete(p.users, key)
	}
}

func (p *Pool) dialNew(ctx context.Context, key string, hash accountKey, gen uint64, acct Account) (*Conn, error) {
	pc := &poolConn{key: key, hash: hash, gen: gen}
	opts := p.opts.Dial
	opts.Unilateral = countChanges(opts.Unilateral, &pc.changes)
	client, err := p.dial(ctx, acct, opts)
	if err != nil {
		p.mu.Lock()
		p.freeSlotLocked(key)
		p.mu.Unlock()
		return nil, err
	}
	p.dials.Add(1)
	p.gauge.Inc()
	pc.client = client
	return &Conn{pool: p, pc: pc}, nil
}

// countChanges returns h (nil: none) with its mailbox-size handlers also
// counting into n: every EXISTS and EXPUNGE the server sends outside a
// SELECT.
func countChanges(h *imapclient.UnilateralDataHandler, n *atomic.Uint64) *imapclient.UnilateralDataHandler {
	var out imapclient.UnilateralDataHandler
	if h != nil {
		out = *h
	}
	mailbox, expunge := out.Mailbox, out.Expunge
	out.Mailbox = func(d *imapclient.UnilateralDataMailbox) {
		if d.NumMessages != nil {
			n.Add(1)
		}
		if mailbox != nil {
			mailbox(d)
		}
	}
	out.Expunge = func(seqNum uint32) {
		n.Add(1)
		if expunge != nil {
			expunge(seqNum)
		}
	}
	return &out
}

// freeSlotLocked gives back one of key's slots and wakes waiters.
func (p *Pool) freeSlotLocked(key string) {
	if u, ok := p.users[key]; ok {
		u.open--
		p.forgetLocked(key, u)
	}
	p.open--
	p.broadcastLocked()
}

func (p *Pool) broadcastLocked() {
	close(p.wake)
	p.wake = make(chan struct{})
}

// healthy reports whether an idle connection may be handed out, checking it
// with NOOP when it was idle longer than IdleCheck. An unhealthy one is
// closed and its slot freed.
func (p *Pool) healthy(ctx context.Context, c *poolConn, idleFor time.Duration) bool {
	select {
	case <-c.client.Closed():
		p.drop(c, "closed by the server")
		return false
	default:
	}
	if c.client.State() == imap.ConnStateLogout {
		p.drop(c, "logged out")
		return false
	}
	if idleFor > p.opts.MaxIdle {
		// The janitor has not come round to it yet.
		p.drop(c, "idle too long")
		return false
	}
	if p.opts.IdleCheck > 0 && idleFor <= p.opts.IdleCheck {
		return true
	}
	p.checks.Add(1)
	timeout := p.opts.Dial.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := withContext(cctx, c.client, func() error { return c.client.Noop().Wait() }); err != nil {
		p.drop(c, "NOOP failed")
		return false
	}
	return true
}

// drop closes a connection that is not idle in the pool and frees its slot.
func (p *Pool) drop(c *poolConn, reason string) {
	p.closeConn(c, reason)
	p.mu.Lock()
	p.freeSlotLocked(c.key)
	p.mu.Unlock()
}

// closeConn closes the client; the slot bookkeeping is the caller's.
func (p *Pool) closeConn(c *poolConn, reason string) {
	c.client.Close()
	p.gauge.Dec()
	p.dropped.Add(1)
	p.log.Debug("mail: pool closed an IMAP connection", slog.String("key", c.key), slog.String("reason", reason))
}

// closeAll closes connections already removed from the idle lists and
// frees their slots.
func (p *Pool) closeAll(conns []*poolConn, reason string) {
	if len(conns) == 0 {
		return
	}
	for _, c := range conns {
		p.closeConn(c, reason)
	}
	p.mu.Lock()
	for _, c := range conns {
		p.freeSlotLocked(c.key)
	}
	p.mu.Unlock()
}

// put takes back a connection from Release (reuse true) or Discard.
func (p *Pool) put(c *poolConn, reuse bool) {
	if reuse {
		select {
		case <-c.client.Closed():
			reuse = false
		default:
			reuse = c.client.State() != imap.ConnStateLogout
		}
	}
	p.mu.Lock()
	u := p.users[c.key]
	if reuse && !p.closed && u != nil && u.hash == c.hash && u.gen == c.gen {
		c.lastUsed = time.Now()
		u.idle = append(u.idle, c)
		p.idle++
		p.broadcastLocked()
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	reason := "discarded"
	if reuse {
		reason = "stale account, key or pool"
	}
	p.drop(c, reason)
}

// CloseUser closes key's idle connections and makes its connections in use
// close when they are released (e.g. when the user's settings change or the
// user is removed).
func (p *Pool) CloseUser(key string) {
	p.mu.Lock()
	u, ok := p.users[key]
	if !ok {
		p.mu.Unlock()
		return
	}
	u.gen++
	idle := u.idle
	u.idle = nil
	p.idle -= len(idle)
	p.mu.Unlock()
	p.closeAll(idle, "user closed")
}

// Close closes every idle connection and stops the pool: later Acquire calls
// fail with ErrPoolClosed, and connections in use are closed when they are
// released or discarded.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var idle []*poolConn
	for _, u := range p.users {
		idle = append(idle, u.idle...)
		p.idle -= len(u.idle)
		u.idle = nil
	}
	p.broadcastLocked()
	p.mu.Unlock()
	close(p.stop)
	<-p.janitorDone
	p.closeAll(idle, "pool closed")
	return nil
}

// janitor closes connections idle longer than MaxIdle, and dead ones.
func (p *Pool) janitor() {
	defer close(p.janitorDone)
	every := min(max(p.opts.MaxIdle/4, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.sweep()
		}
	}
}

// sweep closes idle connections past MaxIdle or closed by the server.
func (p *Pool) sweep() {
	p.mu.Lock()
	var expired []*poolConn
	now := time.Now()
	for _, u := range p.users {
		kept := u.idle[:0]
		for _, c := range u.idle {
			dead := false
			select {
			case <-c.client.Closed():
				dead = true
			default:
			}
			if dead || now.Sub(c.lastUsed) > p.opts.MaxIdle {
				expired = append(expired, c)
			} else {
				kept = append(kept, c)
			}
		}
		clear(u.idle[len(kept):])
		u.idle = kept
	}
	p.idle -= len(expired)
	p.mu.Unlock()
	p.closeAll(expired, "idle too long or closed by the server")
}
