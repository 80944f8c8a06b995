package poller_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/poller"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// A hostile IMAP server (issue #8): answers that are malformed or enormous
// fail that one poll with an error, never the daemon.

// Hostile answers of hostileIMAP.
const (
	// The answer to the INBOX check (STATUS, or the EXAMINE and NOOP of a
	// connection that keeps the INBOX selected) is garbage.
	modeMalformedStatus = "malformed-status"
	// The FETCH of the new message's body has broken syntax.
	modeMalformedFetch = "malformed-fetch"
	// The FETCH of the new message's body announces a literal of 5 GB,
	// sends a few KB of it, then stalls.
	modeHugeLiteral = "huge-literal"
	// Before the check's answer, an untagged line that never ends: 'a's
	// until the client hangs up (at most 1 GiB), then a stall.
	modeEndlessLine = "endless-line"
	// The check's answer announces a literal of 5 GB where a mailbox name
	// (a small string) belongs, sends a few KB of it, then stalls.
	modeHugeLiteralStatus = "huge-literal-status"
)

const (
	hostileLiteral  = "{5000000000}"
	hostileTrickle  = 4 << 10 // bytes of a huge literal actually sent
	hostileLineSize = 1 << 30 // bytes of the endless line, at most
	hostileValidity = 7
)

// hostileIMAP is a fake IMAP4rev1 server for tests that speaks just enough
// of the protocol for the poller's path (STATUS, EXAMINE, NOOP with EXISTS
// for new mail, FETCH by UID and sequence number) over plain TCP, and
// answers with mode once armed. A mail arrives with deliver; the server's
// only user accepts any password.
type hostileIMAP struct {
	t    *testing.T
	ln   net.Listener
	host string
	port int

	mu      sync.Mutex
	msgs    [][]byte // UID n is msgs[n-1]; no expunges, so seq n is UID n too
	mode    string
	armed   bool // hostile answers only while armed
	unknown []string
	conns   map[net.Conn]bool

	hostile atomic.Int64 // hostile answers sent
}

func newHostileIMAP(t *testing.T, mode string) *hostileIMAP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &hostileIMAP{t: t, ln: ln, host: "127.0.0.1", port: ln.Addr().(*net.TCPAddr).Port, mode: mode, conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[conn] = true
			s.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				s.serve(conn)
				s.mu.Lock()
				delete(s.conns, conn)
				s.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
		if len(s.unknown) > 0 {
			t.Logf("hostileIMAP: unknown commands: %q", s.unknown)
		}
	})
	return s
}

func (s *hostileIMAP) server() server {
	return server{host: s.host, port: s.port, deliver: func(t *testing.T, _ string, raw []byte) { s.deliver(raw) }}
}

// deliver adds a message and returns its UID.
func (s *hostileIMAP) deliver(raw []byte) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, raw)
	return uint32(len(s.msgs))
}

// arm turns the hostile answers on or off.
func (s *hostileIMAP) arm(on bool) {
	s.mu.Lock()
	s.armed = on
	s.mu.Unlock()
}

func (s *hostileIMAP) hostileNow(mode string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.armed && s.mode == mode
}

// snapshot returns the messages as they are now.
func (s *hostileIMAP) snapshot() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.msgs...)
}

// errStall ends a session that stalls: the server sends nothing more, and
// reads until the client hangs up.
var errStall = errors.New("hostileIMAP: stall")

// hostileSession is what one session has seen of the INBOX.
type hostileSession struct {
	selected bool
	known    int // messages announced with EXISTS
}

func (s *hostileIMAP) serve(conn net.Conn) {
	var sess hostileSession
	r := bufio.NewReader(conn)
	w := bufio.NewWriter(conn)
	fmt.Fprint(w, "* OK [CAPABILITY IMAP4rev1 UNSELECT UIDPLUS] ready\r\n")
	if w.Flush() != nil {
		return
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		tag, rest, _ := strings.Cut(line, " ")
		err = s.command(w, &sess, tag, rest)
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
		if err == errStall {
			io.Copy(io.Discard, r) //nolint:errcheck // until the client hangs up
			return
		}
		if err != nil {
			return
		}
	}
}

