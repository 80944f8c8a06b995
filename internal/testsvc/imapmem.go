package testsvc

import (
	"bytes"
	"io"
	"log"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// MemIMAPServer is go-imap's in-memory IMAP server on a loopback port, for
// fast tests (Dovecot is the integration truth). Plain text, LOGIN allowed.
type MemIMAPServer struct {
	Host  string
	Port  int
	users map[string]*imapmemserver.User
}

// MemIMAP starts an in-memory IMAP server with the given users
// (username -> password), each with an empty INBOX; it stops with the test.
func MemIMAP(t testing.TB, accounts map[string]string) *MemIMAPServer {
	t.Helper()
	mem := imapmemserver.New()
	s := &MemIMAPServer{Host: "127.0.0.1", users: map[string]*imapmemserver.User{}}
	for name, pw := range accounts {
		u := imapmemserver.NewUser(name, pw)
		if err := u.Create("INBOX", nil); err != nil {
			t.Fatalf("testsvc: memimap create INBOX: %v", err)
		}
		mem.AddUser(u)
		s.users[name] = u
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsvc: memimap listen: %v", err)
	}
	s.Port = ln.Addr().(*net.TCPAddr).Port
	go srv.Serve(ln) //nolint:errcheck // returns when closed below
	t.Cleanup(func() { srv.Close() })
	return s
}

// Deliver appends a raw RFC 5322 message to the user's INBOX.
func (s *MemIMAPServer) Deliver(t testing.TB, user string, raw []byte) {
	t.Helper()
	u, ok := s.users[user]
	if !ok {
		t.Fatalf("testsvc: memimap has no user %q", user)
	}
	if _, err := u.Append("INBOX", literal{bytes.NewReader(raw), int64(len(raw))}, &imap.AppendOptions{Time: time.Now()}); err != nil {
		t.Fatalf("testsvc: memimap append: %v", err)
	}
}

type literal struct {
	*bytes.Reader
	n int64
}

func (l literal) Size() int64 { return l.n }
