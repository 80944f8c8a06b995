package faultproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// echoServer answers every connection with what it receives, chunk by chunk.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := tryDial(t, p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func tryDial(t *testing.T, p *Proxy) (net.Conn, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a hung case fails, not the whole run
	return c, nil
}

// refused reports whether a new connection is reset at once: the dial failed
// (the reset came before the connect completed), or the first read ends
// with nothing (not a timeout).
func refused(t *testing.T, p *Proxy) bool {
	t.Helper()
	c, err := tryDial(t, p)
	if err != nil {
		return true
	}
	got, err := io.ReadAll(c)
	return len(got) == 0 && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestFaults: each fault, armed before the client connects or after a
// first exchange, gives the client exactly the bytes it should and ends
// (or keeps) the connection.
func TestFaults(t *testing.T) {
	cases := []struct {
		name   string
		arm    func(t *testing.T, p *Proxy) // before the client connects
		writes []string                     // sent one by one; each but the last is read back in full before the next
		after  func(t *testing.T, p *Proxy) // after the writes, before the final read
		want   string                       // all the client receives
		cut    bool                         // the connection ends after want
		stats  Stats                        // Refused and Cuts at the end
	}{
		{name: "pass through", writes: []string{"hello", "world"}, want: "helloworld"},
		{
			// The empty last write makes "ping" come back before the cut.
			name: "cut", writes: []string{"ping", ""}, want: "ping", cut: true,
			after: func(t *testing.T, p *Proxy) {
				if n := p.Cut(); n != 1 {
					t.Errorf("Cut closed %d connections, want 1", n)
				}
			},
			stats: Stats{Cuts: 1},
		},
		{
			name: "cut after n bytes from the server", writes: []string{"hello world"}, want: "hello", cut: true,
			arm:   func(t *testing.T, p *Proxy) { p.CutAfter(5) },
			stats: Stats{Cuts: 1},
		},
		{
			name: "cut after n bytes, across chunks", writes: []string{"abc", "defgh"}, want: "abcde", cut: true,
			arm:   func(t *testing.T, p *Proxy) { p.CutAfter(5) },
			stats: Stats{Cuts: 1},
		},
		{
			name: "cut on a pattern", writes: []string{"* 1 FETCH (UID 7 BODY[] {42}"}, want: "* 1 FETCH (", cut: true,
			arm:   func(t *testing.T, p *Proxy) { p.CutOn(" FETCH (", nil) },
			stats: Stats{Cuts: 1},
		},
		{
			name: "cut on a pattern split across chunks", writes: []string{"hello w", "orld"}, want: "hello wor", cut: true,
			arm:   func(t *testing.T, p *Proxy) { p.CutOn("wor", nil) },
			stats: Stats{Cuts: 1},
		},
		{
			name: "pattern never sent", writes: []string{"hello", "world"}, want: "helloworld",
			arm: func(t *testing.T, p *Proxy) { p.CutOn("FETCH", nil) },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := New(t, echoServer(t))
			if tc.arm != nil {
				tc.arm(t, p)
			}
			c := dial(t, p)
			var got []byte
			for i, w := range tc.writes {
				_, _ = c.Write([]byte(w)) // may fail once the proxy cut the connection
				if i < len(tc.writes)-1 {
					buf := make([]byte, len(w))
					if _, err := io.ReadFull(c, buf); err != nil {
						t.Fatalf("reading back %q: %v", w, err)
					}
					got = append(got, buf...)
				}
			}
			if tc.after != nil {
				tc.after(t, p)
			}
			if tc.cut {
				rest, err := io.ReadAll(c)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("the connection was not cut (got %q so far)", append(got, rest...))
				}
				got = append(got, rest...)
			} else {
				last := tc.writes[len(tc.writes)-1]
				buf := make([]byte, len(last))
				if _, err := io.ReadFull(c, buf); err != nil {
					t.Fatalf("reading back %q: %v", last, err)
				}
				got = append(got, buf...)
			}
			if string(got) != tc.want {
				t.Errorf("client got %q, want %q", got, tc.want)
			}
			st := p.Stats()
			if st.Refused != tc.stats.Refused || st.Cuts != tc.stats.Cuts {
				t.Errorf("stats %+v, want refused %d cuts %d", st, tc.stats.Refused, tc.stats.Cuts)
			}
		})
	}
}

