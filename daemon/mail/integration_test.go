package mail

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/internal/testsvc"
)

// chainMessages is a three-message reply chain plus an unrelated message,
// in delivery order: root, unrelated, reply 1, reply 2.
func chainMessages() [][]byte {
	msg := func(headers, body string) []byte {
		s := strings.TrimLeft(headers, "\n") + "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n" + body
		return []byte(strings.ReplaceAll(s, "\n", "\r\n"))
	}
	return [][]byte{
		msg(`
From: Alice <alice@example.com>
To: Bob <bob@example.org>
Subject: Project kickoff
Date: Mon, 01 Jan 2024 09:00:00 +0000
Message-ID: <root-1@example.com>
`, "Shall we start the project on Monday?\n\nAlice\n"),
		msg(`
From: Shop <news@shop.example>
To: Alice <alice@example.com>
Subject: Weekly offers
Date: Mon, 01 Jan 2024 09:30:00 +0000
Message-ID: <offers-7@shop.example>
`, "Buy things.\n"),
		msg(`
From: Bob <bob@example.org>
To: Alice <alice@example.com>
Subject: Re: Project kickoff
Date: Mon, 01 Jan 2024 10:00:00 +0000
Message-ID: <reply-1@example.org>
In-Reply-To: <root-1@example.com>
References: <root-1@example.com>
`, "Monday works.\n\nOn Mon, Jan 1, 2024 at 9:00 AM Alice <alice@example.com> wrote:\n> Shall we start the project on Monday?\n"),
		msg(`
From: Alice <alice@example.com>
To: Bob <bob@example.org>
Cc: Carol <carol@example.net>
Subject: Re: Project kickoff
Date: Mon, 01 Jan 2024 11:00:00 +0000
Message-ID: <reply-2@example.com>
In-Reply-To: <reply-1@example.org>
References: <root-1@example.com> <reply-1@example.org>
`, "Great, adding Carol.\n\n> Monday works.\n"),
	}
}

// checkChainThread checks a fetched thread of the chain (UIDs 1, 3, 4).
func checkChainThread(t *testing.T, th *Thread, method ThreadMethod) {
	t.Helper()
	if th.Method != method {
		t.Errorf("method %q, want %q", th.Method, method)
	}
	var uids []imap.UID
	var ids []string
	for _, m := range th.Messages {
		uids = append(uids, m.UID)
		ids = append(ids, m.MessageID)
	}
	if want := []imap.UID{1, 3, 4}; !slices.Equal(uids, want) {
		t.Fatalf("thread UIDs %v, want %v", uids, want)
	}
	if want := []string{"root-1@example.com", "reply-1@example.org", "reply-2@example.com"}; !slices.Equal(ids, want) {
		t.Fatalf("thread ids %v, want %v", ids, want)
	}
	if got := th.Messages[1].BodyCleaned; got != "Monday works." {
		t.Errorf("reply 1 cleaned body %q", got)
	}
	if got := th.Messages[2].Cc; len(got) != 1 || got[0].Email != "carol@example.net" {
		t.Errorf("reply 2 Cc %v", got)
	}
	if th.Messages[0].ID != EncodeMessageID("INBOX", 1) || th.Subject() != "Project kickoff" {
		t.Errorf("id %q subject %q", th.Messages[0].ID, th.Subject())
	}
	for _, m := range th.Messages {
		if slices.Contains(m.Flags, imap.FlagSeen) {
			t.Errorf("UID %d fetched with \\Seen already set", m.UID)
		}
	}
	md := ThreadMarkdown(th)
	for _, want := range []string{"# Email Thread\n\n**Messages:** 3\n", "## Message 3\n", "- **CC:** Carol <carol@example.net>\n", "Great, adding Carol."} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "> Monday works.") {
		t.Errorf("markdown kept a quote:\n%s", md)
	}
}

// assertNoneSeen fetches the flags of every message of INBOX.
func assertNoneSeen(t *testing.T, c *imapclient.Client) {
	t.Helper()
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3, 4), &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 4 {
		t.Fatalf("%d messages", len(msgs))
	}
	for _, m := range msgs {
		if slices.Contains(m.Flags, imap.FlagSeen) {
			t.Errorf("UID %d has \\Seen after fetching its thread", m.UID)
		}
	}
}

