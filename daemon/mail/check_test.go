package mail

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/internal/testsvc"
)

// checkServer is an IMAP server for TestConnCheckMailbox, with a way to
// deliver mail and a second session (not the pool's) to change the INBOX.
type checkServer struct {
	addr    string
	user    string
	pw      string
	deliver func(t *testing.T, raw []byte)
}

func (s checkServer) other(t *testing.T) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(s.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(s.user, s.pw).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

func checkMessage(i int) []byte {
	return []byte(fmt.Sprintf("From: a@example.com\r\nTo: alice@example.com\r\nSubject: check %d\r\nMessage-ID: <check-%d@example.com>\r\n\r\nbody %d\r\n", i, i, i))
}

// TestConnCheckMailbox: a pooled connection keeps INBOX selected, so that a
// check with nothing new is one NOOP; every way the INBOX can change under
// it (new mail, an expunge and new mail leaving the count as it was, an
// expunge, another selection on the connection, an old selection) makes
// the next check examine afresh and report the new state.
func TestConnCheckMailbox(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	mem := testsvc.MemIMAP(t, map[string]string{"alice": "alice-pw"})
	servers := map[string]checkServer{
		"dovecot": {dove.Addr(), "alice", "alice-pw", func(t *testing.T, raw []byte) { dove.Deliver(t, "alice", raw) }},
		"memory": {net.JoinHostPort(mem.Host, fmt.Sprint(mem.Port)), "alice", "alice-pw",
			func(t *testing.T, raw []byte) { mem.Deliver(t, "alice", raw) }},
	}
	for name, srv := range servers {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := range 2 {
				srv.deliver(t, checkMessage(i))
			}
			log := newTestProxy(t, srv.addr)
			acct := log.account(Account{Security: SecurityNone, Username: srv.user, Password: srv.pw})
			p := newTestPool(t, PoolOptions{})
			conn, err := p.Acquire(ctx, "alice-id", acct)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { conn.Release() }()
			log.commands()

			// check runs one check and compares its commands and UIDNEXT.
			check := func(what string, wantCmds []string, wantNext uint32) MailboxState {
				t.Helper()
				st, err := conn.CheckMailbox(ctx, "INBOX")
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if got := log.commands(); !slices.Equal(got, wantCmds) {
					t.Errorf("%s: commands %v, want %v", what, got, wantCmds)
				}
				if wantNext != 0 && st.UIDNext != wantNext {
					t.Errorf("%s: UIDNEXT %d, want %d", what, st.UIDNext, wantNext)
				}
				if st.UIDValidity == 0 {
					t.Errorf("%s: no UIDVALIDITY", what)
				}
				return st
			}

			first := check("first check", []string{"EXAMINE"}, 0)
			next := first.UIDNext
			if first.Messages != 2 {
				t.Errorf("first check: %d messages, want 2", first.Messages)
			}
			check("nothing new", []string{"NOOP"}, next)
			check("still nothing new", []string{"NOOP"}, next)

			srv.deliver(t, checkMessage(2))
			next++
			check("new mail", []string{"NOOP", "EXAMINE"}, next)
			check("nothing new after new mail", []string{"NOOP"}, next)

			// One expunged and one new: the count is what it was.
			other := srv.other(t)
			if err := other.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
				t.Fatal(err)
			}
			if err := other.Expunge().Close(); err != nil {
				t.Fatal(err)
			}
			srv.deliver(t, checkMessage(3))
			next++
			if st := check("an expunge and new mail", []string{"NOOP", "EXAMINE"}, next); st.Messages != 3 {
				t.Errorf("after an expunge and new mail: %d messages, want 3", st.Messages)
			}
			// An expunge alone changes the count the check reports.
			if err := other.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
				t.Fatal(err)
			}
			if err := other.Expunge().Close(); err != nil {
				t.Fatal(err)
			}
			if st := check("an expunge", []string{"NOOP", "EXAMINE"}, next); st.Messages != 2 {
				t.Errorf("after an expunge: %d messages, want 2", st.Messages)
			}

			// Another user of the connection selects INBOX itself, and the
			// new mail's EXISTS is its SELECT's: the check must not trust
			// its own, older selection.
			srv.deliver(t, checkMessage(4))
			next++
			if _, err := conn.Client().Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
				t.Fatal(err)
			}
			log.commands()
			check("after another selection", []string{"EXAMINE"}, next)

			// Back in the pool and out again: the selection is kept.
			conn.Release()
			if conn, err = p.Acquire(ctx, "alice-id", acct); err != nil {
				t.Fatal(err)
			}
			check("after the pool", []string{"NOOP"}, next)

			// Another mailbox selected in between.
			if _, err := conn.Client().Select("INBOX", nil).Wait(); err != nil {
				t.Fatal(err)
			}
			if err := conn.Client().Unselect().Wait(); err != nil {
				t.Fatal(err)
			}
			log.commands()
			check("after an unselect", []string{"EXAMINE"}, next)

			// An old selection is examined afresh, changed or not.
			conn.pc.selected.at = time.Now().Add(-selectionTrust)
			check("an old selection", []string{"EXAMINE"}, next)
			check("renewed", []string{"NOOP"}, next)
		})
	}
}

