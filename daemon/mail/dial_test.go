package mail

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/inboxd/inboxd/internal/testsvc"
)

const (
	memUser     = "alice"
	memPassword = "s3cret-Pa55word"
)

// testCert is a self-signed certificate for 127.0.0.1 and the pool that
// trusts it.
type testCert struct {
	server *tls.Config
	roots  *x509.CertPool
}

func newTestCert(t *testing.T) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "inboxd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return testCert{
		server: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}},
		roots:  roots,
	}
}

type memServerMode int

const (
	memPlain         memServerMode = iota // plain, no STARTTLS
	memStartTLS                           // plain with STARTTLS
	memImplicitTLS                        // TLS from the first byte
	memMessagesCount = 3
)

type bytesLiteral struct {
	*bytes.Reader
}

func (b bytesLiteral) Size() int64 { return b.Reader.Size() }

// startMemServer runs go-imap's in-memory server on 127.0.0.1:0 with user
// alice and 3 messages in INBOX, and returns its port.
func startMemServer(t *testing.T, mode memServerMode, cert testCert) int {
	t.Helper()
	mem := imapmemserver.New()
	u := imapmemserver.NewUser(memUser, memPassword)
	if err := u.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= memMessagesCount; i++ {
		raw := fmt.Sprintf("From: bob@example.com\r\nTo: alice@example.com\r\nSubject: message %d\r\nMessage-ID: <%d@example.com>\r\n\r\nbody %d\r\n", i, i, i)
		if _, err := u.Append("INBOX", bytesLiteral{bytes.NewReader([]byte(raw))}, &imap.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mem.AddUser(u)

	opts := &imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}},
		InsecureAuth: true,
		Logger:       log.New(io.Discard, "", 0),
	}
	if mode == memStartTLS {
		opts.TLSConfig = cert.server
	}
	srv := imapserver.New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if mode == memImplicitTLS {
		ln = tls.NewListener(ln, cert.server)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return port
}