// TestCutOnCallback: the callback runs once, just before the cut (so a
// fault it switches on is in place when the client notices), and the fired
// channel closes after the cut; the trigger does not fire again.
func TestCutOnCallback(t *testing.T) {
	p := New(t, echoServer(t))
	var calls, cutsBefore atomic.Int32
	fired := p.CutOn("x", func() {
		calls.Add(1)
		cutsBefore.Store(int32(p.Stats().Cuts))
		p.Refuse(true)
	})
	c := dial(t, p)
	_, _ = c.Write([]byte("abxcd"))
	if got, _ := io.ReadAll(c); string(got) != "abx" {
		t.Errorf("first connection got %q, want %q", got, "abx")
	}
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("fired channel not closed")
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("callback ran %d times", n)
	}
	if n, after := cutsBefore.Load(), p.Stats().Cuts; n != 0 || after != 1 {
		t.Errorf("cuts: %d when the callback ran, %d after the fired channel closed; want 0 and 1", n, after)
	}
	if !refused(t, p) {
		t.Error("a new connection was not refused")
	}
	p.Refuse(false)
	c3 := dial(t, p)
	if _, err := c3.Write([]byte("xx")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c3, buf); err != nil || string(buf) != "xx" {
		t.Errorf("after the one-shot cut: %q, %v", buf, err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("callback ran %d times", n)
	}
}

// TestStall: nothing passes while stalled, the connection stays open, and
// what was held back arrives once the stall ends.
func TestStall(t *testing.T) {
	p := New(t, echoServer(t))
	c := dial(t, p)
	p.Stall(true)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 4)
	if n, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while stalled: %q, %v; want a timeout", buf[:n], err)
	}
	c2 := dial(t, p) // a new connection is accepted while stalled
	waitOpen(t, p, 2)
	if st := p.Stats(); st.Cuts != 0 {
		t.Errorf("while stalled: %+v, want no cuts", st)
	}
	p.Stall(false)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after the stall: %q, %v", buf, err)
	}
	if _, err := c2.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c2, buf[:2]); err != nil || string(buf[:2]) != "ok" {
		t.Fatalf("second connection after the stall: %q, %v", buf[:2], err)
	}
}

// TestStallThenCut: a stalled connection can still be cut.
func TestStallThenCut(t *testing.T) {
	p := New(t, echoServer(t))
	c := dial(t, p)
	p.Stall(true)
	_, _ = c.Write([]byte("never"))
	waitOpen(t, p, 1)
	if n := p.Cut(); n != 1 {
		t.Fatalf("Cut closed %d", n)
	}
	if got, err := io.ReadAll(c); len(got) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("cut while stalled: %q, %v", got, err)
	}
}

// TestSlow: each chunk is delayed, both ways (a lower bound only).
func TestSlow(t *testing.T) {
	p := New(t, echoServer(t))
	const delay = 100 * time.Millisecond
	p.Slow(delay)
	c := dial(t, p)
	start := time.Now()
	if _, err := c.Write([]byte("slow")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "slow" {
		t.Fatalf("%q, %v", buf, err)
	}
	if d := time.Since(start); d < 2*delay {
		t.Errorf("round trip took %v, want at least %v (delayed each way)", d, 2*delay)
	}
	p.Slow(0)
	if _, err := c.Write([]byte("fast")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "fast" {
		t.Fatalf("%q, %v", buf, err)
	}
}

// TestRefuse: new connections are reset while Refuse is on; a connection
// made before is left alone; after Refuse(false) new ones are served.
func TestRefuse(t *testing.T) {
	p := New(t, echoServer(t))
	old := dial(t, p)
	waitOpen(t, p, 1)
	p.Refuse(true)
	for range 3 {
		if !refused(t, p) {
			t.Fatal("a new connection was not refused")
		}
	}
	echo(t, old, "still served")
	p.Refuse(false)
	echo(t, dial(t, p), "served again")
	if st := p.Stats(); st.Refused != 3 || st.Accepted != 2 || st.Cuts != 0 {
		t.Errorf("stats %+v, want 3 refused, 2 accepted, no cuts", st)
	}
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, buf, err)
	}
}

// TestTargetDown: with nothing listening at the target, a client is reset.
func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := New(t, addr)
	if !refused(t, p) {
		t.Error("a connection to a target that is down was not reset")
	}
	if st := p.Stats(); st.Refused != 1 || st.Accepted != 0 {
		t.Errorf("stats %+v", st)
	}
}

func waitOpen(t *testing.T, p *Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats().Open != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d open connections, want %d", p.Stats().Open, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
