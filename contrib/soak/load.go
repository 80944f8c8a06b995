package main

// The load and the faults: mail APPENDed to random tenants at a fixed rate,
// plugin processes SIGKILLed, IMAP connections cut.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
)

// delivery is one mail: its sequence number (unique in the run, carried
// in the subject and the Message-ID) and the tenant it went to.
type delivery struct {
	Seq  int       `json:"seq"`
	User int       `json:"user"`
	At   time.Time `json:"at"`
}

// deliveryState is what became of a mail.
type deliveryState int

const (
	delivered deliveryState = iota
	failed                  // never in the mailbox
	uncertain               // the APPEND broke and the mailbox could not be asked: it may be there
)

// mailer delivers the soak's mail.
type mailer struct {
	port    int
	tenants int
	runID   string

	seq     atomic.Int64
	last    atomic.Int64 // the tenant of the latest delivery
	retries atomic.Int64

	mu     sync.Mutex
	done   []delivery // delivered
	states map[int]deliveryState
	errs   []string // the first delivery errors
}

func newMailer(port, tenants int) *mailer {
	return &mailer{port: port, tenants: tenants, runID: strconv.FormatUint(rand.Uint64(), 36), states: map[int]deliveryState{}}
}

// subjectRE reads a soak mail's subject back: sequence number and run id.
var subjectRE = regexp.MustCompile(`^inboxd-soak seq=([0-9]+) run=([0-9a-z]+)$`)

func (m *mailer) subject(seq int) string {
	return fmt.Sprintf("inboxd-soak seq=%d run=%s", seq, m.runID)
}

func (m *mailer) messageID(seq int) string {
	return fmt.Sprintf("inboxd-soak.%d.%s@soak.invalid", seq, m.runID)
}

func (m *mailer) message(d delivery) []byte {
	var b strings.Builder
	b.WriteString("From: Soak Sender <sender@soak.invalid>\r\n")
	fmt.Fprintf(&b, "To: <%s@soak.invalid>\r\n", imapUser(d.User))
	fmt.Fprintf(&b, "Subject: %s\r\n", m.subject(d.Seq))
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s>\r\n", m.messageID(d.Seq))
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	fmt.Fprintf(&b, "Soak mail %d for %s.\r\n", d.Seq, imapUser(d.User))
	return []byte(b.String())
}

func (m *mailer) account(user int) mail.Account {
	return mail.Account{Server: "127.0.0.1", Port: m.port, Security: mail.SecurityNone, Username: imapUser(user), Password: imapPassword}
}

// start delivers rate mails per second to random tenants on workers
// connections until the returned stop is called; stop waits for the mails
// under way.
func (m *mailer) start(ctx context.Context, rate float64, workers int) (stop func()) {
	jobs := make(chan delivery)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for d := range jobs {
				m.deliver(ctx, d)
			}
		})
	}
	quit, paced := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(paced)
		defer close(jobs)
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			d := delivery{Seq: int(m.seq.Add(1)), User: rand.IntN(m.tenants)}
			select {
			case jobs <- d:
			case <-quit:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			<-paced
			wg.Wait()
		})
	}
}

