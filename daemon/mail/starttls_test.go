package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestStartTLSHostile: a STARTTLS server that misbehaves fails the dial
// with a clear error, and one that streams a response line without end over
// the TLS session it negotiated is cut off by the line guard, as plain and
// implicit-TLS servers are (issue #8), not after its gigabyte.
func TestStartTLSHostile(t *testing.T) {
	t.Parallel()
	cert := newTestCert(t)
	trusting := &tls.Config{RootCAs: cert.roots}

	var sent atomic.Int64 // bytes of the endless line the server got out
	// startTLSServer greets, answers STARTTLS with answer and, when that is
	// an OK alone, negotiates TLS and hands the session to after.
	startTLSServer := func(greeting, answer string, after func(c net.Conn, r *bufio.Reader)) int {
		return fakeServer(t, func(c net.Conn) {
			io.WriteString(c, greeting+"\r\n")
			r := bufio.NewReader(c)
			if line, err := r.ReadString('\n'); err != nil || !strings.HasSuffix(strings.TrimSpace(line), "STARTTLS") {
				return
			}
			io.WriteString(c, answer)
			if answer != startTLSTag+" OK begin TLS\r\n" {
				io.Copy(io.Discard, r)
				return
			}
			tc := tls.Server(c, cert.server)
			if err := tc.Handshake(); err != nil {
				return
			}
			after(tc, bufio.NewReader(tc))
		})
	}
	endless := startTLSServer("* OK ready", startTLSTag+" OK begin TLS\r\n", func(c net.Conn, r *bufio.Reader) {
		if _, err := r.ReadString('\n'); err != nil { // CAPABILITY or LOGIN
			return
		}
		io.WriteString(c, "* ")
		chunk := []byte(strings.Repeat("a", 64<<10))
		for sent.Load() < 1<<30 {
			n, err := c.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return // the client hung up
			}
		}
	})
	injected := startTLSServer("* OK ready", startTLSTag+" OK begin TLS\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n", nil)
	preauth := startTLSServer("* PREAUTH logged in already", "", nil)
	refused := startTLSServer("* OK ready", startTLSTag+" NO [PRIVACYREQUIRED] not today\r\n", nil)

	acct := func(port int) Account {
		return Account{Server: "127.0.0.1", Port: port, Security: SecurityStartTLS, Username: "alice", Password: "pw"}
	}
	cases := []struct {
		name      string
		port      int
		wantClass ErrorClass
		wantMsg   string
	}{
		{"endless line over TLS", endless, ClassProtocol, "response line over"},
		{"data after the STARTTLS answer", injected, ClassProtocol, "sent data after its answer to STARTTLS"},
		{"PREAUTH before STARTTLS", preauth, ClassProtocol, "PREAUTH on an unencrypted connection"},
		{"STARTTLS refused", refused, ClassTLS, "server refused STARTTLS: [PRIVACYREQUIRED] not today"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(context.Background(), acct(tc.port), DialOptions{Timeout: 30 * time.Second, TLSConfig: trusting})
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			var me *Error
			if !errors.As(err, &me) || me.Class != tc.wantClass || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error %v (class %v), want class %s naming %q", err, me, tc.wantClass, tc.wantMsg)
			}
		})
	}
	if n := sent.Load(); n >= 1<<30 {
		t.Errorf("the endless line ran to its end (%d bytes): the guard did not stop it", n)
	}
}
