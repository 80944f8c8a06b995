package poller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/poller"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// server is an IMAP server the poller is pointed at.
type server struct {
	host    string
	port    int
	deliver func(t *testing.T, user string, raw []byte)
	addUser func(t *testing.T, user, pw string)
}

func servers(t *testing.T, accounts map[string]string) map[string]server {
	mem := testsvc.MemIMAP(t, accounts)
	dove := testsvc.Dovecot(t, accounts)
	return map[string]server{
		"memserver": {mem.Host, mem.Port, func(t *testing.T, u string, raw []byte) { mem.Deliver(t, u, raw) }, nil},
		"dovecot": {dove.Host, dove.Port, func(t *testing.T, u string, raw []byte) { dove.Deliver(t, u, raw) },
			func(t *testing.T, u, pw string) { dove.AddUser(t, u, pw) }},
	}
}

// fixture is a poller over real stores: SQLite for workflows, the embedded KV.
type fixture struct {
	kv       kv.Store
	wf       *workflow.Store
	users    *users.Store
	settings *settings.Store
	reg      *prometheus.Registry
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	store := kv.NewSQL(db)
	return &fixture{kv: store, wf: workflow.NewStore(db), users: users.NewStore(db), settings: settings.NewStore(store, box), reg: prometheus.NewRegistry()}
}