// deliver APPENDs one mail, on a fresh connection (a cut connection
// fails one mail, not a pool of them). When an APPEND breaks, the mail may
// have landed before the break: the mailbox is searched for its
// Message-ID before it is sent again, so a mail is never in it twice.
func (m *mailer) deliver(ctx context.Context, d delivery) {
	raw := m.message(d)
	state := failed
	var lastErr error
	for attempt := 1; attempt <= 3 && ctx.Err() == nil; attempt++ {
		if attempt > 1 {
			m.retries.Add(1)
			time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
		}
		d.At = time.Now()
		if lastErr = m.append(ctx, d.User, raw); lastErr == nil {
			state = delivered
			break
		}
		found, err := m.present(ctx, d)
		for try := 0; err != nil && try < 3 && ctx.Err() == nil; try++ {
			time.Sleep(500 * time.Millisecond)
			found, err = m.present(ctx, d)
		}
		if err != nil {
			state, lastErr = uncertain, fmt.Errorf("%w; then: %w", lastErr, err)
			break
		}
		if found {
			state = delivered
			break
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.states[d.Seq] = state
	if state == delivered {
		m.done = append(m.done, d)
		m.last.Store(int64(d.User))
		return
	}
	if len(m.errs) < 10 && lastErr != nil {
		m.errs = append(m.errs, fmt.Sprintf("mail %d to %s: %v", d.Seq, imapUser(d.User), lastErr))
	}
}

// session runs fn on a fresh logged-in connection of user, bounded by a
// minute.
func (m *mailer) session(ctx context.Context, user int, fn func(c *imapclient.Client) error) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, err := mail.Dial(ctx, m.account(user), mail.DialOptions{Timeout: 20 * time.Second})
	if err != nil {
		return fmt.Errorf("soak: log in as %s: %w", imapUser(user), err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	if err := fn(c); err != nil {
		return fmt.Errorf("soak: %s: %w", imapUser(user), err)
	}
	_ = c.Logout().Wait()
	return nil
}

func (m *mailer) append(ctx context.Context, user int, raw []byte) error {
	return m.session(ctx, user, func(c *imapclient.Client) error {
		cmd := c.Append("INBOX", int64(len(raw)), nil)
		if _, err := cmd.Write(raw); err != nil {
			cmd.Close()
			return fmt.Errorf("append: %w", err)
		}
		if err := cmd.Close(); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		if _, err := cmd.Wait(); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		return nil
	})
}

// present reports whether the mail is in its tenant's INBOX.
func (m *mailer) present(ctx context.Context, d delivery) (bool, error) {
	var found bool
	err := m.session(ctx, d.User, func(c *imapclient.Client) error {
		if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
			return fmt.Errorf("select: %w", err)
		}
		crit := &imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: m.messageID(d.Seq)}}}
		data, err := c.UIDSearch(crit, nil).Wait()
		if err != nil {
			return fmt.Errorf("search: %w", err)
		}
		found = len(data.AllUIDs()) > 0
		return nil
	})
	return found, err
}

// counts returns how many mails were delivered, failed and are uncertain.
func (m *mailer) counts() (ok, failedN, uncertainN int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.states {
		switch s {
		case delivered:
			ok++
		case failed:
			failedN++
		case uncertain:
			uncertainN++
		}
	}
	return ok, failedN, uncertainN
}

// Fault kinds.
const (
	faultPluginKill = "plugin_kill"
	faultIMAPCut    = "imap_cut"
)

// fault is one injected fault.
type fault struct {
	At       time.Time `json:"at"`
	Kind     string    `json:"kind"`
	Detail   string    `json:"detail"`
	Users    []string  `json:"users,omitempty"`    // imap_cut: every user whose connections were cut
	Restarts []restart `json:"restarts,omitempty"` // plugin_kill: when each plugin was back
	Error    string    `json:"error,omitempty"`    // the fault could not be injected
}

// restart is how long a killed plugin took to have a new process.
type restart struct {
	Plugin string `json:"plugin"`
	PID    int    `json:"killed_pid"`
	// After is in seconds; -1 while (or when, at the end) no new process
	// was seen.
	After float64 `json:"restarted_after_seconds"`
}

// injector injects the faults and records them.
type injector struct {
	daemonPID int
	dove      *dovecot
	mail      *mailer

	loops       sync.WaitGroup // the injecting loops
	watches     sync.WaitGroup // the restart watches
	watchCtx    context.Context
	stopWatches context.CancelFunc

	mu     sync.Mutex
	faults []fault
}

// record adds f and returns its index.
func (in *injector) record(f fault) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.faults = append(in.faults, f)
	return len(in.faults) - 1
}

func (in *injector) list() []fault {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := slices.Clone(in.faults)
	for i := range out {
		out[i].Restarts = slices.Clone(out[i].Restarts)
	}
	return out
}

