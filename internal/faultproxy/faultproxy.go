// Package faultproxy is a TCP proxy for tests that puts network faults
// between the code under test and a real server (Dovecot, Redis,
// PostgreSQL): it cuts connections (all at once, after so many bytes from the
// server, or the moment the server sends a given pattern), stalls them
// (connections stay open but nothing is forwarded), slows them (latency per
// chunk) and refuses new ones.
//
// It is for tests only: it listens on a loopback port, is stopped with the
// test, and its faults are switched by the test at the moments it chooses.
// Stdlib only.
package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// maxPattern bounds the length of a CutOn pattern: so much of each
// connection's server data is kept to find a pattern split across reads.
const maxPattern = 256

// dialTimeout bounds the connect to the target for each accepted connection.
const dialTimeout = 5 * time.Second

// Proxy forwards every connection accepted on Addr to the target address,
// unchanged unless a fault is switched on. All methods are safe for
// concurrent use, also from a CutOn callback.
type Proxy struct {
	t      testing.TB
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every pump

	mu       sync.Mutex
	links    map[*link]struct{}
	closed   bool
	refuse   bool
	stall    chan struct{} // nil when not stalled; closed when the stall ends
	delay    time.Duration
	cutAfter int64
	triggers []*trigger
	accepted int
	refused  int
	cuts     int
}

// trigger is a one-shot CutOn rule.
type trigger struct {
	pattern []byte
	then    func()
	fired   chan struct{}
}

// link is one proxied connection: the client's side and the server's.
type link struct {
	client, server net.Conn
	done           chan struct{} // closed when the link ends
	once           sync.Once

	// Owned by the server-to-client pump.
	fromServer int64  // bytes forwarded from the server so far
	tail       []byte // the last server bytes, to match patterns across reads
}

// New starts a proxy to target ("host:port") on 127.0.0.1:0; it stops, and
// cuts its connections, when the test ends.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultproxy: listen: %v", err)
	}
	p := &Proxy{t: t, target: target, ln: ln, links: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's "127.0.0.1:port": point the client here.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Host is the proxy's IP address, "127.0.0.1".
func (p *Proxy) Host() string { return p.ln.Addr().(*net.TCPAddr).IP.String() }

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Cut closes every current connection abruptly (a TCP reset to both the
// client and the server) and returns how many it closed. New connections are
// served as before.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	n := 0
	for _, l := range links {
		if p.cut(l) {
			n++
		}
	}
	return n
}

// CutAfter cuts each connection once the server has sent n bytes on it (the
// client gets exactly n): a reply cut off in the middle. It applies to the
// current connections too, counting what they already carried; n <= 0
// switches it off.
func (p *Proxy) CutAfter(n int64) {
	p.mu.Lock()
	p.cutAfter = n
	p.mu.Unlock()
}

// CutOn arms a one-shot cut: the first time the bytes a server sends on any
// connection contain pattern, the client gets them up to the end of the
// pattern and no further, then (if not nil) is called, and that connection
// is cut. Faults then switches on (Refuse, Stall, a Cut of the others) are
// thus in place before the client can notice the cut. The returned channel
// is closed once the cut is done. Use it to cut a reply in the middle, e.g.
// pattern " FETCH (" for an IMAP FETCH. A pattern must be 1 to 256 bytes.
func (p *Proxy) CutOn(pattern string, then func()) <-chan struct{} {
	if len(pattern) == 0 || len(pattern) > maxPattern {
		p.t.Fatalf("faultproxy: CutOn pattern of %d bytes (want 1 to %d)", len(pattern), maxPattern)
	}
	tr := &trigger{pattern: []byte(pattern), then: then, fired: make(chan struct{})}
	p.mu.Lock()
	p.triggers = append(p.triggers, tr)
	p.mu.Unlock()
	return tr.fired
}

// Stall, while on, keeps every connection (current and new) open but
// forwards nothing in either direction: a server that stopped answering.
// Switching it off forwards what was held back and goes on as before.
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case on && p.stall == nil:
		p.stall = make(chan struct{})
	case !on && p.stall != nil:
		close(p.stall)
		p.stall = nil
	}
}

// Slow delays every chunk of data, in both directions, by d; 0 switches it
// off.
func (p *Proxy) Slow(d time.Duration) {
	p.mu.Lock()
	p.delay = max(d, 0)
	p.mu.Unlock()
}

// Refuse, while on, resets every new connection as soon as it is accepted
// (the client sees its connect succeed, then a reset before any byte: a
// server that is down; the port stays reserved, so it is not
// ECONNREFUSED). Current connections are left alone: Cut them too for a
// server restart.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Stats counts the proxy's connections.
type Stats struct {
	Open     int // connections being forwarded now
	Accepted int // connections forwarded since the start
	Refused  int // connections reset by Refuse, or because the target did not answer
	Cuts     int // connections cut by Cut, CutAfter or CutOn
}

