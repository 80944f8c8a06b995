package mail

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/inboxd/inboxd/internal/testsvc"
)

// memAccounts starts an in-memory IMAP server with n users u0..u(n-1).
func memAccounts(t *testing.T, n int) (*testsvc.MemIMAPServer, []Account) {
	t.Helper()
	users := map[string]string{}
	var accts []Account
	for i := 0; i < n; i++ {
		name := "u" + strconv.Itoa(i)
		users[name] = "pw-" + name
	}
	srv := testsvc.MemIMAP(t, users)
	for i := 0; i < n; i++ {
		name := "u" + strconv.Itoa(i)
		accts = append(accts, Account{Server: srv.Host, Port: srv.Port, Security: SecurityNone, Username: name, Password: users[name]})
	}
	return srv, accts
}

func newTestPool(t *testing.T, opts PoolOptions) *Pool {
	t.Helper()
	if opts.Dial.Timeout == 0 {
		opts.Dial.Timeout = 5 * time.Second
	}
	p, err := NewPool(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func gaugeFloat(t testing.TB, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func gaugeValue(p *Pool) int {
	var m dto.Metric
	if err := p.gauge.Write(&m); err != nil {
		panic(err)
	}
	return int(m.GetGauge().GetValue())
}

// seriesCount is how many series of the metric name reg gathers.
func seriesCount(t testing.TB, reg *prometheus.Registry, name string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

func TestPoolReuse(t *testing.T) {
	_, accts := memAccounts(t, 1)
	reg := prometheus.NewRegistry()
	p := newTestPool(t, PoolOptions{Registerer: reg})
	ctx := context.Background()

	c1, err := p.Acquire(ctx, "user-1", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	client := c1.Client()
	if err := client.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	c1.Release()
	c1.Release() // no-op

	c2, err := p.Acquire(ctx, "user-1", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	if c2.Client() != client {
		t.Fatal("second Acquire did not reuse the idle connection")
	}
	s := p.Stats()
	if s.Dials != 1 || s.Reuses != 1 || s.Checks != 0 || s.Open != 1 || s.Idle != 0 {
		t.Fatalf("stats %+v", s)
	}
	if n := seriesCount(t, reg, "inboxd_imap_connections"); n != 1 {
		t.Fatalf("gauge series %d", n)
	}
	if gaugeValue(p) != 1 {
		t.Fatalf("gauge %d", gaugeValue(p))
	}

	// Release of a stale handle after reuse must not give back the new lease.
	c1.Release()
	c1.Discard()
	if s := p.Stats(); s.Idle != 0 || s.Open != 1 {
		t.Fatalf("stale handle changed the pool: %+v", s)
	}

	c2.Discard()
	if s := p.Stats(); s.Open != 0 || s.Idle != 0 || s.Keys != 0 {
		t.Fatalf("after discard: %+v", s)
	}
	if gaugeValue(p) != 0 {
		t.Fatalf("gauge %d after discard", gaugeValue(p))
	}
	c3, err := p.Acquire(ctx, "user-1", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	if c3.Client() == client {
		t.Fatal("discarded connection was reused")
	}
	c3.Release()
}

func TestPoolSharedGauge(t *testing.T) {
	_, accts := memAccounts(t, 1)
	reg := prometheus.NewRegistry()
	p1 := newTestPool(t, PoolOptions{Registerer: reg})
	p2 := newTestPool(t, PoolOptions{Registerer: reg})
	ctx := context.Background()
	c1, err := p1.Acquire(ctx, "a", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	c2, err := p2.Acquire(ctx, "a", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := gaugeFloat(t, p1.gauge); got != 2 {
		t.Fatalf("shared gauge %v, want 2", got)
	}
	c1.Discard()
	c2.Discard()
	if got := gaugeFloat(t, p2.gauge); got != 0 {
		t.Fatalf("shared gauge %v, want 0", got)
	}

	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "inboxd_imap_connections"}))
	if _, err := NewPool(PoolOptions{Registerer: bad}); err == nil {
		t.Fatal("no error for a conflicting collector")
	}
}

func TestPoolCaps(t *testing.T) {
	const users, perUser, global, workers, rounds = 8, 2, 5, 6, 15
	_, accts := memAccounts(t, users)
	p := newTestPool(t, PoolOptions{PerUser: perUser, Global: global})

	var inUse [users]atomic.Int32
	var total, maxTotal atomic.Int32
	var maxPerUser atomic.Int32
	var overOpen atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, users*workers)
	for u := 0; u < users; u++ {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := 0; r < rounds; r++ {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					c, err := p.Acquire(ctx, fmt.Sprintf("user-%d", u), accts[u])
					cancel()
					if err != nil {
						errs <- err
						return
					}
					n := inUse[u].Add(1)
					tot := total.Add(1)
					for m := maxPerUser.Load(); n > m && !maxPerUser.CompareAndSwap(m, n); m = maxPerUser.Load() {
					}
					for m := maxTotal.Load(); tot > m && !maxTotal.CompareAndSwap(m, tot); m = maxTotal.Load() {
					}
					if s := p.Stats(); s.Open > global {
						overOpen.Add(1)
					}
					if err := c.Client().Noop().Wait(); err != nil {
						errs <- err
					}
					inUse[u].Add(-1)
					total.Add(-1)
					if r%5 == 3 {
						c.Discard()
					} else {
						c.Release()
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := maxPerUser.Load(); m > perUser {
		t.Errorf("%d connections of one user in use at once, cap %d", m, perUser)
	}
	if m := maxTotal.Load(); m > global {
		t.Errorf("%d connections in use at once, cap %d", m, global)
	}
	if overOpen.Load() > 0 {
		t.Errorf("open connections exceeded the global cap %d times", overOpen.Load())
	}
	s := p.Stats()
	if s.Open > global || s.Idle != s.Open || gaugeValue(p) != s.Open {
		t.Errorf("final stats %+v, gauge %d", s, gaugeValue(p))
	}
	t.Logf("stats %+v", s)
}

func TestPoolAcquireWaitsAndTimesOut(t *testing.T) {
	_, accts := memAccounts(t, 2)
	p := newTestPool(t, PoolOptions{PerUser: 1, Global: 2})
	ctx := context.Background()

	held, err := p.Acquire(ctx, "a", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	// Per-user cap: a second Acquire for "a" waits, then times out.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = p.Acquire(short, "a", accts[0])
	if Classify(err) != ClassTimeout || time.Since(start) < 90*time.Millisecond {
		t.Fatalf("err %v (%s) after %v", err, Classify(err), time.Since(start))
	}
	var me *Error
	if !errors.As(err, &me) || me.Op != "acquire" || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %#v", err)
	}
	t.Logf("timeout error: %v", err)

	// Another key is not blocked by a's cap.
	other, err := p.Acquire(ctx, "b", accts[1])
	if err != nil {
		t.Fatal(err)
	}

	// A waiter gets the connection as soon as it is released.
	got := make(chan *Conn)
	go func() {
		c, err := p.Acquire(ctx, "a", accts[0])
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	time.Sleep(50 * time.Millisecond)
	held.Release()
	select {
	case c := <-got:
		if c.Client() != held.Client() {
			t.Error("waiter did not get the released connection")
		}
		c.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken")
	}
	other.Release()

	// Canceled while waiting.
	block, _ := p.Acquire(ctx, "a", accts[0])
	cctx, ccancel := context.WithCancel(ctx)
	go func() { time.Sleep(20 * time.Millisecond); ccancel() }()
	if _, err := p.Acquire(cctx, "a", accts[0]); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled wait: %v", err)
	}
	block.Release()
}

func TestPoolGlobalCapEvictsIdle(t *testing.T) {
	_, accts := memAccounts(t, 2)
	p := newTestPool(t, PoolOptions{PerUser: 2, Global: 1})
	ctx := context.Background()
	a, err := p.Acquire(ctx, "a", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	aClient := a.Client()
	a.Release()
	// b must not wait for a's idle connection to expire.
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := p.Acquire(tctx, "b", accts[1])
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-aClient.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("evicted connection not closed")
	}
	if s := p.Stats(); s.Open != 1 || s.Idle != 0 || gaugeValue(p) != 1 {
		t.Fatalf("stats %+v gauge %d", s, gaugeValue(p))
	}
	b.Release()
}

func TestPoolAccountChange(t *testing.T) {
	_, accts := memAccounts(t, 1)
	p := newTestPool(t, PoolOptions{})
	var dialed []string
	var mu sync.Mutex
	p.dial = func(ctx context.Context, a Account, o DialOptions) (*imapclient.Client, error) {
		mu.Lock()
		dialed = append(dialed, a.Password)
		mu.Unlock()
		real := accts[0]
		return Dial(ctx, real, o)
	}
	ctx := context.Background()
	old := accts[0]
	old.Password = "old"
	changed := accts[0]
	changed.Password = "new"

	c1, err := p.Acquire(ctx, "k", old)
	if err != nil {
		t.Fatal(err)
	}
	inUse, err := p.Acquire(ctx, "k", old)
	if err != nil {
		t.Fatal(err)
	}
	oldClient := c1.Client()
	c1.Release()

	c2, err := p.Acquire(ctx, "k", changed)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Client() == oldClient {
		t.Fatal("connection of the old account reused for the new one")
	}
	<-oldClient.Closed() // the idle old one is closed
	// The old one still in use is closed when released, not kept.
	inUseClient := inUse.Client()
	inUse.Release()
	<-inUseClient.Closed()
	c2.Release()
	c3, _ := p.Acquire(ctx, "k", changed)
	if c3.Client() != c2.Client() {
		t.Fatal("new account's connection not reused")
	}
	c3.Release()
	if want := []string{"old", "old", "new"}; fmt.Sprint(dialed) != fmt.Sprint(want) {
		t.Fatalf("dialed %v, want %v", dialed, want)
	}
	if s := p.Stats(); s.Open != 1 || gaugeValue(p) != 1 {
		t.Fatalf("stats %+v gauge %d", s, gaugeValue(p))
	}
}

func TestPoolDialError(t *testing.T) {
	_, accts := memAccounts(t, 1)
	p := newTestPool(t, PoolOptions{PerUser: 1})
	bad := accts[0]
	bad.Password = "wrong"
	for i := 0; i < 3; i++ { // the slot is given back every time
		_, err := p.Acquire(context.Background(), "k", bad)
		if Classify(err) != ClassAuth {
			t.Fatalf("err %v", err)
		}
	}
	if s := p.Stats(); s.Open != 0 || s.Keys != 0 {
		t.Fatalf("stats %+v", s)
	}
	c, err := p.Acquire(context.Background(), "k", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
}

func TestPoolCloseUserAndClose(t *testing.T) {
	_, accts := memAccounts(t, 2)
	p := newTestPool(t, PoolOptions{})
	ctx := context.Background()
	idle, _ := p.Acquire(ctx, "a", accts[0])
	busy, _ := p.Acquire(ctx, "a", accts[0])
	idleClient, busyClient := idle.Client(), busy.Client()
	idle.Release()

	p.CloseUser("a")
	<-idleClient.Closed()
	busy.Release()
	<-busyClient.Closed()
	if s := p.Stats(); s.Open != 0 || s.Keys != 0 {
		t.Fatalf("after CloseUser: %+v", s)
	}
	p.CloseUser("nobody")

	b1, _ := p.Acquire(ctx, "b", accts[1])
	b2, _ := p.Acquire(ctx, "b", accts[1])
	b1Client, b2Client := b1.Client(), b2.Client()
	b1.Release()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	<-b1Client.Closed()
	if _, err := p.Acquire(ctx, "b", accts[1]); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Acquire after Close: %v", err)
	}
	b2.Release()
	<-b2Client.Closed()
	if s := p.Stats(); s.Open != 0 || gaugeValue(p) != 0 {
		t.Fatalf("after Close: %+v gauge %d", s, gaugeValue(p))
	}
	p.Close() // idempotent
}

func TestPoolClosedConnectionNotReused(t *testing.T) {
	_, accts := memAccounts(t, 1)
	p := newTestPool(t, PoolOptions{})
	ctx := context.Background()
	c, _ := p.Acquire(ctx, "a", accts[0])
	client := c.Client()
	c.Release()
	client.Close() // e.g. the server hung up while idle
	c2, err := p.Acquire(ctx, "a", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	if c2.Client() == client {
		t.Fatal("closed connection handed out")
	}
	c2.Release()
}

func TestPoolMaxIdleSweep(t *testing.T) {
	_, accts := memAccounts(t, 1)
	p := newTestPool(t, PoolOptions{MaxIdle: 20 * time.Millisecond})
	c, _ := p.Acquire(context.Background(), "a", accts[0])
	client := c.Client()
	c.Release()
	p.sweep()
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("fresh connection swept: %+v", s)
	}
	time.Sleep(40 * time.Millisecond)
	p.sweep()
	<-client.Closed()
	if s := p.Stats(); s.Idle != 0 || s.Open != 0 || gaugeValue(p) != 0 {
		t.Fatalf("after sweep: %+v", s)
	}
}

func TestPoolIdleCheckDetectsHalfOpen(t *testing.T) {
	srv, accts := memAccounts(t, 1)
	proxy := newTestProxy(t, net.JoinHostPort(srv.Host, strconv.Itoa(srv.Port)))
	acct := proxy.account(accts[0])

	p := newTestPool(t, PoolOptions{IdleCheck: 10 * time.Millisecond, Dial: DialOptions{Timeout: 300 * time.Millisecond}})
	ctx := context.Background()
	c, err := p.Acquire(ctx, "a", acct)
	if err != nil {
		t.Fatal(err)
	}
	first := c.Client()
	c.Release()

	// Idle longer than IdleCheck: checked with NOOP, still fine, reused.
	time.Sleep(30 * time.Millisecond)
	c, err = p.Acquire(ctx, "a", acct)
	if err != nil {
		t.Fatal(err)
	}
	if c.Client() != first || p.Stats().Checks != 1 {
		t.Fatalf("healthy idle connection not reused after NOOP: %+v", p.Stats())
	}
	c.Release()

	// The network path dies silently: the NOOP times out, the connection is
	// dropped and a fresh one dialed.
	time.Sleep(30 * time.Millisecond)
	proxy.Freeze()
	start := time.Now()
	c, err = p.Acquire(ctx, "a", acct)
	if err != nil {
		t.Fatal(err)
	}
	if c.Client() == first {
		t.Fatal("half-open connection handed out")
	}
	if err := c.Client().Noop().Wait(); err != nil {
		t.Fatalf("fresh connection: %v", err)
	}
	s := p.Stats()
	if s.Checks != 2 || s.Dials != 2 || s.Dropped != 1 || gaugeValue(p) != 1 {
		t.Fatalf("stats %+v gauge %d", s, gaugeValue(p))
	}
	t.Logf("half-open connection replaced in %v", time.Since(start).Round(time.Millisecond))
	c.Release()
}

func TestPoolWaitTimeoutLeavesNoKey(t *testing.T) {
	_, accts := memAccounts(t, 2)
	p := newTestPool(t, PoolOptions{Global: 1})
	ctx := context.Background()
	a, err := p.Acquire(ctx, "a", accts[0])
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(short, "b", accts[1]); Classify(err) != ClassTimeout || !strings.Contains(err.Error(), "global limit of 1") {
		t.Fatalf("err %v", err)
	}
	if s := p.Stats(); s.Keys != 1 {
		t.Fatalf("waiting key left behind: %+v", s)
	}
	done, cancelNow := context.WithCancel(ctx)
	cancelNow()
	if _, err := p.Acquire(done, "a", accts[0]); !errors.Is(err, context.Canceled) {
		t.Fatalf("done context: %v", err)
	}
	a.Release()
}