// count returns how many faults of kind were injected.
func (in *injector) count(kind string) int {
	n := 0
	for _, f := range in.list() {
		if f.Kind == kind && f.Error == "" {
			n++
		}
	}
	return n
}

// start injects a plugin kill every killEvery and an IMAP cut every
// cutEvery (0 turns one off) until the returned stop is called. The
// watches for restarted plugins go on until finish.
func (in *injector) start(ctx context.Context, killEvery, cutEvery time.Duration) (stop func()) {
	in.watchCtx, in.stopWatches = context.WithCancel(ctx)
	ctx, cancel := context.WithCancel(ctx)
	every := func(d time.Duration, fn func(context.Context)) {
		if d <= 0 {
			return
		}
		in.loops.Go(func() { ticking(ctx, d, func() bool { fn(ctx); return true }) })
	}
	every(killEvery, in.killPlugins)
	every(cutEvery, in.cutIMAP)
	return func() { cancel(); in.loops.Wait() }
}

// finish ends the restart watches: a plugin not back by now is reported
// as such.
func (in *injector) finish() {
	if in.stopWatches != nil {
		in.stopWatches()
	}
	in.watches.Wait()
}

// killPlugins SIGKILLs every plugin process of the daemon, then watches
// for their new processes.
func (in *injector) killPlugins(context.Context) {
	f := fault{At: time.Now(), Kind: faultPluginKill}
	var killed []string
	for _, p := range pluginChildren(in.daemonPID) {
		name, _ := p.plugin()
		if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
			killed = append(killed, fmt.Sprintf("%s pid %d: %v", name, p.pid, err))
			continue
		}
		killed = append(killed, fmt.Sprintf("%s pid %d", name, p.pid))
		f.Restarts = append(f.Restarts, restart{Plugin: name, PID: p.pid, After: -1})
	}
	if len(killed) == 0 {
		f.Error = "no plugin process to kill (restarting?)"
	}
	f.Detail = strings.Join(killed, ", ")
	i := in.record(f)
	if len(f.Restarts) > 0 {
		in.watches.Go(func() { in.watchRestarts(in.watchCtx, i, f.At) })
	}
}

// watchRestarts polls /proc until every plugin killed by fault i has a
// new process, or ctx ends.
func (in *injector) watchRestarts(ctx context.Context, i int, killed time.Time) {
	ticking(ctx, 100*time.Millisecond, func() bool {
		now := time.Now()
		children := pluginChildren(in.daemonPID)
		in.mu.Lock()
		defer in.mu.Unlock()
		waiting := false
		for j := range in.faults[i].Restarts {
			r := &in.faults[i].Restarts[j]
			if r.After >= 0 {
				continue
			}
			if slices.ContainsFunc(children, func(p proc) bool { name, _ := p.plugin(); return name == r.Plugin && p.pid != r.PID }) {
				r.After = now.Sub(killed).Seconds()
				continue
			}
			waiting = true
		}
		return waiting
	})
}

// ticking calls fn every d until ctx ends or fn returns false.
func ticking(ctx context.Context, d time.Duration, fn func() bool) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if !fn() {
				return
			}
		}
	}
}

// cutIMAP cuts the IMAP connections of the tenant that got the latest
// mail (its run is likely under way: the plugin's connection is in use),
// and with it those of every tenant served by the same Dovecot processes.
func (in *injector) cutIMAP(ctx context.Context) {
	user := imapUser(int(in.mail.last.Load()))
	f := fault{At: time.Now(), Kind: faultIMAPCut}
	users, err := in.dove.kick(ctx, user)
	if ctx.Err() != nil {
		return // the soak stopped the faults during the kick
	}
	switch {
	case err != nil:
		f.Error = err.Error()
	case len(users) == 0:
		f.Error = "doveadm kick " + user + ": nobody connected"
	}
	f.Users = users
	f.Detail = fmt.Sprintf("kick -f %s: %d users cut", user, len(users))
	_ = in.record(f)
}