// fakeServer accepts connections on 127.0.0.1:0 and hands each to handle;
// connections are closed when the test ends.
func fakeServer(t *testing.T, handle func(conn net.Conn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// silent accepts and never says a word.
func silent(conn net.Conn) { io.Copy(io.Discard, conn) }

// refusedPort returns a loopback port with nothing listening.
func refusedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// scripted runs a minimal IMAP server: it sends greeting, then answers each
// command line with respond (which may read further lines from r).
func scripted(greeting string, respond func(w io.Writer, r *bufio.Reader, tag, cmd, args string) (closeConn bool)) func(net.Conn) {
	return func(conn net.Conn) {
		defer conn.Close()
		r := bufio.NewReader(conn)
		io.WriteString(conn, greeting+"\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			cmd, args, _ := strings.Cut(rest, " ")
			cmd = strings.ToUpper(cmd)
			switch cmd {
			case "CAPABILITY":
				fmt.Fprintf(conn, "* CAPABILITY IMAP4rev1\r\n%s OK done\r\n", tag)
				continue
			case "NOOP":
				fmt.Fprintf(conn, "%s OK done\r\n", tag)
				continue
			case "LOGOUT":
				fmt.Fprintf(conn, "* BYE bye\r\n%s OK done\r\n", tag)
				return
			}
			if respond(conn, r, tag, cmd, args) {
				return
			}
		}
	}
}

const (
	oauthUser  = "alice@example.com"
	oauthToken = "ya29.test-token-XYZ"
)

// xoauth2Server checks the XOAUTH2 initial response and accepts only
// oauthUser/oauthToken. With sasIR false it does not advertise SASL-IR, so
// the client must wait for the empty challenge. With echoToken it puts the
// received initial response into its error text (a badly behaved server).
func xoauth2Server(t *testing.T, saslIR, echoToken bool) func(net.Conn) {
	caps := "IMAP4rev1 AUTH=XOAUTH2"
	if saslIR {
		caps += " SASL-IR"
	}
	want := "user=" + oauthUser + "\x01auth=Bearer " + oauthToken + "\x01\x01"
	return scripted("* OK [CAPABILITY "+caps+"] fake ready", func(w io.Writer, r *bufio.Reader, tag, cmd, args string) bool {
		if cmd != "AUTHENTICATE" {
			fmt.Fprintf(w, "%s BAD unexpected %s\r\n", tag, cmd)
			return false
		}
		mech, ir, hasIR := strings.Cut(args, " ")
		if mech != "XOAUTH2" {
			fmt.Fprintf(w, "%s NO unsupported mechanism\r\n", tag)
			return false
		}
		if hasIR != saslIR {
			fmt.Fprintf(w, "%s BAD initial response presence %v, want %v\r\n", tag, hasIR, saslIR)
			return false
		}
		if !hasIR {
			io.WriteString(w, "+ \r\n")
			line, err := r.ReadString('\n')
			if err != nil {
				return true
			}
			ir = strings.TrimRight(line, "\r\n")
		}
		got, err := base64.StdEncoding.DecodeString(ir)
		if err != nil {
			fmt.Fprintf(w, "%s BAD initial response is not base64\r\n", tag)
			return false
		}
		if string(got) == want {
			fmt.Fprintf(w, "%s OK [CAPABILITY IMAP4rev1] authenticated\r\n", tag)
			return false
		}
		detail := `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`
		if echoToken {
			detail = `{"status":"400","got":` + strconv.Quote(string(got)) + `}`
		}
		fmt.Fprintf(w, "+ %s\r\n", base64.StdEncoding.EncodeToString([]byte(detail)))
		if _, err := r.ReadString('\n'); err != nil { // the client's empty response
			return true
		}
		text := "Invalid credentials (Failure)"
		if echoToken {
			text += " for " + ir + " / " + string(got)
		}
		fmt.Fprintf(w, "%s NO [AUTHENTICATIONFAILED] %s\r\n", tag, strings.ReplaceAll(text, "\x01", "^A"))
		return false
	})
}

// echoLoginServer rejects every LOGIN and echoes the command's arguments
// (including the password as sent) in its NO text.
func echoLoginServer() func(net.Conn) {
	return scripted("* OK [CAPABILITY IMAP4rev1] echo ready", func(w io.Writer, _ *bufio.Reader, tag, cmd, args string) bool {
		fmt.Fprintf(w, "%s NO [AUTHENTICATIONFAILED] login %s failed\r\n", tag, args)
		return false
	})
}

func TestDialAndTestConnection(t *testing.T) {
	t.Parallel()
	cert := newTestCert(t)
	trusting := &tls.Config{RootCAs: cert.roots}

	plainPort := startMemServer(t, memPlain, cert)
	startTLSPort := startMemServer(t, memStartTLS, cert)
	tlsPort := startMemServer(t, memImplicitTLS, cert)
	silentPort := fakeServer(t, silent)
	garbagePort := fakeServer(t, func(c net.Conn) {
		io.WriteString(c, "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
		io.Copy(io.Discard, c)
	})
	smtpPort := fakeServer(t, func(c net.Conn) {
		io.WriteString(c, "220 mx.example.com ESMTP Postfix\r\n")
		io.Copy(io.Discard, c)
	})
	hangupPort := fakeServer(t, func(c net.Conn) { c.Close() })
	byePort := fakeServer(t, func(c net.Conn) {
		io.WriteString(c, "* BYE [UNAVAILABLE] too many connections from your IP\r\n")
		c.Close()
	})
	echoPort := fakeServer(t, echoLoginServer())
	xoauthPort := fakeServer(t, xoauth2Server(t, true, false))
	xoauthNoIRPort := fakeServer(t, xoauth2Server(t, false, false))
	xoauthEchoPort := fakeServer(t, xoauth2Server(t, true, true))

	acct := func(port int, sec Security) Account {
		return Account{Server: "127.0.0.1", Port: port, Security: sec, Username: memUser, Password: memPassword}
	}
	with := func(a Account, f func(*Account)) Account { f(&a); return a }

	tests := []struct {
		name        string
		acct        Account
		opts        DialOptions
		wantCount   uint32 // when wantClass is ""
		wantClass   ErrorClass
		wantMsg     []string // substrings of the message
		maxDuration time.Duration
		secrets     []string // must appear in no error text
	}{
		{name: "ok plain", acct: acct(plainPort, SecurityNone), wantCount: 3},
		{name: "ok starttls", acct: acct(startTLSPort, SecurityStartTLS), opts: DialOptions{TLSConfig: trusting}, wantCount: 3},
		{name: "ok tls", acct: acct(tlsPort, SecurityTLS), opts: DialOptions{TLSConfig: trusting}, wantCount: 3},
		{
			name: "wrong password", wantClass: ClassAuth,
			acct:    with(acct(plainPort, SecurityNone), func(a *Account) { a.Password = "Wr0ng-Pa55word" }),
			wantMsg: []string{"login rejected"}, secrets: []string{"Wr0ng-Pa55word"},
		},
		{
			name: "unknown user", wantClass: ClassAuth,
			acct: with(acct(plainPort, SecurityNone), func(a *Account) { a.Username = "mallory" }),
		},
		{
			name: "server echoes the password", wantClass: ClassAuth,
			acct:    with(acct(echoPort, SecurityNone), func(a *Account) { a.Password = "hunter2-echoed" }),
			wantMsg: []string{"login rejected: [AUTHENTICATIONFAILED]", "[REDACTED]"}, secrets: []string{"hunter2-echoed"},
		},
		{
			name: "server echoes a password that needs quoting", wantClass: ClassAuth,
			acct:    with(acct(echoPort, SecurityNone), func(a *Account) { a.Password = `pa"ss\word-9` }),
			wantMsg: []string{"[REDACTED]"}, secrets: []string{`pa"ss\word-9`, `pa\"ss\\word-9`, `ss\word`, `ss\\word`},
		},
		{
			name: "connection refused", wantClass: ClassConnect,
			acct:    acct(refusedPort(t), SecurityNone),
			wantMsg: []string{"connection refused by 127.0.0.1:"},
		},
		{
			name: "unresolvable host", wantClass: ClassDNS,
			acct:    with(acct(993, SecurityTLS), func(a *Account) { a.Server = "nonexistent.invalid" }),
			wantMsg: []string{`cannot resolve host "nonexistent.invalid"`},
		},
		{
			name: "no greeting", wantClass: ClassTimeout, opts: DialOptions{Timeout: time.Second},
			acct: acct(silentPort, SecurityNone), maxDuration: 3 * time.Second,
			wantMsg: []string{"timed out after 1s while waiting for the server greeting"},
		},
		{
			name: "no TLS handshake", wantClass: ClassTimeout, opts: DialOptions{Timeout: 500 * time.Millisecond},
			acct: acct(silentPort, SecurityTLS), maxDuration: 3 * time.Second,
			wantMsg: []string{"timed out after 500ms during the TLS handshake"},
		},
		{
			name: "no STARTTLS greeting", wantClass: ClassTimeout, opts: DialOptions{Timeout: 500 * time.Millisecond},
			acct: acct(silentPort, SecurityStartTLS), maxDuration: 3 * time.Second,
		},
		{
			name: "garbage greeting", wantClass: ClassProtocol,
			acct: acct(garbagePort, SecurityNone), wantMsg: []string{`unexpected greeting from 127.0.0.1:`, `"SSH-2.0-OpenSSH_9.2p1 Debian-2"`},
		},
		{
			name: "SMTP server", wantClass: ClassProtocol,
			acct: acct(smtpPort, SecurityNone), wantMsg: []string{"is this an IMAP server?"},
		},
		{
			name: "hang up before greeting", wantClass: ClassProtocol,
			acct: acct(hangupPort, SecurityNone), wantMsg: []string{"closed the connection without a greeting"},
		},
		{
			name: "BYE greeting", wantClass: ClassProtocol,
			acct: acct(byePort, SecurityNone), wantMsg: []string{"server refused the connection: BYE [UNAVAILABLE] too many connections"},
		},
		{
			name: "tls to a plain port", wantClass: ClassTLS,
			acct: acct(plainPort, SecurityTLS), opts: DialOptions{TLSConfig: trusting},
			wantMsg: []string{"did not answer with TLS"},
		},
		{
			name: "tls with an untrusted certificate", wantClass: ClassTLS,
			acct:    acct(tlsPort, SecurityTLS), // system roots do not know the test CA
			wantMsg: []string{"not trusted"},
		},
		{
			name: "tls with the wrong server name", wantClass: ClassTLS,
			acct:    acct(tlsPort, SecurityTLS),
			opts:    DialOptions{TLSConfig: &tls.Config{RootCAs: cert.roots, ServerName: "imap.example.com"}},
			wantMsg: []string{`not valid for "imap.example.com"`},
		},
		{
			name: "starttls with an untrusted certificate", wantClass: ClassTLS,
			acct: acct(startTLSPort, SecurityStartTLS),
		},
		{
			name: "starttls not offered", wantClass: ClassTLS,
			acct: acct(plainPort, SecurityStartTLS), opts: DialOptions{TLSConfig: trusting},
			wantMsg: []string{"server refused STARTTLS"},
		},
		{
			name: "xoauth2", wantCount: 0,
			acct: Account{Server: "127.0.0.1", Port: xoauthPort, Security: SecurityNone, Username: oauthUser, OAuthToken: oauthToken},
		},
		{
			name: "xoauth2 without SASL-IR",
			acct: Account{Server: "127.0.0.1", Port: xoauthNoIRPort, Security: SecurityNone, Username: oauthUser, OAuthToken: oauthToken},
		},
		{
			name: "xoauth2 rejected", wantClass: ClassAuth,
			acct:    Account{Server: "127.0.0.1", Port: xoauthPort, Security: SecurityNone, Username: oauthUser, OAuthToken: "expired-token-123"},
			wantMsg: []string{"login rejected: [AUTHENTICATIONFAILED] Invalid credentials", `"status":"400"`},
			secrets: []string{"expired-token-123"},
		},
		{
			name: "xoauth2 rejected by a server that echoes the token", wantClass: ClassAuth,
			acct:    Account{Server: "127.0.0.1", Port: xoauthEchoPort, Security: SecurityNone, Username: oauthUser, OAuthToken: "leaky-token-456"},
			wantMsg: []string{"[REDACTED]"},
			secrets: []string{"leaky-token-456", base64.StdEncoding.EncodeToString(xoauth2Response(oauthUser, "leaky-token-456"))},
		},
		{
			name: "invalid account", wantClass: ClassConfig,
			acct:    acct(0, SecurityNone),
			wantMsg: []string{"imap_port: must be 1-65535"},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			secrets := append([]string{tt.acct.Password, tt.acct.OAuthToken}, tt.secrets...)
			isXOAUTH := tt.acct.OAuthToken != ""

			// Dial
			start := time.Now()
			c, err := Dial(context.Background(), tt.acct, tt.opts)
			elapsed := time.Since(start)
			if tt.maxDuration > 0 && elapsed > tt.maxDuration {
				t.Errorf("Dial took %v, want at most %v", elapsed, tt.maxDuration)
			}
			if tt.wantClass == "" {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				// (c.State() is not asserted: imapclient completes Login().Wait()
				// a moment before it records the new state.)
				if !isXOAUTH {
					if _, err := c.Select("INBOX", nil).Wait(); err != nil {
						t.Errorf("SELECT after Dial: %v", err)
					}
				} else if err := c.Noop().Wait(); err != nil {
					t.Errorf("NOOP after Dial: %v", err)
				}
				if err := c.Logout().Wait(); err != nil {
					t.Errorf("LOGOUT: %v", err)
				}
				c.Close()
			} else {
				if err == nil {
					c.Close()
					t.Fatalf("Dial succeeded, want class %s", tt.wantClass)
				}
				checkError(t, err, tt.wantClass, tt.wantMsg, secrets)
			}

			// TestConnection (the scripted XOAUTH2 server has no mailboxes)
			if isXOAUTH && tt.wantClass == "" {
				return
			}
			res := TestConnection(context.Background(), tt.acct, tt.opts)
			if tt.wantClass == "" {
				if !res.OK || res.Error != nil || res.MailboxCount != tt.wantCount {
					t.Fatalf("TestConnection = %+v, want OK with mailbox_count %d", res, tt.wantCount)
				}
				return
			}
			if res.OK || res.Error == nil {
				t.Fatalf("TestConnection = %+v, want class %s", res, tt.wantClass)
			}
			t.Logf("%s: %s (Dial: %v)", res.Error.Class, res.Error.Message, err)
			if res.Error.Class != tt.wantClass {
				if tt.wantClass == ClassDNS && res.Error.Class == ClassConnect {
					t.Logf("no DNS on this machine? got class connect: %s", res.Error.Message)
				} else {
					t.Errorf("TestConnection class = %s (%s), want %s", res.Error.Class, res.Error.Message, tt.wantClass)
				}
			}
			for _, want := range tt.wantMsg {
				if !strings.Contains(res.Error.Message, want) {
					t.Errorf("TestConnection message %q does not contain %q", res.Error.Message, want)
				}
			}
			if strings.HasPrefix(res.Error.Message, "mail:") {
				t.Errorf("TestConnection message %q carries the Go error prefix", res.Error.Message)
			}
			js, _ := json.Marshal(res)
			for _, s := range secrets {
				if s != "" && strings.Contains(string(js), s) {
					t.Errorf("TestConnection JSON %s contains secret %q", js, s)
				}
			}
		})
	}
}

// checkError asserts err's class and message, and that no error in its
// chain (nor anything errors.As can extract) mentions a secret.
func checkError(t *testing.T, err error, class ErrorClass, msgs []string, secrets []string) {
	t.Helper()
	var me *Error
	if !errors.As(err, &me) {
		t.Fatalf("error %T %v is not a *mail.Error", err, err)
	}
	if got := Classify(err); got != class {
		if class == ClassDNS && got == ClassConnect {
			t.Logf("no DNS on this machine? got class connect: %v", err)
		} else {
			t.Errorf("Classify(%v) = %s, want %s", err, got, class)
		}
	}
	if !strings.HasPrefix(err.Error(), "mail: ") {
		t.Errorf("error %q does not start with \"mail: \"", err)
	}
	for _, want := range msgs {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	var texts []string
	for e := error(err); e != nil; e = errors.Unwrap(e) {
		texts = append(texts, e.Error(), fmt.Sprintf("%+v", e))
	}
	var ie *imap.Error
	if errors.As(err, &ie) {
		texts = append(texts, ie.Text)
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		for _, txt := range texts {
			if strings.Contains(txt, s) {
				t.Errorf("error text %q contains secret %q", txt, s)
			}
		}
	}
}

func TestDialContext(t *testing.T) {
	t.Parallel()
	port := fakeServer(t, silent)
	acct := Account{Server: "127.0.0.1", Port: port, Security: SecurityNone, Username: "u", Password: "p"}

	t.Run("deadline shorter than Timeout", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Dial(ctx, acct, DialOptions{Timeout: time.Minute})
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Dial took %v with a 300ms deadline", d)
		}
		checkError(t, err, ClassTimeout, []string{"timed out after 300ms"}, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		_, err := Dial(ctx, acct, DialOptions{})
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Dial took %v after cancel", d)
		}
		checkError(t, err, ClassTimeout, []string{"canceled while waiting for the server greeting"}, nil)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("errors.Is(%v, context.Canceled) = false", err)
		}
	})
	t.Run("TestConnection timeout", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		res := TestConnection(context.Background(), acct, DialOptions{Timeout: 500 * time.Millisecond})
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("TestConnection took %v with a 500ms timeout", d)
		}
		if res.OK || res.Error == nil || res.Error.Class != ClassTimeout {
			t.Errorf("TestConnection = %+v, want class timeout", res)
		}
	})
}

