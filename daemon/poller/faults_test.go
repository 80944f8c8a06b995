package poller_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inboxd/inboxd/daemon/poller"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/faultproxy"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// Fault injection between the poller and Dovecot (issue #8): a connection
// cut in the middle of a FETCH, and a server that stops answering.

// dovecotVia is dove as the poller sees it through px; mail is delivered
// to Dovecot directly.
func dovecotVia(dove *testsvc.DovecotServer, px *faultproxy.Proxy) server {
	host, port := dove.Host, dove.Port
	if px != nil {
		host, port = px.Host(), px.Port()
	}
	return server{host: host, port: port, deliver: func(t *testing.T, u string, raw []byte) { dove.Deliver(t, u, raw) }}
}

// workflow adds another active new_email workflow for user.
func (f *fixture) workflow(t *testing.T, user userid.ID, name string, rules workflow.FilterRules) workflow.Workflow {
	t.Helper()
	wf, err := f.wf.CreateWorkflow(context.Background(), user, workflow.Workflow{
		Name: name, Active: true,
		Trigger: &workflow.Trigger{Type: workflow.TriggerNewEmail, FilterRules: rules},
		Steps:   []workflow.Step{{Name: "summarise", Kind: workflow.KindLLM, SystemPrompt: "Summarise <<trigger_output>>"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return wf
}

// triggerState returns the user's stored last_email_uid and
// last_email_uidvalidity.
func (f *fixture) triggerState(t *testing.T, user userid.ID) string {
	t.Helper()
	vals, err := f.kv.MGet(context.Background(), user.Key("last_email_uid"), user.Key("last_email_uidvalidity"))
	if err != nil {
		t.Fatal(err)
	}
	return vals[user.Key("last_email_uid")] + "/" + vals[user.Key("last_email_uidvalidity")]
}

func (f *fixture) status(t *testing.T, user userid.ID) poller.Status {
	t.Helper()
	st, err := poller.ReadStatus(context.Background(), f.kv, user)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// morePolls waits for n more successful polls (of any user), so that a
// duplicate would have had its chance to appear.
func (f *fixture) morePolls(t *testing.T, n float64) {
	t.Helper()
	from := counter(t, f.reg, "inboxd_polls_total", "ok")
	waitFor(t, fmt.Sprintf("%v more polls", n), 30*time.Second, func() bool {
		return counter(t, f.reg, "inboxd_polls_total", "ok") >= from+n
	})
}

// wantInstances checks the exact number of instances of each workflow.
func (f *fixture) wantInstances(t *testing.T, user userid.ID, want map[*workflow.Workflow]int) {
	t.Helper()
	for wf, n := range want {
		if got := len(f.instances(t, user, *wf)); got != n {
			t.Errorf("workflow %q: %d instances, want %d", wf.Name, got, n)
		}
	}
}

// longMessage is a message whose body holds marker in its middle, well
// inside the FETCH literal.
func longMessage(subject, marker string) []byte {
	body := strings.Repeat("Some text before the marker.\r\n", 100) + marker + "\r\n" + strings.Repeat("And some after it.\r\n", 100)
	return []byte(fmt.Sprintf("From: Carol <carol@example.com>\r\nTo: me@example.com\r\nSubject: %s\r\nDate: Mon, 02 Jan 2026 15:04:05 +0000\r\nMessage-ID: <%d@example.com>\r\n\r\n%s",
		subject, time.Now().UnixNano(), body))
}

// TestIMAPCutMidFetch: the IMAP connection is cut in the middle of a FETCH
// response (the listing of new UIDs, or the new message itself). The poll
// fails with an error, the user's trigger state is unchanged and nothing
// ran; once the server is reachable again, the next poll handles the
// message exactly once: one instance per matching workflow.
func TestIMAPCutMidFetch(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"cut-uids": "pw", "cut-body": "pw"})
	cases := []struct {
		name, login string
		pattern     string // the connection is cut right after the server sends this
	}{
		{"listing new UIDs", "cut-uids", " FETCH (UID "},
		{"fetching the message", "cut-body", "CUT-IN-THE-MIDDLE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			px := faultproxy.New(t, dove.Addr())
			f := newFixture(t)
			id, first := f.user(t, tc.login+"@example.com", dovecotVia(dove, px), tc.login, "pw", workflow.FilterRules{})
			second := f.workflow(t, id, "second", workflow.FilterRules{})
			other := f.workflow(t, id, "another sender's", workflow.FilterRules{EmailWhitelist: []string{"dave@example.com"}})
			f.start(t, poller.Config{BackoffBase: 100 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
			waitFor(t, "baseline", 20*time.Second, f.baselined(id))
			before := f.triggerState(t, id)

			// The cut also refuses new connections (and cuts the pooled
			// ones), so that the state can be checked before a retry.
			fired := px.CutOn(tc.pattern, func() {
				px.Refuse(true)
				px.Cut()
			})
			uid := dove.Deliver(t, tc.login, longMessage("cut "+tc.name, "CUT-IN-THE-MIDDLE"))
			select {
			case <-fired:
			case <-time.After(30 * time.Second):
				t.Fatalf("the server never sent %q through the proxy", tc.pattern)
			}
			waitFor(t, "the failed poll in the status", 20*time.Second, func() bool {
				st := f.status(t, id)
				return st.State == poller.StateBackoff && st.Failures >= 1 && st.LastError != ""
			})
			if got := f.triggerState(t, id); got != before {
				t.Errorf("trigger state after the failed poll: %s, want %s unchanged", got, before)
			}
			f.wantInstances(t, id, map[*workflow.Workflow]int{&first: 0, &second: 0, &other: 0})

			px.Refuse(false)
			waitFor(t, "both matching workflows' instances", 30*time.Second, func() bool {
				return len(f.instances(t, id, first)) >= 1 && len(f.instances(t, id, second)) >= 1
			})
			waitFor(t, "the trigger state to advance", 10*time.Second, func() bool {
				return strings.HasPrefix(f.triggerState(t, id), fmt.Sprintf("%d/", uid))
			})
			f.morePolls(t, 3)
			f.wantInstances(t, id, map[*workflow.Workflow]int{&first: 1, &second: 1, &other: 0})
			if st := f.status(t, id); st.State != poller.StateActive || st.Failures != 0 {
				t.Errorf("status after recovery: %+v", st)
			}
			if n := counter(t, f.reg, "inboxd_polls_total", "error"); n < 1 {
				t.Errorf("inboxd_polls_total{result=error} = %v, want the cut poll counted", n)
			}
			t.Logf("proxy: %+v", px.Stats())
		})
	}
}

// TestIMAPStallTimesOut: a user's IMAP server stops answering (the
// connection stays open, nothing comes back). Its poll times out at
// PollTimeout and its status shows the error and the backoff, while
// another user on a direct connection keeps getting its mail processed;
// after the stall the stalled user's mail is processed exactly once.
func TestIMAPStallTimesOut(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"stalled": "pw", "direct": "pw"})
	px := faultproxy.New(t, dove.Addr())
	f := newFixture(t)
	s, wfS := f.user(t, "stalled@example.com", dovecotVia(dove, px), "stalled", "pw", workflow.FilterRules{})
	d, wfD := f.user(t, "direct@example.com", dovecotVia(dove, nil), "direct", "pw", workflow.FilterRules{})
	f.start(t, poller.Config{PollTimeout: time.Second, BackoffBase: 200 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
	waitFor(t, "baselines", 20*time.Second, func() bool { return f.baselined(s)() && f.baselined(d)() })
	before := f.triggerState(t, s)

	px.Stall(true)
	uid := dove.Deliver(t, "stalled", message(1, "c@example.com", "while stalled"))
	waitFor(t, "the stalled user's poll to time out", 20*time.Second, func() bool {
		st := f.status(t, s)
		return st.State == poller.StateBackoff && st.Failures >= 1
	})
	st := f.status(t, s)
	t.Logf("stalled user's status: %+v", st)
	if !strings.Contains(st.LastError, "deadline exceeded") && !strings.Contains(st.LastError, "timeout") {
		t.Errorf("stalled user's last error %q does not say it timed out", st.LastError)
	}
	if st.NextAttempt.IsZero() || st.LastErrorAt.IsZero() {
		t.Errorf("stalled user's status has no next attempt or error time: %+v", st)
	}

	// The other user is served, mail after mail, while the stall lasts.
	for i := 1; i <= 3; i++ {
		dove.Deliver(t, "direct", message(10+i, "c@example.com", fmt.Sprintf("direct %d", i)))
		waitFor(t, fmt.Sprintf("the direct user's mail %d", i), 20*time.Second, func() bool { return len(f.instances(t, d, wfD)) == i })
	}
	waitFor(t, "the stalled user to keep retrying and timing out", 20*time.Second, func() bool {
		st := f.status(t, s)
		return st.State == poller.StateBackoff && st.Failures >= 2
	})
	if got := f.triggerState(t, s); got != before {
		t.Errorf("stalled user's trigger state moved during the stall: %s, want %s", got, before)
	}
	if n := len(f.instances(t, s, wfS)); n != 0 {
		t.Fatalf("stalled user has %d instances during the stall", n)
	}

	px.Stall(false)
	waitFor(t, "the stalled user's mail after the stall", 30*time.Second, func() bool { return len(f.instances(t, s, wfS)) >= 1 })
	waitFor(t, "the stalled user's trigger state to advance", 10*time.Second, func() bool {
		return strings.HasPrefix(f.triggerState(t, s), fmt.Sprintf("%d/", uid))
	})
	f.morePolls(t, 4)
	f.wantInstances(t, s, map[*workflow.Workflow]int{&wfS: 1})
	f.wantInstances(t, d, map[*workflow.Workflow]int{&wfD: 3})
	if st := f.status(t, s); st.State != poller.StateActive || st.Failures != 0 || st.LastError != "" {
		t.Errorf("stalled user's status after the stall: %+v", st)
	}
	t.Logf("proxy: %+v", px.Stats())
}

// TestIdleReconnectsAfterCut: an IDLE connection that drops is noticed at
// once (go-imap's reader reports the failed read), not at the next liveness
// check minutes later; the watch dials again and polls, so mail delivered
// while nothing watched is found without waiting for the poll interval (an
// hour here).
func TestIdleReconnectsAfterCut(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"idle-cut": "pw"})
	px := faultproxy.New(t, dove.Addr())
	f := newFixture(t)
	id, wf := f.user(t, "idle-cut@example.com", dovecotVia(dove, px), "idle-cut", "pw", workflow.FilterRules{})
	f.start(t, poller.Config{Interval: time.Hour, Jitter: 0.0001, IDLE: true})
	waitFor(t, "baseline", 20*time.Second, f.baselined(id))
	dove.Deliver(t, "idle-cut", message(1, "c@example.com", "before the cut"))
	waitFor(t, "the first mail, through IDLE", 10*time.Second, func() bool { return len(f.instances(t, id, wf)) == 1 })
	if n := px.Cut(); n == 0 {
		t.Fatal("no connection to cut")
	}
	dove.Deliver(t, "idle-cut", message(2, "c@example.com", "while the watch is down"))
	waitFor(t, "the second mail, once the watch is back", 15*time.Second, func() bool { return len(f.instances(t, id, wf)) == 2 })
}

// lostAnswersKV is a KV whose lease renewals (CompareAndSwap) are applied
// and then answered with an error while lost is set: a KV outage that hides
// the outcome. It counts the SetNX calls that take a lease.
type lostAnswersKV struct {
	kv.Store
	lost     atomic.Bool
	lostSeen atomic.Int64 // renewals answered with an error
	setNXWon atomic.Int64
}

func (s *lostAnswersKV) CompareAndSwap(ctx context.Context, key, old, value string, ttl time.Duration) (bool, error) {
	ok, err := s.Store.CompareAndSwap(ctx, key, old, value, ttl)
	if s.lost.Load() && strings.HasPrefix(key, "lease:poll:") {
		s.lostSeen.Add(1)
		return false, errors.New("lostAnswersKV: connection reset (the command was applied)")
	}
	return ok, err
}

func (s *lostAnswersKV) SetNX(ctx context.Context, key, value string, ttl time.Duration) (bool, error) {
	ok, err := s.Store.SetNX(ctx, key, value, ttl)
	if ok && strings.HasPrefix(key, "lease:poll:") {
		s.setNXWon.Add(1)
	}
	return ok, err
}

// TestLeaseRetakenAfterLostRenewals: renewals whose answers were lost end
// the holding when its time is up (the replica cannot know it still holds
// the lease), but the lease, extended by those very renewals, is still this
// replica's; polling resumes by taking it back, not by waiting for it to
// expire and winning it anew.
func TestLeaseRetakenAfterLostRenewals(t *testing.T) {
	srv := servers(t, map[string]string{"alice": "pw"})["memserver"]
	f := newFixture(t)
	a, _ := f.user(t, "alice@example.com", srv, "alice", "pw", workflow.FilterRules{})
	store := &lostAnswersKV{Store: f.kv}
	reg := prometheus.NewRegistry()
	p, err := poller.New(poller.Config{Owner: "r1", Interval: 100 * time.Millisecond, Refresh: 50 * time.Millisecond, LeaseTTL: 3 * time.Second},
		store, f.wf, f.settings, newInbox(t), slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "baseline", 10*time.Second, f.baselined(a))
	if n := store.setNXWon.Load(); n != 1 {
		t.Fatalf("lease taken %d times, want once", n)
	}

	store.lost.Store(true)
	waitFor(t, "the holding to end", 20*time.Second, func() bool { return gauge(t, reg, "inboxd_tenants", poller.StateElsewhere) == 1 })
	store.lost.Store(false)
	if store.lostSeen.Load() == 0 {
		t.Fatal("no renewal lost its answer")
	}
	waitFor(t, "polling to resume", 20*time.Second, func() bool { return gauge(t, reg, "inboxd_tenants", poller.StateActive) == 1 })
	if n := store.setNXWon.Load(); n != 1 {
		t.Errorf("lease won %d times with SetNX: it expired before being taken back, want it retaken while still ours", n)
	}
}