// Stats returns the proxy's connection counts.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Open: len(p.links), Accepted: p.accepted, Refused: p.refused, Cuts: p.cuts}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.t.Logf("faultproxy: accept: %v", err)
			}
			return
		}
		p.mu.Lock()
		refuse := p.refuse || p.closed
		if refuse {
			p.refused++
		}
		p.mu.Unlock()
		if refuse {
			reset(c)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve connects c to the target and forwards both ways until either side
// ends or the link is cut.
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	s, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		p.mu.Lock()
		p.refused++
		p.mu.Unlock()
		reset(c)
		return
	}
	l := &link{client: c, server: s, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		reset(c)
		reset(s)
		return
	}
	p.links[l] = struct{}{}
	p.accepted++
	p.mu.Unlock()

	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() { defer pumps.Done(); p.pump(l, s, c, true) }()
	go func() { defer pumps.Done(); p.pump(l, c, s, false) }()
	pumps.Wait()
	p.end(l, false, false) // both sides ended by themselves: an orderly close
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// pump copies src to dst chunk by chunk, applying the faults to each chunk.
// fromServer says the direction. When src ends cleanly, dst's write side is
// closed (a half close, as the other end would see without the proxy); any
// error or cut ends the whole link.
func (p *Proxy) pump(l *link, src, dst net.Conn, fromServer bool) {
	buf := make([]byte, 32*1024)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if !p.wait(l) {
				return
			}
			chunk, cutNow, fired := buf[:n], false, []*trigger(nil)
			if fromServer {
				chunk, cutNow, fired = p.serverRules(l, chunk)
			}
			if len(chunk) > 0 {
				if _, err := dst.Write(chunk); err != nil {
					p.end(l, true, false)
					return
				}
			}
			if cutNow {
				for _, tr := range fired {
					if tr.then != nil {
						tr.then()
					}
				}
				p.cut(l)
				for _, tr := range fired {
					close(tr.fired)
				}
				return
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
					return
				}
			}
			p.end(l, true, false) // a reset or an error: pass it on to the other side
			return
		}
	}
}

// wait holds a chunk while the proxy is stalled, then for the Slow delay;
// it reports false if the link was cut meanwhile.
func (p *Proxy) wait(l *link) bool {
	var delay time.Duration
	for {
		p.mu.Lock()
		stall := p.stall
		delay = p.delay
		p.mu.Unlock()
		if stall == nil {
			break
		}
		select {
		case <-stall:
		case <-l.done:
			return false
		}
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-l.done:
			return false
		}
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// serverRules applies CutAfter and CutOn to a chunk from the server: it
// returns the part to forward, whether to cut the link after it, and the
// triggers that fired (now disarmed).
func (p *Proxy) serverRules(l *link, chunk []byte) (forward []byte, cut bool, fired []*trigger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	end := len(chunk)
	if p.cutAfter > 0 && l.fromServer+int64(end) >= p.cutAfter {
		end, cut = int(max(p.cutAfter-l.fromServer, 0)), true
	}
	if len(p.triggers) > 0 {
		window := append(l.tail, chunk...)
		kept := p.triggers[:0]
		for _, tr := range p.triggers {
			i := bytes.Index(window, tr.pattern)
			if i < 0 {
				kept = append(kept, tr)
				continue
			}
			// The pattern's end, as an offset in chunk (0 if it was all
			// in the tail, i.e. sent before the trigger was armed).
			at := max(i+len(tr.pattern)-len(l.tail), 0)
			if !cut || at < end {
				end = at
			}
			cut = true
			fired = append(fired, tr)
		}
		clear(p.triggers[len(kept):])
		p.triggers = kept
	}
	l.fromServer += int64(end)
	tail := append(l.tail, chunk[:end]...)
	if len(tail) > maxPattern {
		tail = tail[len(tail)-maxPattern:]
	}
	l.tail = append(l.tail[:0:0], tail...)
	return chunk[:end], cut, fired
}

// cut ends a link abruptly as a fault (counted in Stats.Cuts) and reports
// whether it did (false: the link had ended already).
func (p *Proxy) cut(l *link) bool { return p.end(l, true, true) }

// end closes both sides of a link, with a reset when abrupt, and reports
// whether this call ended it (a link ends once). A fault is counted before
// the client can see it.
func (p *Proxy) end(l *link, abrupt, fault bool) bool {
	ended := false
	l.once.Do(func() {
		ended = true
		if fault {
			p.mu.Lock()
			p.cuts++
			p.mu.Unlock()
		}
		close(l.done)
		for _, c := range []net.Conn{l.client, l.server} {
			if abrupt {
				reset(c)
			} else {
				_ = c.Close()
			}
		}
	})
	return ended
}

// close stops the proxy: no new connections, every link cut.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// reset closes c with a TCP reset rather than an orderly FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