func TestDovecot(t *testing.T) {
	srv := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw", "bob": "bob-pw"})
	acct := Account{Server: srv.Host, Port: srv.Port, Security: SecurityNone, Username: "alice", Password: "alice-pw"}
	for _, raw := range chainMessages() {
		srv.Deliver(t, "alice", raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	p := newTestPool(t, PoolOptions{IdleCheck: time.Millisecond})

	t.Run("pool reuse and NOOP after idle", func(t *testing.T) {
		c, err := p.Acquire(ctx, "alice-id", acct)
		if err != nil {
			t.Fatal(err)
		}
		first := c.Client()
		if _, err := first.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		c.Release()
		time.Sleep(5 * time.Millisecond)
		before := p.Stats()
		c, err = p.Acquire(ctx, "alice-id", acct)
		if err != nil {
			t.Fatal(err)
		}
		after := p.Stats()
		if c.Client() != first {
			t.Fatal("second Acquire dialed instead of reusing")
		}
		if after.Checks != before.Checks+1 || after.Dials != before.Dials {
			t.Fatalf("stats before %+v after %+v", before, after)
		}
		c.Release()

		// The server drops the idle connection: the pool notices and dials anew.
		srv.Doveadm(t, "kick", "alice")
		deadline := time.Now().Add(5 * time.Second)
		for {
			select {
			case <-first.Closed():
			case <-time.After(50 * time.Millisecond):
				if time.Now().Before(deadline) {
					continue
				}
				t.Log("kicked connection not closed yet; the NOOP check must catch it")
			}
			break
		}
		c, err = p.Acquire(ctx, "alice-id", acct)
		if err != nil {
			t.Fatal(err)
		}
		if c.Client() == first {
			t.Fatal("kicked connection handed out")
		}
		if err := c.Client().Noop().Wait(); err != nil {
			t.Fatal(err)
		}
		c.Release()
	})

	t.Run("folders by special-use", func(t *testing.T) {
		c, err := p.Acquire(ctx, "alice-id", acct)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		f, err := ResolveFolders(ctx, c.Client())
		if err != nil {
			t.Fatal(err)
		}
		for role, want := range map[Role]string{RoleInbox: "INBOX", RoleDrafts: "Drafts", RoleSent: "Sent", RoleTrash: "Trash", RoleArchive: "Archive"} {
			got, err := f.Name(role)
			if err != nil || got != want {
				t.Errorf("%s = %q, %v, want %q", role, got, err, want)
			}
			if role != RoleInbox && f.How(role) != MatchSpecialUse {
				t.Errorf("%s found by %q, want special-use", role, f.How(role))
			}
		}
		if _, err := f.Name(RoleJunk); err == nil || !errors.Is(err, ErrNoFolder) {
			t.Errorf("junk: %v", err)
		}
	})

	t.Run("thread", func(t *testing.T) {
		c, err := p.Acquire(ctx, "alice-id", acct)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		client := c.Client()
		if !client.Caps().Has(imap.Cap("THREAD=REFERENCES")) {
			t.Fatalf("Dovecot does not advertise THREAD=REFERENCES: %v", client.Caps())
		}
		for _, uid := range []imap.UID{1, 3, 4} {
			server, err := FetchThread(ctx, client, "INBOX", uid, ThreadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkChainThread(t, server, ThreadReferences)

			local, err := FetchThread(ctx, client, "INBOX", uid, ThreadOptions{Method: ThreadClient})
			if err != nil {
				t.Fatal(err)
			}
			checkChainThread(t, local, ThreadClient)
			if ThreadMarkdown(local) != ThreadMarkdown(server) {
				t.Errorf("client-side and server threads render differently")
			}
		}
		// The unrelated message is a thread of its own either way.
		for _, m := range []ThreadMethod{ThreadAuto, ThreadClient} {
			th, err := FetchThread(ctx, client, "INBOX", 2, ThreadOptions{Method: m})
			if err != nil {
				t.Fatal(err)
			}
			if len(th.Messages) != 1 || th.Messages[0].UID != 2 {
				t.Errorf("%q: unrelated message thread %d messages", m, len(th.Messages))
			}
		}
		// A scan window that misses the root and the first reply: the
		// message is read anyway and its ancestors are found by Message-ID.
		th, err := FetchThread(ctx, client, "INBOX", 1, ThreadOptions{Method: ThreadClient, Scan: 1})
		if err != nil {
			t.Fatal(err)
		}
		checkChainThread(t, th, ThreadClient)

		if _, err := FetchThread(ctx, client, "INBOX", 99, ThreadOptions{}); !errors.Is(err, ErrMessageNotFound) {
			t.Errorf("missing UID: %v", err)
		}
		if _, err := FetchThread(ctx, client, "INBOX", 99, ThreadOptions{Method: ThreadClient}); !errors.Is(err, ErrMessageNotFound) {
			t.Errorf("missing UID, client-side: %v", err)
		}
		assertNoneSeen(t, client)
	})

	t.Run("context ends the fetch", func(t *testing.T) {
		c, err := p.Acquire(ctx, "alice-id", acct)
		if err != nil {
			t.Fatal(err)
		}
		done, cancelNow := context.WithCancel(ctx)
		cancelNow()
		if _, err := FetchThread(done, c.Client(), "INBOX", 1, ThreadOptions{}); !errors.Is(err, context.Canceled) {
			t.Errorf("canceled: %v", err)
		}
		c.Discard()
	})
}

func TestMemIMAPThreadClientSide(t *testing.T) {
	srv, accts := memAccounts(t, 1)
	for _, raw := range chainMessages() {
		srv.Deliver(t, "u0", raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, accts[0], DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Caps().Has(imap.Cap("THREAD=REFERENCES")) {
		t.Fatal("the in-memory server unexpectedly supports THREAD")
	}
	for _, uid := range []imap.UID{1, 3, 4} {
		th, err := FetchThread(ctx, c, "INBOX", uid, ThreadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkChainThread(t, th, ThreadClient)
		// Asking for the server method without the extension falls back.
		th, err = FetchThread(ctx, c, "INBOX", uid, ThreadOptions{Method: ThreadReferences})
		if err != nil {
			t.Fatal(err)
		}
		checkChainThread(t, th, ThreadClient)
	}
	th, err := FetchThread(ctx, c, "INBOX", 4, ThreadOptions{MaxMessages: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !th.Truncated || len(th.Messages) != 2 || th.Messages[0].UID != 3 {
		t.Errorf("MaxMessages 2: truncated %v, %d messages", th.Truncated, len(th.Messages))
	}
	assertNoneSeen(t, c)

	f, err := ResolveFolders(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if name, err := f.Name(RoleInbox); name != "INBOX" || err != nil {
		t.Errorf("inbox %q %v", name, err)
	}
	if _, err := f.Name(RoleDrafts); err == nil || !strings.Contains(err.Error(), "no Drafts folder found") {
		t.Errorf("drafts: %v", err)
	}
}