// A server that logs in and then never answers SELECT: TestConnection is
// bounded by the same timeout.
func TestTestConnectionSelectTimeout(t *testing.T) {
	t.Parallel()
	port := fakeServer(t, scripted("* OK [CAPABILITY IMAP4rev1] ready", func(w io.Writer, r *bufio.Reader, tag, cmd, args string) bool {
		if cmd == "LOGIN" {
			fmt.Fprintf(w, "%s OK [CAPABILITY IMAP4rev1] logged in\r\n", tag)
			return false
		}
		io.Copy(io.Discard, r) // swallow SELECT and everything after it
		return true
	}))
	acct := Account{Server: "127.0.0.1", Port: port, Security: SecurityNone, Username: "u", Password: "p"}
	start := time.Now()
	res := TestConnection(context.Background(), acct, DialOptions{Timeout: 700 * time.Millisecond})
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("TestConnection took %v with a 700ms timeout", d)
	}
	if res.OK || res.Error == nil || res.Error.Class != ClassTimeout || !strings.Contains(res.Error.Message, "opening INBOX") {
		t.Errorf("TestConnection = %+v, want a timeout opening INBOX", res)
	}
}

func TestTestResultJSON(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		res  TestResult
		want string
	}{
		{TestResult{OK: true, MailboxCount: 3}, `{"ok":true,"mailbox_count":3}`},
		{TestResult{OK: true}, `{"ok":true}`},
		{TestResult{Error: &TestError{Class: ClassAuth, Message: "login rejected"}}, `{"ok":false,"error":{"class":"auth","message":"login rejected"}}`},
	} {
		got, err := json.Marshal(tt.res)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.want {
			t.Errorf("json = %s, want %s", got, tt.want)
		}
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	mailErr := &Error{Class: ClassAuth, Op: "login", Err: errors.New("login rejected")}
	for _, tt := range []struct {
		name string
		err  error
		want ErrorClass
	}{
		{"nil", nil, ""},
		{"mail error", mailErr, ClassAuth},
		{"wrapped mail error", fmt.Errorf("poll: %w", mailErr), ClassAuth},
		{"deadline", context.DeadlineExceeded, ClassTimeout},
		{"canceled", context.Canceled, ClassTimeout},
		{"os deadline", fmt.Errorf("read: %w", os.ErrDeadlineExceeded), ClassTimeout},
		{"dns", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}}, ClassDNS},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, ClassConnect},
		{"tls record", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, ClassTLS},
		{"x509", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, ClassTLS},
		{"imap NO", &imap.Error{Type: imap.StatusResponseTypeNo, Text: "nope"}, ClassProtocol},
		{"other", io.ErrUnexpectedEOF, ClassProtocol},
	} {
		if got := Classify(tt.err); got != tt.want {
			t.Errorf("%s: Classify(%v) = %q, want %q", tt.name, tt.err, got, tt.want)
		}
	}
	if s := (&Error{Class: ClassTimeout, Op: "dial"}).Error(); s != "mail: dial: timeout error" {
		t.Errorf("Error with nil Err: %q", s)
	}
}

