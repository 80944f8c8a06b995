package mail

import (
	"bufio"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// testProxy forwards TCP to target. It notes the name of every command the
// clients send (commands), and Freeze makes every connection open at that
// moment silently stop forwarding (a half-open connection), while new
// connections work.
type testProxy struct {
	addr   string
	mu     sync.Mutex
	frozen []*atomic.Bool
	cmds   []string
}

func newTestProxy(t *testing.T, target string) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &testProxy{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			frozen := new(atomic.Bool)
			p.mu.Lock()
			p.frozen = append(p.frozen, frozen)
			p.mu.Unlock()
			go p.forwardCommands(up, c, frozen)
			go forward(c, up, frozen)
			t.Cleanup(func() { c.Close(); up.Close() })
		}
	}()
	return p
}

// forwardCommands passes the client's lines on, noting each command's name
// (the word after the tag) first.
func (p *testProxy) forwardCommands(dst, src net.Conn, frozen *atomic.Bool) {
	r := bufio.NewReader(src)
	for {
		line, err := r.ReadString('\n')
		if f := strings.Fields(line); len(f) >= 2 {
			p.mu.Lock()
			p.cmds = append(p.cmds, strings.ToUpper(f[1]))
			p.mu.Unlock()
		}
		if len(line) > 0 && !frozen.Load() {
			dst.Write([]byte(line))
		}
		if err != nil {
			if !frozen.Load() {
				dst.Close()
			}
			return
		}
	}
}

// forward passes the server's bytes on.
func forward(dst, src net.Conn, frozen *atomic.Bool) {
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if n > 0 && !frozen.Load() {
			dst.Write(buf[:n])
		}
		if err != nil {
			if !frozen.Load() {
				dst.Close()
			}
			return
		}
	}
}

// account returns a with the proxy as its server.
func (p *testProxy) account(a Account) Account {
	host, port, _ := net.SplitHostPort(p.addr)
	a.Server = host
	a.Port, _ = strconv.Atoi(port)
	return a
}

// Freeze stops every connection open now.
func (p *testProxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.frozen {
		f.Store(true)
	}
}

// commands returns the command names noted since the last call. A command
// is noted before it is passed on, so once its answer is back it is here.
func (p *testProxy) commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.cmds
	p.cmds = nil
	return out
}