// user creates a user with IMAP settings and one active new_email workflow.
func (f *fixture) user(t *testing.T, email string, srv server, imapUser, imapPass string, rules workflow.FilterRules) (userid.ID, workflow.Workflow) {
	t.Helper()
	ctx := context.Background()
	u, err := f.users.Create(ctx, users.NewUser{Email: email})
	if err != nil {
		t.Fatal(err)
	}
	patch := settings.Patch{}
	for k, v := range map[string]any{"imap_server": srv.host, "imap_port": srv.port, "imap_security": "none", "imap_username": imapUser, "imap_password": imapPass} {
		b, _ := json.Marshal(v)
		patch[k] = b
	}
	if err := f.settings.Update(ctx, u.ID, patch); err != nil {
		t.Fatal(err)
	}
	wf, err := f.wf.CreateWorkflow(ctx, u.ID, workflow.Workflow{
		Name: "label " + email, Active: true,
		Trigger: &workflow.Trigger{Type: workflow.TriggerNewEmail, FilterRules: rules},
		Steps:   []workflow.Step{{Name: "label", Kind: workflow.KindTool, Tool: "imap-set_label", Arguments: json.RawMessage(`{"messageId":"<<trigger.message_id>>","label":"seen"}`)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return u.ID, wf
}

// run builds a poller over the fixture's stores with inbox (and st, or the
// fixture's settings when nil), its metrics in f.reg (one poller per
// fixture), and runs it until the returned stop, which
// waits for Run to return; the test's end stops it too.
func (f *fixture) run(t *testing.T, cfg poller.Config, inbox poller.Inbox, st poller.Settings) (stop func()) {
	t.Helper()
	if st == nil {
		st = f.settings
	}
	p, err := poller.New(cfg, f.kv, f.wf, st, inbox, slog.New(slog.NewTextHandler(io.Discard, nil)), f.reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func (f *fixture) start(t *testing.T, cfg poller.Config) *poller.Poller {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	pool, err := mail.NewPool(mail.PoolOptions{PerUser: 2, Dial: mail.DialOptions{Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	if cfg.Owner == "" {
		cfg.Owner = "test-replica"
	}
	if cfg.Interval == 0 {
		cfg.Interval = 150 * time.Millisecond
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = 100 * time.Millisecond
	}
	inbox := &poller.IMAPInbox{Pool: pool, Dial: mail.DialOptions{Timeout: 5 * time.Second}}
	p, err := poller.New(cfg, f.kv, f.wf, f.settings, inbox, logger, f.reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() {
		start := time.Now()
		cancel()
		<-done
		t.Logf("poller stopped in %s", time.Since(start))
	})
	return p
}

func message(n int, from, subject string) []byte {
	return []byte(fmt.Sprintf("From: %s\r\nTo: me@example.com\r\nSubject: %s\r\nDate: Mon, 02 Jan 2026 15:04:05 +0000\r\nMessage-ID: <msg-%d-%d@example.com>\r\n\r\nHello %d\r\n", from, subject, n, time.Now().UnixNano(), n))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) instances(t *testing.T, user userid.ID, wf workflow.Workflow) []workflow.Instance {
	t.Helper()
	list, err := f.wf.ListInstances(context.Background(), user, wf.ID, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func (f *fixture) baselined(user userid.ID) func() bool {
	return func() bool {
		_, err := f.kv.Get(context.Background(), user.Key("last_email_uidvalidity"))
		return err == nil
	}
}

// TestTwoUsersIsolated: a mail to A runs only A's workflow, a mail to B only
// B's, and each user's trigger state lives under that user's own keys.
func TestTwoUsersIsolated(t *testing.T) {
	for name, srv := range servers(t, map[string]string{"alice": "pw-a", "bob": "pw-b"}) {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			a, wfA := f.user(t, "alice@example.com", srv, "alice", "pw-a", workflow.FilterRules{})
			b, wfB := f.user(t, "bob@example.com", srv, "bob", "pw-b", workflow.FilterRules{})
			srv.deliver(t, "alice", message(0, "old@example.com", "old mail")) // before the baseline: never run
			f.start(t, poller.Config{})
			waitFor(t, "baselines", 10*time.Second, func() bool { return f.baselined(a)() && f.baselined(b)() })

			srv.deliver(t, "alice", message(1, "Carol <carol@example.com>", "for alice"))
			waitFor(t, "A's instance", 10*time.Second, func() bool { return len(f.instances(t, a, wfA)) == 1 })
			inst := f.instances(t, a, wfA)[0]
			full, err := f.wf.GetInstance(context.Background(), a, inst.ID)
			if err != nil {
				t.Fatal(err)
			}
			if full.Trigger.Email == nil || full.Trigger.Email.Subject != "for alice" || !strings.Contains(full.Trigger.Markdown, "# Email Thread") || !strings.Contains(full.Trigger.Markdown, "Hello 1") {
				t.Errorf("A's trigger input: %+v", full.Trigger)
			}
			if n := len(f.instances(t, b, wfB)); n != 0 {
				t.Fatalf("B has %d instances after a mail to A", n)
			}
			srv.deliver(t, "bob", message(2, "dave@example.com", "for bob"))
			waitFor(t, "B's instance", 10*time.Second, func() bool { return len(f.instances(t, b, wfB)) == 1 })
			time.Sleep(300 * time.Millisecond) // a few more polls: nothing more may appear
			if na, nb := len(f.instances(t, a, wfA)), len(f.instances(t, b, wfB)); na != 1 || nb != 1 {
				t.Fatalf("instances A=%d B=%d, want 1 and 1", na, nb)
			}
			// B's workflow cannot be reached as A and vice versa.
			if _, err := f.wf.GetInstance(context.Background(), b, inst.ID); err == nil {
				t.Error("B can read A's instance")
			}
			keys, err := f.kv.Scan(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			for k := range keys {
				if !strings.HasPrefix(k, a.KeyPrefix()) && !strings.HasPrefix(k, b.KeyPrefix()) && !strings.HasPrefix(k, "lease:") {
					t.Errorf("key outside the users' prefixes: %s", k)
				}
			}
			for _, u := range []userid.ID{a, b} {
				for _, suffix := range []string{"last_email_uid", "last_email_uidvalidity"} {
					if _, ok := keys[u.Key(suffix)]; !ok {
						t.Errorf("missing %s", u.Key(suffix))
					}
				}
			}
		})
	}
}

// TestFilterRulesAndSkips: filter rules pick workflows; mail from the user
// itself and mail without a Message-ID start nothing.
func TestFilterRulesAndSkips(t *testing.T) {
	srv := servers(t, map[string]string{"alice@example.com": "pw"})["memserver"]
	f := newFixture(t)
	a, wf := f.user(t, "alice@example.com", srv, "alice@example.com", "pw", workflow.FilterRules{DomainWhitelist: []string{"customer.example"}})
	f.start(t, poller.Config{})
	waitFor(t, "baseline", 10*time.Second, f.baselined(a))
	srv.deliver(t, "alice@example.com", message(1, "x@other.example", "not whitelisted"))
	srv.deliver(t, "alice@example.com", message(2, "Alice <ALICE@example.com>", "self-sent"))
	srv.deliver(t, "alice@example.com", []byte("From: y@customer.example\r\nSubject: no id\r\n\r\nbody\r\n"))
	srv.deliver(t, "alice@example.com", message(4, "Y <Y@Customer.Example>", "whitelisted"))
	waitFor(t, "the whitelisted mail's instance", 10*time.Second, func() bool { return len(f.instances(t, a, wf)) >= 1 })
	waitFor(t, "all four handled", 10*time.Second, func() bool {
		v, _ := f.kv.Get(context.Background(), a.Key("last_email_uid"))
		return v == "4"
	})
	list := f.instances(t, a, wf)
	if len(list) != 1 {
		t.Fatalf("%d instances, want 1", len(list))
	}
	full, _ := f.wf.GetInstance(context.Background(), a, list[0].ID)
	if full.Trigger.Email.Subject != "whitelisted" {
		t.Errorf("ran for %q", full.Trigger.Email.Subject)
	}
}

// TestUIDValidityChange: recreating the mailbox re-baselines without
// re-running old mail.
func TestUIDValidityChange(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"alice": "pw"})
	srv := server{dove.Host, dove.Port, func(t *testing.T, u string, raw []byte) { dove.Deliver(t, u, raw) }, nil}
	f := newFixture(t)
	a, wf := f.user(t, "alice@example.com", srv, "alice", "pw", workflow.FilterRules{})
	f.start(t, poller.Config{})
	waitFor(t, "baseline", 10*time.Second, f.baselined(a))
	for i := range 3 {
		srv.deliver(t, "alice", message(i, "c@example.com", "before"))
	}
	waitFor(t, "3 instances", 10*time.Second, func() bool { return len(f.instances(t, a, wf)) == 3 })
	oldValidity, _ := f.kv.Get(context.Background(), a.Key("last_email_uidvalidity"))
	dove.Doveadm(t, "mailbox", "update", "-u", "alice", "--uid-validity", "4242", "INBOX")
	waitFor(t, "re-baseline", 10*time.Second, func() bool {
		v, _ := f.kv.Get(context.Background(), a.Key("last_email_uidvalidity"))
		return v == "4242"
	})
	if oldValidity == "4242" {
		t.Fatal("test setup: validity did not change")
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(f.instances(t, a, wf)); n != 3 {
		t.Fatalf("after the UIDVALIDITY change: %d instances, want still 3", n)
	}
	srv.deliver(t, "alice", message(9, "c@example.com", "after"))
	waitFor(t, "the new mail's instance", 10*time.Second, func() bool { return len(f.instances(t, a, wf)) == 4 })
	if got := counter(t, f.reg, "inboxd_uidvalidity_resets_total", ""); got != 1 {
		t.Errorf("inboxd_uidvalidity_resets_total = %v", got)
	}
}

// TestWrongPasswordBacksOff: a user whose login fails backs off, visibly,
// while another user on the same server keeps being served.
func TestWrongPasswordBacksOff(t *testing.T) {
	srv := servers(t, map[string]string{"alice": "pw", "mallory": "right"})["dovecot"]
	f := newFixture(t)
	a, wf := f.user(t, "alice@example.com", srv, "alice", "pw", workflow.FilterRules{})
	m, _ := f.user(t, "mallory@example.com", srv, "mallory", "wrong", workflow.FilterRules{})
	f.start(t, poller.Config{AuthBackoff: time.Hour})
	waitFor(t, "auth failure recorded", 10*time.Second, func() bool {
		st, _ := poller.ReadStatus(context.Background(), f.kv, m)
		return st.State == poller.StateAuthFailed
	})
	st, _ := poller.ReadStatus(context.Background(), f.kv, m)
	if !st.NextAttempt.After(time.Now().Add(10*time.Minute)) || !strings.Contains(st.LastError, "auth") || strings.Contains(st.LastError, "wrong") {
		t.Errorf("status of the failing user: %+v", st)
	}
	waitFor(t, "baseline", 10*time.Second, f.baselined(a))
	srv.deliver(t, "alice", message(1, "c@example.com", "still served"))
	waitFor(t, "A's instance", 10*time.Second, func() bool { return len(f.instances(t, a, wf)) == 1 })
	failures := counter(t, f.reg, "inboxd_polls_total", "auth_error")
	time.Sleep(500 * time.Millisecond)
	if again := counter(t, f.reg, "inboxd_polls_total", "auth_error"); failures != 1 || again != failures {
		t.Errorf("auth_error polls: %v then %v; want exactly 1 (backed off)", failures, again)
	}
	if ok := counter(t, f.reg, "inboxd_polls_total", "ok"); ok < 3 {
		t.Errorf("ok polls = %v; the other user should keep polling", ok)
	}
	if n := gauge(t, f.reg, "inboxd_tenants", "auth_failed"); n != 1 {
		t.Errorf("inboxd_tenants{state=auth_failed} = %v", n)
	}
}

// TestIdleDetectsQuickly: with IDLE and a long interval, a delivered mail
// starts its workflow well within the interval.
func TestIdleDetectsQuickly(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"alice": "pw"})
	srv := server{dove.Host, dove.Port, func(t *testing.T, u string, raw []byte) { dove.Deliver(t, u, raw) }, nil}
	f := newFixture(t)
	a, wf := f.user(t, "alice@example.com", srv, "alice", "pw", workflow.FilterRules{})
	f.start(t, poller.Config{Interval: time.Minute, Jitter: 0.0001, IDLE: true})
	waitFor(t, "baseline", 10*time.Second, f.baselined(a))
	time.Sleep(300 * time.Millisecond) // let the IDLE connection settle
	start := time.Now()
	srv.deliver(t, "alice", message(1, "c@example.com", "push"))
	waitFor(t, "the instance", 10*time.Second, func() bool { return len(f.instances(t, a, wf)) == 1 })
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s", d)
	} else {
		t.Logf("IDLE detection: %s (interval 1m)", d)
	}
}

// TestLeaseSplitsUsers: two pollers (replicas) on one KV split the users
// between them by the leases; when one stops, the other takes its users
// over, all of them: the replica that shed leases to make room counts them
// out, so its fair share is not used up by holdings it gave away.
func TestLeaseSplitsUsers(t *testing.T) {
	// Eight users: a replica's fair share has a slack of one, so with two
	// replicas the first sheds three, more than the slack.
	const users = 8
	accounts := map[string]string{}
	for i := 1; i <= users; i++ {
		accounts[fmt.Sprintf("u%d", i)] = "pw"
	}
	srv := servers(t, accounts)["memserver"]
	f := newFixture(t)
	var ids []userid.ID
	var wfs []workflow.Workflow
	for i := 1; i <= users; i++ {
		id, wf := f.user(t, fmt.Sprintf("u%d@example.com", i), srv, fmt.Sprintf("u%d", i), "pw", workflow.FilterRules{})
		ids, wfs = append(ids, id), append(wfs, wf)
	}
	ctx1, stop1 := context.WithCancel(context.Background())
	p1, err := poller.New(poller.Config{Owner: "r1", Interval: 100 * time.Millisecond, Refresh: 50 * time.Millisecond, LeaseTTL: 600 * time.Millisecond}, f.kv, f.wf, f.settings, newInbox(t), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	done1 := make(chan struct{})
	go func() { p1.Run(ctx1); close(done1) }()
	defer func() { stop1(); <-done1 }()
	waitFor(t, "r1 holds all leases", 5*time.Second, func() bool { return leaseHolders(t, f.kv, ids)["r1"] == users })
	// A second replica joins: the first sheds leases down to its fair share,
	// and the second takes them; a user is never held by both.
	stop2 := f.run(t, poller.Config{Owner: "r2", Interval: 100 * time.Millisecond, Refresh: 50 * time.Millisecond, LeaseTTL: 600 * time.Millisecond}, newInbox(t), nil)
	waitFor(t, "the users split between the replicas", 5*time.Second, func() bool {
		h := leaseHolders(t, f.kv, ids)
		return h["r1"] >= 1 && h["r2"] >= 1 && h["r1"]+h["r2"] == users
	})
	stop2()
	waitFor(t, "r1 takes over", 5*time.Second, func() bool { return leaseHolders(t, f.kv, ids)["r1"] == users })
	for i, id := range ids {
		waitFor(t, "baseline", 5*time.Second, f.baselined(id))
		srv.deliver(t, fmt.Sprintf("u%d", i+1), message(i, "c@example.com", "after takeover"))
	}
	for i, id := range ids {
		waitFor(t, "instance after takeover", 10*time.Second, func() bool { return len(f.instances(t, id, wfs[i])) == 1 })
	}
}

func newInbox(t *testing.T) poller.Inbox {
	pool, err := mail.NewPool(mail.PoolOptions{PerUser: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return &poller.IMAPInbox{Pool: pool}
}

func leaseHolders(t *testing.T, store kv.Store, ids []userid.ID) map[string]int {
	out := map[string]int{}
	for _, id := range ids {
		if v, err := store.Get(context.Background(), "lease:poll:"+id.String()); err == nil {
			out[v]++
		}
	}
	return out
}

// counter reads a counter's value (label "" for none) from the registry.
func counter(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	return metricValue(t, reg, name, label, func(m *metricPB) float64 { return m.GetCounter().GetValue() })
}

func gauge(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	return metricValue(t, reg, name, label, func(m *metricPB) float64 { return m.GetGauge().GetValue() })
}

type metricPB = dto.Metric

func metricValue(t *testing.T, reg *prometheus.Registry, name, label string, value func(*metricPB) float64) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			if label == "" || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == label) {
				return value(m)
			}
		}
	}
	return 0
}

// fetchCounter counts the messages a poller fetches, by UID.
type fetchCounter struct {
	poller.Inbox
	mu      sync.Mutex
	fetched map[uint32]int
}

func (c *fetchCounter) Message(ctx context.Context, user userid.ID, acct mail.Account, uid uint32) (poller.Message, error) {
	c.mu.Lock()
	c.fetched[uid]++
	c.mu.Unlock()
	return c.Inbox.Message(ctx, user, acct, uid)
}

func (c *fetchCounter) count(uid uint32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fetched[uid]
}

// TestTriggerStateRereadOnNewHolding: a tenant keeps its trigger state in
// memory while it holds the lease, but reads it again after losing and
// retaking the lease, since another replica may have handled mail meanwhile.
// Without the re-read the poller would fetch and handle that mail again.
func TestTriggerStateRereadOnNewHolding(t *testing.T) {
	srv := servers(t, map[string]string{"u1": "pw"})["memserver"]
	f := newFixture(t)
	id, wf := f.user(t, "u1@example.com", srv, "u1", "pw", workflow.FilterRules{})
	inbox := &fetchCounter{Inbox: newInbox(t), fetched: map[uint32]int{}}
	const ttl = 600 * time.Millisecond
	f.run(t, poller.Config{Owner: "r1", Interval: 50 * time.Millisecond, Refresh: 50 * time.Millisecond, LeaseTTL: ttl}, inbox, nil)
	ctx := context.Background()

	waitFor(t, "baseline", 5*time.Second, f.baselined(id))
	baseline, err := f.kv.Get(ctx, id.Key("last_email_uid"))
	if err != nil {
		t.Fatal(err)
	}
	srv.deliver(t, "u1", message(1, "c@example.com", "first"))
	waitFor(t, "the first mail's instance", 5*time.Second, func() bool { return len(f.instances(t, id, wf)) == 1 })
	// The state advances just after the instance is created.
	var last string
	waitFor(t, "the state to advance past the first mail", 5*time.Second, func() bool {
		last, _ = f.kv.Get(ctx, id.Key("last_email_uid"))
		return last != baseline
	})

	// Another replica takes the lease, handles the second mail and advances
	// the state; the poller must stop polling meanwhile.
	lease := "lease:poll:" + id.String()
	if err := f.kv.Set(ctx, lease, "r2", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "r1 to notice the lease is gone", 5*time.Second, func() bool {
		return gauge(t, f.reg, "inboxd_tenants", poller.StateElsewhere) == 1
	})
	srv.deliver(t, "u1", message(2, "c@example.com", "handled elsewhere"))
	lastN, _ := strconv.ParseUint(last, 10, 32)
	second := uint32(lastN) + 1
	if err := f.kv.Set(ctx, id.Key("last_email_uid"), strconv.FormatUint(uint64(second), 10), 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * ttl / 2)
	if n := inbox.count(second); n != 0 {
		t.Fatalf("r1 fetched uid %d %d times without the lease", second, n)
	}

	// The lease comes back: the third mail is handled, the second is not.
	if err := f.kv.Delete(ctx, lease); err != nil {
		t.Fatal(err)
	}
	srv.deliver(t, "u1", message(3, "c@example.com", "third"))
	waitFor(t, "the third mail's instance", 5*time.Second, func() bool { return len(f.instances(t, id, wf)) == 2 })
	if n := inbox.count(second); n != 0 {
		t.Errorf("uid %d, handled by another replica, was fetched %d times after the lease came back", second, n)
	}
	if n := inbox.count(second + 1); n != 1 {
		t.Errorf("uid %d fetched %d times, want 1", second+1, n)
	}
}

// statusCounter counts the checks (STATUS) a poller makes.
type statusCounter struct {
	poller.Inbox
	n atomic.Int64
}

func (c *statusCounter) Status(ctx context.Context, user userid.ID, acct mail.Account) (poller.MailboxStatus, error) {
	c.n.Add(1)
	return c.Inbox.Status(ctx, user, acct)
}

// TestIdleConnectionServesPolls: a watched user's polls borrow its IDLE
// connection between two IDLEs instead of opening a pooled one, so IDLE mode
// costs one connection per user; and mail is still detected by IDLE.
func TestIdleConnectionServesPolls(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"alice": "pw"})
	f := newFixture(t)
	srv := server{dove.Host, dove.Port, func(t *testing.T, u string, raw []byte) { dove.Deliver(t, u, raw) }, nil}
	a, wf := f.user(t, "alice@example.com", srv, "alice", "pw", workflow.FilterRules{})
	pool, err := mail.NewPool(mail.PoolOptions{PerUser: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	inbox := &statusCounter{Inbox: &poller.IMAPInbox{Pool: pool}}
	f.run(t, poller.Config{Owner: "r1", Interval: 100 * time.Millisecond, Refresh: 50 * time.Millisecond, IDLE: true}, inbox, nil)

	waitFor(t, "baseline", 10*time.Second, f.baselined(a))
	for i := range 3 {
		dove.Deliver(t, "alice", message(i, "c@example.com", "over the idle connection"))
	}
	waitFor(t, "3 instances", 10*time.Second, func() bool { return len(f.instances(t, a, wf)) == 3 })
	waitFor(t, "20 polls", 10*time.Second, func() bool { return inbox.n.Load() >= 20 })
	// The first poll may race the IDLE connection's set-up and dial one
	// pooled connection; every later one borrows the IDLE connection.
	if s := pool.Stats(); s.Dials > 1 || s.Reuses > 0 {
		t.Errorf("the pool dialed %d and reused %d connections for %d polls of a watched user; want at most 1 dial and no reuse", s.Dials, s.Reuses, inbox.n.Load())
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(f.instances(t, a, wf)); n != 3 {
		t.Errorf("%d instances, want 3", n)
	}
}

// quietInbox is an inbox that never has mail and holds no connection: what
// it costs is the poller's own.
type quietInbox struct {
	mu     sync.Mutex
	polled map[userid.ID]bool
}

func (q *quietInbox) Status(_ context.Context, user userid.ID, _ mail.Account) (poller.MailboxStatus, error) {
	q.mu.Lock()
	q.polled[user] = true
	q.mu.Unlock()
	return poller.MailboxStatus{UIDValidity: 1, UIDNext: 1}, nil
}

func (q *quietInbox) NewUIDs(context.Context, userid.ID, mail.Account, uint32, int) ([]uint32, error) {
	return nil, nil
}

func (q *quietInbox) Message(context.Context, userid.ID, mail.Account, uint32) (poller.Message, error) {
	return poller.Message{}, mail.ErrMessageNotFound
}

func (q *quietInbox) Watch(context.Context, userid.ID, mail.Account, func(), func(error)) error {
	return poller.ErrIdleUnsupported
}

func (q *quietInbox) users() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.polled)
}

// TestTenantsCostNoGoroutines: a polled user has no goroutine of its own
// (its poll clock and lease renewals are timers, its polls run on the
// worker pool), so memory per tenant is not a set of goroutine stacks grown
// to the depth of a poll. With one goroutine per tenant loop and one per
// lease keeper, 200 tenants would add 400.
func TestTenantsCostNoGoroutines(t *testing.T) {
	f := newFixture(t)
	const users = 200
	srv := server{host: "imap.example.invalid", port: 993}
	for i := range users {
		f.user(t, fmt.Sprintf("q%d@example.com", i), srv, "q", "pw", workflow.FilterRules{})
	}
	inbox := &quietInbox{polled: map[userid.ID]bool{}}
	cfg := poller.Config{Owner: "r1", Interval: 100 * time.Millisecond, Refresh: 50 * time.Millisecond, Workers: 4}
	before := runtime.NumGoroutine()
	stop := f.run(t, cfg, inbox, nil)
	waitFor(t, "every user polled", 20*time.Second, func() bool { return inbox.users() == users })
	most := 0
	for range 20 { // polls go on meanwhile: a timer's goroutine lives for one callback
		most = max(most, runtime.NumGoroutine()-before)
		time.Sleep(10 * time.Millisecond)
	}
	// Run's own goroutine, the workers, timer callbacks in flight, and the
	// previous tests' goroutines still winding down: far fewer than one per
	// tenant.
	if limit := 1 + cfg.Workers + users/4; most > limit {
		t.Errorf("%d tenants added up to %d goroutines; want at most %d (none per tenant)", users, most, limit)
	}
	stop()
	if got := runtime.NumGoroutine() - before; got > users/10 {
		t.Errorf("%d goroutines left after Run returned", got)
	}
	ids, err := f.wf.UsersWithActiveTrigger(context.Background(), workflow.TriggerNewEmail)
	if err != nil {
		t.Fatal(err)
	}
	if held := leaseHolders(t, f.kv, ids)["r1"]; held != 0 {
		t.Errorf("%d leases still held after Run returned; a clean stop releases them all", held)
	}
}

// TestWatchedTenantsCostTwoGoroutines: in IDLE mode a watched user costs
// go-imap's two goroutines of its IDLE connection (the reader and the IDLE
// restarter) and nothing of the poller's: no watcher goroutine waits on the
// connection (mail.Idler), and the user's polls borrow it from a worker.
func TestWatchedTenantsCostTwoGoroutines(t *testing.T) {
	const users = 50
	accounts := map[string]string{}
	for i := range users {
		accounts[fmt.Sprintf("w%d", i)] = "pw"
	}
	dove := testsvc.Dovecot(t, accounts)
	srv := server{dove.Host, dove.Port, func(t *testing.T, u string, raw []byte) { dove.Deliver(t, u, raw) }, nil}
	f := newFixture(t)
	ids := make([]userid.ID, users)
	wfs := make([]workflow.Workflow, users)
	for i := range users {
		ids[i], wfs[i] = f.user(t, fmt.Sprintf("w%d@example.com", i), srv, fmt.Sprintf("w%d", i), "pw", workflow.FilterRules{})
	}
	pool, err := mail.NewPool(mail.PoolOptions{PerUser: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	cfg := poller.Config{Owner: "r1", Interval: time.Hour, Jitter: 0.0001, Refresh: 50 * time.Millisecond, Workers: 2, IDLE: true}
	before := runtime.NumGoroutine()
	f.run(t, cfg, &poller.IMAPInbox{Pool: pool}, nil)
	for _, id := range ids {
		waitFor(t, "baseline", 20*time.Second, f.baselined(id))
	}
	// With an hour's interval, only IDLE finds this mail: every watch is up.
	for i := range users {
		dove.Deliver(t, fmt.Sprintf("w%d", i), message(i, "c@example.com", "seen by idle"))
	}
	for i, id := range ids {
		waitFor(t, "the mail, through IDLE", 20*time.Second, func() bool { return len(f.instances(t, id, wfs[i])) == 1 })
	}
	time.Sleep(100 * time.Millisecond) // the last polls' timer callbacks end
	// A first poll that raced its watch's set-up may have dialed a pooled
	// connection (a reader goroutine each): those are not the watches'.
	got := runtime.NumGoroutine() - before - pool.Stats().Open
	// Slack for timer callbacks in flight and goroutines of earlier tests
	// still ending; a third goroutine per user would add 50.
	if limit := 2*users + 1 + cfg.Workers + users/5; got > limit {
		t.Errorf("%d watched users added %d goroutines (pooled connections aside); want at most %d (two per user: go-imap's)", users, got, limit)
	}
}

// flakySettings fails every read while failing is set.
type flakySettings struct {
	poller.Settings
	failing atomic.Bool
}

func (s *flakySettings) Get(ctx context.Context, user userid.ID) (settings.Settings, error) {
	if s.failing.Load() {
		return settings.Settings{}, fmt.Errorf("settings store unreachable")
	}
	return s.Settings.Get(ctx, user)
}

// TestSettingsOutageKeepsPolling: a failed read of the settings (the store
// unreachable for a while) is no reason to stop polling a user: the tenant,
// its lease and its schedule stay as they were.
func TestSettingsOutageKeepsPolling(t *testing.T) {
	f := newFixture(t)
	id, _ := f.user(t, "flaky@example.com", server{host: "imap.example.invalid", port: 993}, "q", "pw", workflow.FilterRules{})
	inbox := &statusCounter{Inbox: &quietInbox{polled: map[userid.ID]bool{}}}
	st := &flakySettings{Settings: f.settings}
	f.run(t, poller.Config{Owner: "r1", Interval: 50 * time.Millisecond, Refresh: 20 * time.Millisecond}, inbox, st)
	waitFor(t, "first polls", 10*time.Second, func() bool { return inbox.n.Load() >= 3 })
	st.failing.Store(true)
	time.Sleep(100 * time.Millisecond) // several discovery rounds fail
	before := inbox.n.Load()
	time.Sleep(300 * time.Millisecond)
	if got := inbox.n.Load() - before; got < 3 {
		t.Errorf("%d polls in 300 ms while the settings could not be read; the user must go on being polled every 50 ms", got)
	}
	if h := leaseHolders(t, f.kv, []userid.ID{id})["r1"]; h != 1 {
		t.Errorf("lease held by r1: %d, want 1", h)
	}
}