// command answers one tagged command; io.EOF ends the session.
func (s *hostileIMAP) command(w *bufio.Writer, sess *hostileSession, tag, line string) error {
	verb, args, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	uid := false
	if verb == "UID" {
		uid = true
		verb, args, _ = strings.Cut(args, " ")
		verb = "UID " + strings.ToUpper(verb)
	}
	msgs := s.snapshot()
	ok := func(text string) error {
		_, err := fmt.Fprintf(w, "%s OK %s\r\n", tag, text)
		return err
	}
	switch verb {
	case "LOGIN", "AUTHENTICATE":
		return ok("[CAPABILITY IMAP4rev1 UNSELECT UIDPLUS] logged in")
	case "CAPABILITY":
		fmt.Fprint(w, "* CAPABILITY IMAP4rev1 UNSELECT UIDPLUS\r\n")
		return ok("done")
	case "NOOP", "CHECK":
		if sess.selected {
			if hostile, err := s.hostileCheck(w); hostile {
				return err
			}
			if len(msgs) != sess.known {
				fmt.Fprintf(w, "* %d EXISTS\r\n", len(msgs))
				sess.known = len(msgs)
			}
		}
		return ok(strings.ToLower(verb) + " done")
	case "UNSELECT", "CLOSE":
		sess.selected = false
		return ok(strings.ToLower(verb) + " done")
	case "LOGOUT":
		fmt.Fprint(w, "* BYE bye\r\n")
		ok("logout done") //nolint:errcheck // the session ends anyway
		return io.EOF
	case "STATUS":
		return s.status(w, tag, len(msgs))
	case "SELECT", "EXAMINE":
		if hostile, err := s.hostileCheck(w); hostile {
			return err
		}
		sess.selected, sess.known = true, len(msgs)
		fmt.Fprintf(w, "* %d EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)\r\n", len(msgs))
		fmt.Fprintf(w, "* OK [UIDVALIDITY %d] valid\r\n* OK [UIDNEXT %d] next\r\n", hostileValidity, len(msgs)+1)
		return ok("[READ-ONLY] " + strings.ToLower(verb) + " done")
	case "FETCH", "UID FETCH":
		return s.fetch(w, tag, uid, args, msgs)
	case "UID SEARCH", "SEARCH":
		fmt.Fprint(w, "* SEARCH\r\n")
		return ok("search done")
	}
	s.mu.Lock()
	s.unknown = append(s.unknown, line)
	s.mu.Unlock()
	_, err := fmt.Fprintf(w, "%s BAD unknown command\r\n", tag)
	return err
}

// status answers STATUS INBOX.
func (s *hostileIMAP) status(w *bufio.Writer, tag string, n int) error {
	if hostile, err := s.hostileCheck(w); hostile {
		return err
	}
	fmt.Fprintf(w, "* STATUS INBOX (MESSAGES %d UIDNEXT %d UIDVALIDITY %d)\r\n", n, n+1, hostileValidity)
	_, err := fmt.Fprintf(w, "%s OK status done\r\n", tag)
	return err
}

// hostileCheck sends the hostile answer to an INBOX check, when armed in a
// check mode; errStall ends the session after it.
func (s *hostileIMAP) hostileCheck(w *bufio.Writer) (hostile bool, err error) {
	switch {
	case s.hostileNow(modeMalformedStatus):
		s.hostile.Add(1)
		fmt.Fprint(w, "* STATUS INBOX (MESSAGES x UIDNEXT ))(\r\n")
		return false, nil // and the normal answer after it
	case s.hostileNow(modeHugeLiteralStatus):
		s.hostile.Add(1)
		fmt.Fprintf(w, "* STATUS %s\r\n%s", hostileLiteral, strings.Repeat("a", hostileTrickle))
		return true, errStall
	case s.hostileNow(modeEndlessLine):
		s.hostile.Add(1)
		fmt.Fprint(w, "* ")
		chunk := strings.Repeat("a", 64<<10)
		for sent := 0; sent < hostileLineSize; sent += len(chunk) {
			if _, err := w.WriteString(chunk); err != nil {
				return true, err // the client hung up
			}
		}
		return true, errStall
	}
	return false, nil
}