// TestConnCheckMailboxUIDValidity: a mailbox whose UIDVALIDITY changes
// while a pooled connection has it selected is seen with its new
// UIDVALIDITY, at the latest on a new connection after the error.
func TestConnCheckMailboxUIDValidity(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	dove.Deliver(t, "alice", checkMessage(1))
	acct := Account{Server: dove.Host, Port: dove.Port, Security: SecurityNone, Username: "alice", Password: "alice-pw"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := newTestPool(t, PoolOptions{})
	checkOnce := func() (MailboxState, error) {
		conn, err := p.Acquire(ctx, "alice-id", acct)
		if err != nil {
			t.Fatal(err)
		}
		st, err := conn.CheckMailbox(ctx, "INBOX")
		if err != nil {
			conn.Discard()
			return st, err
		}
		conn.Release()
		return st, nil
	}
	st, err := checkOnce()
	if err != nil {
		t.Fatal(err)
	}
	if st.UIDValidity == 4242 {
		t.Fatal("test setup: UIDVALIDITY is 4242 already")
	}
	if _, err := checkOnce(); err != nil { // the NOOP path
		t.Fatal(err)
	}
	dove.Doveadm(t, "mailbox", "update", "-u", "alice", "--uid-validity", "4242", "INBOX")
	st, err = checkOnce()
	if err != nil {
		t.Logf("first check after the change: %v", err)
		if st, err = checkOnce(); err != nil {
			t.Fatalf("second check after the change: %v", err)
		}
	}
	if st.UIDValidity != 4242 {
		t.Fatalf("UIDVALIDITY %d after the change, want 4242", st.UIDValidity)
	}
}

// TestCheckWithoutUIDNext: a server that omits UIDNEXT from STATUS and
// EXAMINE still gets a UIDNEXT one past its newest UID (1 when empty), from
// both forms of the check.
func TestCheckWithoutUIDNext(t *testing.T) {
	for _, tc := range []struct {
		name     string
		uids     []int
		wantNext uint32
	}{{"empty", nil, 1}, {"two messages", []int{4, 9}, 10}} {
		t.Run(tc.name, func(t *testing.T) {
			port := fakeServer(t, scripted("* OK ready", func(w io.Writer, _ *bufio.Reader, tag, cmd, args string) bool {
				switch cmd {
				case "LOGIN":
					fmt.Fprintf(w, "%s OK logged in\r\n", tag)
				case "STATUS":
					fmt.Fprintf(w, "* STATUS INBOX (MESSAGES %d UIDVALIDITY 7)\r\n%s OK done\r\n", len(tc.uids), tag)
				case "EXAMINE", "SELECT":
					fmt.Fprintf(w, "* %d EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n%s OK [READ-ONLY] done\r\n", len(tc.uids), tag)
				case "FETCH":
					if len(tc.uids) > 0 {
						fmt.Fprintf(w, "* %d FETCH (UID %d)\r\n", len(tc.uids), tc.uids[len(tc.uids)-1])
					}
					fmt.Fprintf(w, "%s OK done\r\n", tag)
				default:
					fmt.Fprintf(w, "%s BAD unexpected %s\r\n", tag, cmd)
				}
				return false
			}))
			acct := Account{Server: "127.0.0.1", Port: port, Security: SecurityNone, Username: "alice", Password: "pw"}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p := newTestPool(t, PoolOptions{})
			conn, err := p.Acquire(ctx, "alice-id", acct)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Release()
			pooled, err := conn.CheckMailbox(ctx, "INBOX")
			if err != nil || pooled.UIDNext != tc.wantNext || pooled.UIDValidity != 7 {
				t.Errorf("Conn.CheckMailbox: %+v, %v; want UIDNEXT %d", pooled, err, tc.wantNext)
			}
			status, err := CheckMailbox(ctx, conn.Client(), "INBOX")
			if err != nil || status.UIDNext != tc.wantNext || status.UIDValidity != 7 {
				t.Errorf("CheckMailbox: %+v, %v; want UIDNEXT %d", status, err, tc.wantNext)
			}
		})
	}
}