func TestAccountValidate(t *testing.T) {
	t.Parallel()
	good := Account{Server: "imap.example.com", Port: 993, Security: SecurityTLS, Username: "alice@example.com", Password: "pw"}
	with := func(f func(*Account)) Account { a := good; f(&a); return a }
	for _, tt := range []struct {
		name    string
		acct    Account
		wantErr string // "" = valid
	}{
		{"ok", good, ""},
		{"ok ipv4", with(func(a *Account) { a.Server = "192.0.2.1" }), ""},
		{"ok ipv6", with(func(a *Account) { a.Server = "2001:db8::1" }), ""},
		{"ok single label", with(func(a *Account) { a.Server = "localhost" }), ""},
		{"ok trailing dot", with(func(a *Account) { a.Server = "imap.example.com." }), ""},
		{"ok starttls", with(func(a *Account) { a.Security = SecurityStartTLS; a.Port = 143 }), ""},
		{"ok none", with(func(a *Account) { a.Security = SecurityNone }), ""},
		{"ok port 1", with(func(a *Account) { a.Port = 1 }), ""},
		{"ok port 65535", with(func(a *Account) { a.Port = 65535 }), ""},
		{"ok oauth without password", with(func(a *Account) { a.Password = ""; a.OAuthToken = "t" }), ""},
		{"empty server", with(func(a *Account) { a.Server = "" }), "imap_server: must not be empty"},
		{"scheme", with(func(a *Account) { a.Server = "imaps://imap.example.com" }), "imap_server: must be a host name without a scheme"},
		{"space", with(func(a *Account) { a.Server = "imap example.com" }), "imap_server: must not contain spaces"},
		{"leading space", with(func(a *Account) { a.Server = " imap.example.com" }), "imap_server: must not contain spaces"},
		{"host:port", with(func(a *Account) { a.Server = "imap.example.com:993" }), "imap_server: must be a host name or IP address, without port"},
		{"path", with(func(a *Account) { a.Server = "imap.example.com/x" }), "imap_server:"},
		{"bracketed ipv6", with(func(a *Account) { a.Server = "[2001:db8::1]" }), "imap_server:"},
		{"empty label", with(func(a *Account) { a.Server = "imap..example.com" }), "imap_server: must be a valid host name"},
		{"leading hyphen", with(func(a *Account) { a.Server = "-imap.example.com" }), "imap_server: must be a valid host name"},
		{"bad char", with(func(a *Account) { a.Server = "imap!.example.com" }), "imap_server: must be a valid host name"},
		{"long label", with(func(a *Account) { a.Server = strings.Repeat("a", 64) + ".com" }), "imap_server: must be a valid host name"},
		{"port 0", with(func(a *Account) { a.Port = 0 }), "imap_port: must be 1-65535"},
		{"port negative", with(func(a *Account) { a.Port = -1 }), "imap_port: must be 1-65535"},
		{"port too big", with(func(a *Account) { a.Port = 65536 }), "imap_port: must be 1-65535"},
		{"security empty", with(func(a *Account) { a.Security = "" }), "imap_security: must be one of"},
		{"security ssl", with(func(a *Account) { a.Security = "ssl" }), "imap_security: must be one of"},
		{"security upper case", with(func(a *Account) { a.Security = "TLS" }), "imap_security: must be one of"},
		{"username empty", with(func(a *Account) { a.Username = "" }), "imap_username: must not be empty"},
		{"username blank", with(func(a *Account) { a.Username = "  " }), "imap_username: must not be empty"},
		{"username newline", with(func(a *Account) { a.Username = "a\r\nb" }), "imap_username: must not contain control characters"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.acct.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want %q...", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), tt.acct.Password) {
				t.Errorf("Validate() error %q contains the password", err)
			}
		})
	}
}