// fetch answers FETCH and UID FETCH of UID, FLAGS, INTERNALDATE,
// RFC822.SIZE and one BODY.PEEK[section]<partial>.
func (s *hostileIMAP) fetch(w *bufio.Writer, tag string, byUID bool, args string, msgs [][]byte) error {
	set, items, _ := strings.Cut(args, " ")
	items = strings.ToUpper(items)
	var section string // what the answer names the body section
	if i := strings.Index(items, "BODY.PEEK["); i >= 0 {
		spec := items[i+len("BODY.PEEK["):]
		if j := strings.IndexByte(spec, ']'); j >= 0 {
			section = "BODY[" + spec[:j] + "]"
			if strings.HasPrefix(spec[j+1:], "<0.") {
				section += "<0>"
			}
		}
	}
	newest := len(msgs)
	for _, n := range parseSet(set, newest) {
		raw := msgs[n-1]
		var b strings.Builder
		fmt.Fprintf(&b, "* %d FETCH (UID %d", n, n)
		if strings.Contains(items, "FLAGS") {
			b.WriteString(" FLAGS ()")
		}
		if strings.Contains(items, "INTERNALDATE") {
			b.WriteString(` INTERNALDATE "02-Jan-2026 15:04:05 +0000"`)
		}
		if strings.Contains(items, "RFC822.SIZE") {
			fmt.Fprintf(&b, " RFC822.SIZE %d", len(raw))
		}
		fullBody := section != "" && !strings.Contains(section, "HEADER")
		if fullBody && n == newest && s.hostileNow(modeMalformedFetch) {
			s.hostile.Add(1)
			fmt.Fprintf(w, "%s BODY[ ))(( {x}\r\n\"unterminated\r\n", b.String())
			continue
		}
		if fullBody && n == newest && s.hostileNow(modeHugeLiteral) {
			s.hostile.Add(1)
			fmt.Fprintf(w, "%s %s %s\r\n%s", b.String(), section, hostileLiteral, strings.Repeat(string(raw)+"\r\n", hostileTrickle/len(raw)+1))
			return errStall
		}
		if section != "" {
			body := raw
			if strings.Contains(section, "HEADER") {
				if i := strings.Index(string(raw), "\r\n\r\n"); i >= 0 {
					body = raw[:i+4]
				}
			}
			fmt.Fprintf(&b, " %s {%d}\r\n%s", section, len(body), body)
		}
		b.WriteString(")\r\n")
		if _, err := w.WriteString(b.String()); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "%s OK fetch done\r\n", tag)
	return err
}

