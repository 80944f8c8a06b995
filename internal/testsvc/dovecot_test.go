package testsvc_test

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/internal/testsvc"
)

func dovecotLogin(t *testing.T, s *testsvc.DovecotServer, user, password string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(s.Addr(), &imapclient.Options{Dialer: &net.Dialer{Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatalf("dial %s: %v", s.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return c
}

func TestDovecot(t *testing.T) {
	t.Parallel()
	s := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw", "bob": "bob-pw"})
	if s.Host != "127.0.0.1" || s.Port == 0 || s.Addr() != net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) || s.ConfigPath == "" {
		t.Fatalf("server fields: %+v", s)
	}

	msg := []byte("From: carol@example.com\r\nTo: alice@example.com\r\nSubject: hello\r\nMessage-ID: <1@example.com>\r\n\r\nHi Alice\r\n")
	uid1 := s.Deliver(t, "alice", msg)
	uid2 := s.Deliver(t, "alice", msg)
	if uid1 == 0 || uid2 <= uid1 {
		t.Fatalf("UIDs from Deliver: %d, %d", uid1, uid2)
	}

	t.Run("inbox and special-use folders", func(t *testing.T) {
		c := dovecotLogin(t, s, "alice", "alice-pw")
		sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		if sel.NumMessages != 2 {
			t.Errorf("alice INBOX has %d messages, want 2", sel.NumMessages)
		}
		boxes, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]imap.MailboxAttr{}
		for _, b := range boxes {
			got[b.Mailbox] = b.Attrs
		}
		for name, attr := range map[string]imap.MailboxAttr{
			"Drafts": imap.MailboxAttrDrafts, "Sent": imap.MailboxAttrSent,
			"Trash": imap.MailboxAttrTrash, "Archive": imap.MailboxAttrArchive,
		} {
			if !slices.Contains(got[name], attr) {
				t.Errorf("LIST: %s has attributes %v, want %s (all: %v)", name, got[name], attr, got)
			}
		}
		if _, ok := got["INBOX"]; !ok {
			t.Errorf("LIST has no INBOX: %v", got)
		}
	})

	t.Run("users are isolated", func(t *testing.T) {
		c := dovecotLogin(t, s, "bob", "bob-pw")
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		if sel.NumMessages != 0 {
			t.Errorf("bob INBOX has %d messages, want 0", sel.NumMessages)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		c, err := imapclient.DialInsecure(s.Addr(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Login("alice", "nope").Wait()
		if err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
			t.Fatalf("login with a wrong password: %v", err)
		}
	})

	t.Run("AddUser", func(t *testing.T) {
		s.AddUser(t, "dave", "dave-pw")
		s.Deliver(t, "dave", msg)
		c := dovecotLogin(t, s, "dave", "dave-pw")
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		if sel.NumMessages != 1 {
			t.Errorf("dave INBOX has %d messages, want 1", sel.NumMessages)
		}
	})

	t.Run("Doveadm", func(t *testing.T) {
		s.Doveadm(t, "mailbox", "update", "-u", "alice", "--uid-validity", "4242", "INBOX")
		out := s.Doveadm(t, "mailbox", "status", "-u", "alice", "uidvalidity", "INBOX")
		if !strings.Contains(out, "4242") {
			t.Errorf("uidvalidity after update: %q", out)
		}
	})
}

// Two instances run side by side without sharing state.
func TestDovecotTwoInstances(t *testing.T) {
	t.Parallel()
	a := testsvc.Dovecot(t, map[string]string{"u": "p1"})
	b := testsvc.Dovecot(t, map[string]string{"u": "p2"})
	if a.Port == b.Port || a.Dir == b.Dir {
		t.Fatalf("instances share port or dir: %d/%d %s/%s", a.Port, b.Port, a.Dir, b.Dir)
	}
	a.Deliver(t, "u", []byte("Subject: a\r\n\r\na\r\n"))
	cb := dovecotLogin(t, b, "u", "p2")
	sel, err := cb.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 0 {
		t.Errorf("second instance sees %d messages, want 0", sel.NumMessages)
	}
}