// Dovecot is the integration truth.
func TestDovecotConnection(t *testing.T) {
	t.Parallel()
	const user, password = "alice", "dovecot-Pa55"
	dc := testsvc.Dovecot(t, map[string]string{user: password})
	for i := 1; i <= 2; i++ {
		dc.Deliver(t, user, []byte(fmt.Sprintf("From: bob@example.com\r\nTo: alice@example.com\r\nSubject: test %d\r\nMessage-ID: <dc%d@example.com>\r\n\r\nHello %d\r\n", i, i, i)))
	}
	acct := Account{Server: dc.Host, Port: dc.Port, Security: SecurityNone, Username: user, Password: password}
	ctx := context.Background()

	t.Run("ok", func(t *testing.T) {
		res := TestConnection(ctx, acct, DialOptions{})
		if !res.OK || res.MailboxCount != 2 {
			t.Fatalf("TestConnection = %+v, want OK with mailbox_count 2", res)
		}
	})
	t.Run("Dial", func(t *testing.T) {
		c, err := Dial(ctx, acct, DialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !c.Caps().Has(imap.CapIdle) {
			t.Errorf("Dovecot capabilities after login lack IDLE: %v", c.Caps())
		}
		if err := c.Logout().Wait(); err != nil {
			t.Error(err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		bad := acct
		bad.Password = "not-the-Pa55"
		_, err := Dial(ctx, bad, DialOptions{})
		checkError(t, err, ClassAuth, []string{"login rejected: [AUTHENTICATIONFAILED]"}, []string{bad.Password})
		res := TestConnection(ctx, bad, DialOptions{})
		if res.OK || res.Error == nil || res.Error.Class != ClassAuth || strings.Contains(res.Error.Message, bad.Password) {
			t.Errorf("TestConnection = %+v, want class auth without the password", res)
		}
	})
	t.Run("starttls not offered", func(t *testing.T) { // ssl = no
		st := acct
		st.Security = SecurityStartTLS
		_, err := Dial(ctx, st, DialOptions{})
		checkError(t, err, ClassTLS, []string{"server refused STARTTLS"}, []string{password})
	})
}

func TestAccountFormattingHidesSecrets(t *testing.T) {
	t.Parallel()
	a := Account{Server: "imap.example.com", Port: 993, Security: SecurityTLS, Username: "alice", Password: "pw-S3CRET", OAuthToken: "tok-S3CRET"}
	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("dial", "account", a)
	for _, s := range []string{
		fmt.Sprint(a), fmt.Sprintf("%v %+v %#v %s", a, a, a, a), fmt.Sprintf("%+v", &a),
		fmt.Sprintf("%+v", struct{ A Account }{a}), logBuf.String(),
	} {
		if strings.Contains(s, "S3CRET") {
			t.Errorf("formatted account leaks a secret: %s", s)
		}
		if !strings.Contains(s, "imap.example.com") || !strings.Contains(s, "*****") {
			t.Errorf("formatted account lacks server or mask: %s", s)
		}
	}
}