// parseSet lists the numbers of an IMAP sequence or UID set over messages
// 1..newest ("*" is newest; a range past newest still names newest, as
// RFC 3501 has it).
func parseSet(set string, newest int) []int {
	if newest == 0 {
		return nil
	}
	num := func(s string) int {
		if s == "*" {
			return newest
		}
		n, _ := strconv.Atoi(s)
		return n
	}
	var out []int
	seen := map[int]bool{}
	for _, part := range strings.Split(set, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a, b := num(lo), num(lo)
		if isRange {
			b = num(hi)
		}
		a, b = min(a, b, newest), min(max(a, b), newest)
		for n := max(a, 1); n <= b; n++ {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// heapWatch samples the heap while a hostile episode lasts.
type heapWatch struct {
	before    runtime.MemStats
	peakInuse atomic.Uint64
	stop      chan struct{}
	done      chan struct{}
}

func watchHeap() *heapWatch {
	h := &heapWatch{stop: make(chan struct{}), done: make(chan struct{})}
	runtime.GC()
	runtime.ReadMemStats(&h.before)
	h.peakInuse.Store(h.before.HeapInuse)
	go func() {
		defer close(h.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > h.peakInuse.Load() {
				h.peakInuse.Store(ms.HeapInuse)
			}
		}
	}()
	return h
}

// end stops the sampling and returns the growth of the peak HeapInuse and
// of the memory held from the OS (Sys less what was released).
func (h *heapWatch) end() (inuse, sys uint64) {
	close(h.stop)
	<-h.done
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	grow := func(now, then uint64) uint64 {
		if now < then {
			return 0
		}
		return now - then
	}
	return grow(h.peakInuse.Load(), h.before.HeapInuse), grow(ms.Sys-ms.HeapReleased, h.before.Sys-h.before.HeapReleased)
}

// TestHostileIMAPServer: user A's IMAP server answers a poll with garbage or
// with announcements of gigabytes. A's poll fails with an error (backoff and
// last_error in its status, polls_total{result=error} grows), A's trigger
// state does not move past the bad message and nothing runs for it; user B,
// on a well-behaved server, gets its mail processed meanwhile; nothing
// allocates the announced sizes. Once the server behaves, A's message runs
// exactly once.
func TestHostileIMAPServer(t *testing.T) {
	const memBudget = 256 << 20
	modes := []struct {
		mode string
		// wantErr is a part of A's last error.
		wantErr string
	}{
		{modeMalformedStatus, "status"},
		{modeMalformedFetch, "fetch uid"},
		{modeHugeLiteral, "fetch uid"},
		// The line guard in mail.Dial ends it at 32 MiB, or the timeout
		// first (on a slow machine, under -race).
		{modeEndlessLine, "status"},
		{modeHugeLiteralStatus, "status"},
	}
	for _, tc := range modes {
		t.Run(tc.mode, func(t *testing.T) {
			hostile := newHostileIMAP(t, tc.mode)
			hostile.deliver(message(0, "old@example.com", "before the baseline"))
			mem := testsvc.MemIMAP(t, map[string]string{"bob": "pw"})
			good := server{host: mem.Host, port: mem.Port, deliver: func(t *testing.T, u string, raw []byte) { mem.Deliver(t, u, raw) }}

			f := newFixture(t)
			a, wfA := f.user(t, "alice@example.com", hostile.server(), "alice", "pw", workflow.FilterRules{})
			b, wfB := f.user(t, "bob@example.com", good, "bob", "pw", workflow.FilterRules{})
			f.start(t, poller.Config{PollTimeout: 2 * time.Second, BackoffBase: 100 * time.Millisecond, BackoffMax: 300 * time.Millisecond})
			waitFor(t, "baselines", 30*time.Second, func() bool { return f.baselined(a)() && f.baselined(b)() })
			before := f.triggerState(t, a)
			if before != "1/7" {
				t.Fatalf("A's baseline %s, want 1/7", before)
			}

			heap := watchHeap()
			errorsBefore := counter(t, f.reg, "inboxd_polls_total", "error")
			hostile.arm(true)
			uid := hostile.deliver(message(1, "c@example.com", "the bad one"))
			waitFor(t, "A's failed polls in its status", 60*time.Second, func() bool {
				st := f.status(t, a)
				return hostile.hostile.Load() >= 2 && st.State == poller.StateBackoff && st.Failures >= 2 && st.LastError != ""
			})
			st := f.status(t, a)
			t.Logf("A's status: state=%s failures=%d last_error=%q", st.State, st.Failures, st.LastError)
			if !strings.Contains(st.LastError, tc.wantErr) {
				t.Errorf("A's last error %q does not name %q", st.LastError, tc.wantErr)
			}
			if n := counter(t, f.reg, "inboxd_polls_total", "error"); n < errorsBefore+2 {
				t.Errorf("inboxd_polls_total{result=error} grew from %v to %v, want the failed polls counted", errorsBefore, n)
			}

			// B is served while A's server misbehaves.
			good.deliver(t, "bob", message(2, "d@example.com", "for bob"))
			waitFor(t, "B's instance during the episode", 30*time.Second, func() bool { return len(f.instances(t, b, wfB)) == 1 })
			waitFor(t, "A to fail again after B's mail", 30*time.Second, func() bool { return f.status(t, a).Failures >= 3 })

			if got := f.triggerState(t, a); got != before {
				t.Errorf("A's trigger state moved during the episode: %s, want %s", got, before)
			}
			if n := len(f.instances(t, a, wfA)); n != 0 {
				t.Errorf("A has %d instances for the bad message", n)
			}
			inuse, sys := heap.end()
			t.Logf("during the episode (%d hostile answers): peak HeapInuse +%d MiB, Sys-HeapReleased +%d MiB", hostile.hostile.Load(), inuse>>20, sys>>20)
			if inuse > memBudget || sys > memBudget {
				t.Errorf("memory grew by %d MiB in use, %d MiB from the OS; want under %d MiB", inuse>>20, sys>>20, memBudget>>20)
			}

			// The server behaves again: A's message runs, once.
			hostile.arm(false)
			waitFor(t, "A's instance after the episode", 30*time.Second, func() bool { return len(f.instances(t, a, wfA)) >= 1 })
			waitFor(t, "A's trigger state to advance", 10*time.Second, func() bool {
				return f.triggerState(t, a) == fmt.Sprintf("%d/%d", uid, hostileValidity)
			})
			f.morePolls(t, 4)
			f.wantInstances(t, a, map[*workflow.Workflow]int{&wfA: 1})
			f.wantInstances(t, b, map[*workflow.Workflow]int{&wfB: 1})
			if st := f.status(t, a); st.State != poller.StateActive || st.Failures != 0 {
				t.Errorf("A's status after the episode: %+v", st)
			}
		})
	}
}
