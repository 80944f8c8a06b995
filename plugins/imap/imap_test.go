package imap

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	gomail "github.com/emersion/go-message/mail"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/internal/testsvc"
	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/sdktest"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// env is one Dovecot shared by the subtests of TestDovecot; every subtest
// has users of its own.
type env struct {
	dv     *testsvc.DovecotServer
	plugin sdk.Plugin
	users  int
}

// testUsers is how many users the test server has.
const testUsers = 20

func testUserName(n int) string { return fmt.Sprintf("u%d@example.com", n) }

// user returns a Dovecot user no other subtest has used; its name is also
// its mail address (as with most providers). The users exist from the
// start: adding one to a running Dovecot takes a second.
func (e *env) user(t *testing.T) string {
	t.Helper()
	if e.users == testUsers {
		t.Fatal("out of test users: raise testUsers")
	}
	e.users++
	return testUserName(e.users)
}

func (e *env) settings(t *testing.T, name string) sdk.Settings {
	return sdk.Settings{
		IMAPServer: e.dv.Host, IMAPPort: e.dv.Port, IMAPSecurity: "none",
		IMAPUsername: name, IMAPPassword: e.dv.Password(t, name), DraftCreationEnabled: true,
	}
}

// userID is the (made-up) inboxd user id of a Dovecot user.
func userID(name string) string {
	var n int
	fmt.Sscanf(name, "u%d@", &n)
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", n)
}

// harness calls the plugin as name, with settings pointing at Dovecot.
func (e *env) harness(t *testing.T, name string) *sdktest.Harness {
	return sdktest.New(e.plugin, sdk.User{UserID: userID(name)}, &sdktest.FakeHost{Settings: e.settings(t, name)})
}

// dial logs in as name directly, to check what the tools did.
func (e *env) dial(t *testing.T, name string) *imapclient.Client {
	t.Helper()
	c, err := mail.Dial(context.Background(), mail.Account{Server: e.dv.Host, Port: e.dv.Port, Security: mail.SecurityNone,
		Username: name, Password: e.dv.Password(t, name)}, mail.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ok(t *testing.T, h *sdktest.Harness, tool string, args any, out any) {
	t.Helper()
	res, err := h.Call(context.Background(), tool, args)
	if err != nil {
		t.Fatalf("%s(%v): %v", tool, args, err)
	}
	if res.IsError {
		t.Fatalf("%s(%v): error result %s", tool, args, res.Content)
	}
	if err := json.Unmarshal(res.Content, out); err != nil {
		t.Fatalf("%s: decode %s: %v", tool, res.Content, err)
	}
}

// toolErr calls a tool that must answer an error result containing want.
func toolErr(t *testing.T, h *sdktest.Harness, tool string, args any, want string) {
	t.Helper()
	res, err := h.Call(context.Background(), tool, args)
	if err != nil {
		t.Fatalf("%s(%v): %v, want an error result", tool, args, err)
	}
	var msg string
	_ = json.Unmarshal(res.Content, &msg)
	if !res.IsError || !strings.Contains(msg, want) {
		t.Fatalf("%s(%v) = %s (is_error %v), want an error result containing %q", tool, args, res.Content, res.IsError, want)
	}
}

// message builds a raw message with CRLF line ends.
func message(headers, body string) []byte {
	s := strings.TrimLeft(headers, "\n") + "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n" + body
	return []byte(strings.ReplaceAll(s, "\n", "\r\n"))
}

// chain delivers a three-message conversation and an unrelated message to
// name's INBOX, and returns the UIDs: root, unrelated, reply 1, reply 2.
// "Me <me@example.com>" in them is the user.
func (e *env) chain(t *testing.T, name string) []uint32 {
	var uids []uint32
	for _, raw := range [][]byte{
		message(`
From: Bob <bob@example.org>
To: Me <me@example.com>
Subject: Project kickoff
Date: Mon, 01 Jan 2024 09:00:00 +0000
Message-ID: <root-1@example.org>
`, "Shall we start the project on Monday?\n\nBob\n"),
		message(`
From: Shop <news@shop.example>
To: Me <me@example.com>
Subject: Weekly offers
Date: Tue, 02 Jan 2024 09:30:00 +0000
Message-ID: <offers-7@shop.example>
`, "Buy things, cheap invoices.\n"),
		message(`
From: Me <me@example.com>
To: Bob <bob@example.org>
Subject: Re: Project kickoff
Date: Wed, 03 Jan 2024 10:00:00 +0000
Message-ID: <reply-1@example.com>
In-Reply-To: <root-1@example.org>
References: <root-1@example.org>
`, "Monday works.\n\nOn Mon, Jan 1, 2024 at 9:00 AM Bob <bob@example.org> wrote:\n> Shall we start the project on Monday?\n"),
		message(`
From: Bob <bob@example.org>
To: Me <me@example.com>
Cc: Carol <carol@example.net>, Me <me@example.com>
Reply-To: Bob Work <bob@work.example>
Subject: Re: Project kickoff
Date: Thu, 04 Jan 2024 11:00:00 +0000
Message-ID: <reply-2@example.org>
In-Reply-To: <reply-1@example.com>
References: <root-1@example.org> <reply-1@example.com>
`, "Great, adding Carol.\n\n> Monday works.\n"),
	} {
		raw = []byte(strings.ReplaceAll(string(raw), "me@example.com", name))
		uids = append(uids, e.dv.Deliver(t, name, raw))
	}
	return uids
}

func inboxID(uid uint32) string { return mail.EncodeMessageID("INBOX", imap.UID(uid)) }

// search finds messages of a folder by a header, as name.
func (e *env) search(t *testing.T, c *imapclient.Client, folder string, crit *imap.SearchCriteria) []imap.UID {
	t.Helper()
	if _, err := c.Select(folder, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatalf("select %s: %v", folder, err)
	}
	data, err := c.UIDSearch(crit, nil).Wait()
	if err != nil {
		t.Fatalf("search %s: %v", folder, err)
	}
	return data.AllUIDs()
}

func byMessageID(id string) *imap.SearchCriteria {
	return &imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: id}}}
}

func TestDovecot(t *testing.T) {
	users := map[string]string{}
	for n := 1; n <= testUsers; n++ {
		users[testUserName(n)] = "pw-" + testUserName(n)
	}
	dv := testsvc.Dovecot(t, users)
	p, s := newPlugin(options{})
	t.Cleanup(func() { s.close() })
	e := &env{dv: dv, plugin: p}

	t.Run("list_most_recent_inbox_emails", func(t *testing.T) {
		u := e.user(t)
		h := e.harness(t, u)
		var got []emailSummary
		ok(t, h, "list_most_recent_inbox_emails", nil, &got)
		if len(got) != 0 {
			t.Fatalf("empty INBOX listed %v", got)
		}
		uids := e.chain(t, u)
		ok(t, h, "list_most_recent_inbox_emails", map[string]any{"count": 2}, &got)
		if len(got) != 2 || got[0].MessageID != inboxID(uids[3]) || got[1].MessageID != inboxID(uids[2]) {
			t.Fatalf("count 2 listed %+v", got)
		}
		want := emailSummary{MessageID: inboxID(uids[3]), From: "Bob <bob@example.org>", To: "Me <" + u + ">",
			Subject: "Re: Project kickoff", Date: "2024-01-04T11:00:00Z", Snippet: "Great, adding Carol."}
		if got[0] != want {
			t.Errorf("newest = %+v\nwant %+v", got[0], want)
		}
		ok(t, h, "list_most_recent_inbox_emails", map[string]any{"count": "100"}, &got)
		if len(got) != 4 {
			t.Errorf("count 100 (capped to 50) listed %d of 4", len(got))
		}
		toolErr(t, h, "list_most_recent_inbox_emails", map[string]any{"count": 0}, "count must be at least 1")
		toolErr(t, h, "list_most_recent_inbox_emails", map[string]any{"count": "ten"}, `"count"`)
		toolErr(t, h, "list_most_recent_inbox_emails", map[string]any{"folder": "x"}, "unknown field")
		// Listing does not mark mail as seen.
		c := e.dial(t, u)
		if seen := e.search(t, c, "INBOX", &imap.SearchCriteria{Flag: []imap.Flag{imap.FlagSeen}}); len(seen) != 0 {
			t.Errorf("listing set \\Seen on %v", seen)
		}
	})

	t.Run("get_thread_for_message_id", func(t *testing.T) {
		u := e.user(t)
		h := e.harness(t, u)
		uids := e.chain(t, u)
		var md string
		ok(t, h, "get_thread_for_message_id", map[string]any{"messageId": inboxID(uids[2])}, &md)
		for _, want := range []string{"# Email Thread", "**Messages:** 3", "Shall we start the project on Monday?", "Monday works.",
			"Great, adding Carol.", "- **Tool message ID:** " + inboxID(uids[0])} {
			if !strings.Contains(md, want) {
				t.Errorf("thread markdown lacks %q:\n%s", want, md)
			}
		}
		if strings.Contains(md, "Weekly offers") {
			t.Errorf("thread holds the unrelated message:\n%s", md)
		}
		toolErr(t, h, "get_thread_for_message_id", map[string]any{"messageId": "nope"}, "unknown message id")
		toolErr(t, h, "get_thread_for_message_id", map[string]any{"messageId": inboxID(999)}, "no message with UID 999")
		toolErr(t, h, "get_thread_for_message_id", map[string]any{"messageId": mail.EncodeMessageID("Gone", 1)}, `folder "Gone" not found`)
		toolErr(t, h, "get_thread_for_message_id", map[string]any{}, "messageId is required")
	})

	t.Run("search_emails", func(t *testing.T) {
		u := e.user(t)
		h := e.harness(t, u)
		uids := e.chain(t, u)
		for _, tc := range []struct {
			query string
			want  []uint32
		}{
			{"from:bob", []uint32{uids[3], uids[0]}},
			{`subject:"project kickoff" from:` + u, []uint32{uids[2]}},
			{"since:2024-01-02 before:2024-01-04", []uint32{uids[2], uids[1]}},
			{"invoices", []uint32{uids[1]}},
			{`"adding carol"`, []uint32{uids[3]}},
			{"body:monday to:bob", []uint32{uids[2]}},
			{"cc:carol", []uint32{uids[3]}},
			{"nothing-matches-this", nil},
		} {
			var got []emailSummary
			ok(t, h, "search_emails", map[string]any{"query": tc.query}, &got)
			var ids []string
			for _, g := range got {
				ids = append(ids, g.MessageID)
			}
			var want []string
			for _, u := range tc.want {
				want = append(want, inboxID(u))
			}
			if !slices.Equal(ids, want) {
				t.Errorf("search %q = %v, want %v", tc.query, ids, want)
			}
		}
		var got []emailSummary
		ok(t, h, "search_emails", map[string]any{"query": "kickoff", "limit": 1}, &got)
		if len(got) != 1 || got[0].MessageID != inboxID(uids[3]) {
			t.Errorf("limit 1 = %+v, want the newest match", got)
		}
		ok(t, h, "search_emails", map[string]any{"query": "kickoff", "folder": "Sent"}, &got)
		if len(got) != 0 {
			t.Errorf("search of the empty Sent folder = %+v", got)
		}
		toolErr(t, h, "search_emails", map[string]any{"query": "since:tomorrow"}, "bad query")
		toolErr(t, h, "search_emails", map[string]any{"query": "x", "folder": "Nope"}, `folder "Nope" not found`)
	})

	t.Run("labels_and_folders", func(t *testing.T) {
		u := e.user(t)
		h := e.harness(t, u)
		uids := e.chain(t, u)
		var labels []string
		ok(t, h, "get_all_labels", nil, &labels)
		if len(labels) != 0 {
			t.Fatalf("fresh account has labels %v", labels)
		}
		var lr labelResult
		ok(t, h, "set_label", map[string]any{"messageId": inboxID(uids[0]), "label": "Clients/Acme"}, &lr)
		if !lr.Created || lr.Folder != "Clients/Acme" || lr.AlreadyLabeled || lr.LabeledMessageID == "" {
			t.Fatalf("set_label = %+v", lr)
		}
		c := e.dial(t, u)
		if got := e.search(t, c, "Clients/Acme", byMessageID("<root-1@example.org>")); len(got) != 1 {
			t.Fatalf("label folder holds %v", got)
		}
		if got := e.search(t, c, "INBOX", byMessageID("<root-1@example.org>")); len(got) != 1 {
			t.Fatalf("labelled message left INBOX: %v", got)
		}
		lr = labelResult{}
		ok(t, h, "set_label", map[string]any{"messageId": inboxID(uids[0]), "label": "clients/acme"}, &lr)
		if lr.Created || !lr.AlreadyLabeled || lr.Folder != "Clients/Acme" {
			t.Fatalf("second set_label = %+v", lr)
		}
		if got := e.search(t, c, "Clients/Acme", &imap.SearchCriteria{}); len(got) != 1 {
			t.Fatalf("labelling twice copied twice: %v", got)
		}
		lr = labelResult{}
		ok(t, h, "set_label", map[string]any{"messageId": inboxID(uids[1]), "label": "Clients/Acme"}, &lr)
		if lr.Created || lr.AlreadyLabeled {
			t.Fatalf("label into an existing folder = %+v", lr)
		}

		ok(t, h, "get_all_labels", nil, &labels)
		if want := []string{"Clients/Acme"}; !slices.Equal(labels, want) {
			t.Errorf("labels %v, want %v (no INBOX, Drafts, Sent, Trash, Archive)", labels, want)
		}

		var msgs []emailSummary
		ok(t, h, "get_messages_from_folder", map[string]any{"folder": "Clients/Acme", "count": 10}, &msgs)
		if len(msgs) != 2 || msgs[0].Subject != "Weekly offers" || !strings.HasPrefix(msgs[0].MessageID, mail.EncodeMessageID("Clients/Acme", 1)[:16]) {
			t.Errorf("folder messages %+v", msgs)
		}
		// The ids of a folder listing work with the other tools.
		var md string
		ok(t, h, "get_thread_for_message_id", map[string]any{"messageId": msgs[1].MessageID}, &md)
		if !strings.Contains(md, "Project kickoff") {
			t.Errorf("thread of a labelled copy:\n%s", md)
		}
		toolErr(t, h, "get_messages_from_folder", map[string]any{"folder": "Nope"}, `folder "Nope" not found`)
		toolErr(t, h, "get_messages_from_folder", map[string]any{"folder": " "}, "folder is required")
		toolErr(t, h, "set_label", map[string]any{"messageId": inboxID(uids[0]), "label": ""}, "label is required")
		toolErr(t, h, "set_label", map[string]any{"messageId": inboxID(999), "label": "X"}, "no message with UID 999")
	})

	t.Run("remove_from_inbox", func(t *testing.T) {
		u := e.user(t)
		h := e.harness(t, u)
		uids := e.chain(t, u)
		var ar archiveResult
		ok(t, h, "remove_from_inbox", map[string]any{"messageId": inboxID(uids[1])}, &ar)
		if ar.ArchivedTo != "Archive" || !ar.Moved || ar.ArchivedMessageID == "" {
			t.Fatalf("remove_from_inbox = %+v", ar)
		}
		c := e.dial(t, u)
		if got := e.search(t, c, "INBOX", byMessageID("<offers-7@shop.example>")); len(got) != 0 {
			t.Errorf("INBOX still holds the message: %v", got)
		}
		if got := e.search(t, c, "Archive", byMessageID("<offers-7@shop.example>")); len(got) != 1 {
			t.Errorf("Archive holds %v", got)
		}
		if got := e.search(t, c, "INBOX", &imap.SearchCriteria{}); len(got) != 3 {
			t.Errorf("INBOX has %d messages, want the other 3", len(got))
		}
		toolErr(t, h, "remove_from_inbox", map[string]any{"messageId": inboxID(uids[1])}, "no message with UID")
		toolErr(t, h, "remove_from_inbox", map[string]any{"messageId": ar.ArchivedMessageID}, "not in the inbox")
	})

	t.Run("draft_reply_two_users_at_once", func(t *testing.T) {
		users := []string{e.user(t), e.user(t)}
		for i, u := range users {
			e.chain(t, u)
			if i == 0 {
				// The first user has a signature in recent sent mail.
				c := e.dial(t, u)
				for _, body := range []string{"Sure.\n\n-- \nFirst User\nACME Corp\n", "Older.\n"} {
					raw := message("From: First User <"+u+">\nTo: x@example.org\nSubject: s\n", body)
					cmd := c.Append("Sent", int64(len(raw)), nil)
					cmd.Write(raw)
					cmd.Close()
					if _, err := cmd.Wait(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		results := make([]draftResult, len(users))
		var wg sync.WaitGroup
		for i, u := range users {
			h := e.harness(t, u)
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := h.Call(context.Background(), "draft_reply", map[string]any{
					"messageId": inboxID(4),
					"body":      fmt.Sprintf("Hi Bob,\n\nthanks from **%s**. See [the plan](https://example.com/plan).\n\n- one\n- two", u),
				})
				if err != nil || res.IsError {
					t.Errorf("draft_reply as %s: %v %s", u, err, res.Content)
					return
				}
				if err := json.Unmarshal(res.Content, &results[i]); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for i, u := range users {
			r := results[i]
			if r.Folder != "Drafts" || r.Subject != "Re: Project kickoff" || r.To != "Bob Work <bob@work.example>" ||
				r.Cc != "Carol <carol@example.net>" || r.DraftMessageID == "" || r.SignatureAdded != (i == 0) {
				t.Errorf("%s: draft_reply = %+v", u, r)
			}
			c := e.dial(t, u)
			if _, err := c.Select("Drafts", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
				t.Fatal(err)
			}
			var all imap.SeqSet
			all.AddRange(1, 0)
			msgs, err := c.Fetch(all, &imap.FetchOptions{Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != 1 {
				t.Fatalf("%s: Drafts holds %d messages, want exactly its own draft", u, len(msgs))
			}
			if !slices.Contains(msgs[0].Flags, imap.FlagDraft) || !slices.Contains(msgs[0].Flags, imap.FlagSeen) {
				t.Errorf("%s: draft flags %v", u, msgs[0].Flags)
			}
			var raw []byte
			for _, b := range msgs[0].BodySection {
				raw = b.Bytes
			}
			checkDraft(t, u, raw, i == 0)
		}
	})

	t.Run("draft_reply_refusals", func(t *testing.T) {
		u := e.user(t)
		uids := e.chain(t, u)
		st := e.settings(t, u)
		st.DraftCreationEnabled = false
		h := sdktest.New(e.plugin, sdk.User{UserID: userID(u)}, &sdktest.FakeHost{Settings: st})
		toolErr(t, h, "draft_reply", map[string]any{"messageId": inboxID(uids[0]), "body": "x"}, "draft creation is disabled")
		h = e.harness(t, u)
		toolErr(t, h, "draft_reply", map[string]any{"messageId": inboxID(uids[0]), "body": "  "}, "body is required")
		toolErr(t, h, "draft_reply", map[string]any{"messageId": inboxID(999), "body": "x"}, "no message with UID 999")
	})

	t.Run("find_similar_threads", func(t *testing.T) {
		u := e.user(t)
		uids := e.chain(t, u)
		fake := &sdktest.FakeHost{Settings: e.settings(t, u), Hits: []sdk.VectorHit{
			{ThreadID: "root-1@example.org", Score: 0.99, Payload: map[string]any{"subject": "Project kickoff"}},
			{ThreadID: "t-a", Score: 0.9, Payload: map[string]any{"subject": "Budget", "thread_markdown": "# Email Thread\n\nbudget"}},
			{ThreadID: "t-b", Score: 0.8, Payload: map[string]any{"subject": "Plan"}},
			{ThreadID: "t-c", Score: 0.7, Payload: map[string]any{"subject": "Other"}},
		}}
		rec := &recordingHost{Host: fake.Host(e.plugin.Needs...)}
		res := callWith(t, e.plugin, "find_similar_threads", userID(u), rec, map[string]any{"messageId": inboxID(uids[3]), "top_k": 2})
		var got []similarThread
		if err := json.Unmarshal(res.Content, &got); err != nil || res.IsError {
			t.Fatalf("find_similar_threads = %s, %v", res.Content, err)
		}
		want := []similarThread{
			{ThreadID: "t-a", Score: 0.9, Subject: "Budget", Markdown: "# Email Thread\n\nbudget"},
			{ThreadID: "t-b", Score: 0.8, Subject: "Plan"},
		}
		if !slices.Equal(got, want) {
			t.Errorf("find_similar_threads = %+v\nwant %+v", got, want)
		}
		if len(rec.searches) != 1 {
			t.Fatalf("%d vector searches", len(rec.searches))
		}
		sr := rec.searches[0]
		if sr.limit != 10 {
			t.Errorf("limit %d, want max(3*2, 10) = 10", sr.limit)
		}
		if want := []string{"root-1@example.org", "reply-1@example.com", "reply-2@example.org"}; !slices.Equal(sr.exclude, want) {
			t.Errorf("exclude %v, want %v", sr.exclude, want)
		}
		if !strings.Contains(sr.query, "Great, adding Carol.") || !strings.Contains(sr.query, "**Messages:** 3") {
			t.Errorf("query is not the thread markdown: %q", sr.query)
		}
		callWith(t, e.plugin, "find_similar_threads", userID(u), rec, map[string]any{"messageId": inboxID(uids[1]), "top_k": 7})
		if sr := rec.searches[1]; sr.limit != 21 || !slices.Equal(sr.exclude, []string{"offers-7@shop.example"}) {
			t.Errorf("top_k 7: limit %d exclude %v", sr.limit, sr.exclude)
		}
		var def []similarThread
		ok(t, sdktest.New(e.plugin, sdk.User{UserID: userID(u)}, fake), "find_similar_threads", map[string]any{"messageId": inboxID(uids[1])}, &def)
		if len(def) != 4 {
			t.Errorf("default top_k 5 over 4 hits (none excluded) = %d", len(def))
		}
	})

	t.Run("settings_errors", func(t *testing.T) {
		u := e.user(t)
		h := sdktest.New(e.plugin, sdk.User{UserID: userID(u)}, &sdktest.FakeHost{})
		toolErr(t, h, "list_most_recent_inbox_emails", nil, notConfigured)
		st := e.settings(t, u)
		st.IMAPPassword = "wrong"
		h = sdktest.New(e.plugin, sdk.User{UserID: userID(u)}, &sdktest.FakeHost{Settings: st})
		toolErr(t, h, "get_all_labels", nil, "check imap_username and imap_password")
		st = e.settings(t, u)
		st.IMAPPort = testsvc.FreePort(t)
		h = sdktest.New(e.plugin, sdk.User{UserID: userID(u)}, &sdktest.FakeHost{Settings: st})
		res, err := h.Call(context.Background(), "get_all_labels", nil)
		if err == nil {
			t.Errorf("unreachable server answered %s (is_error %v), want a call error", res.Content, res.IsError)
		}
		// Without the declared need the host withholds the password.
		bare := e.plugin
		bare.Needs = nil
		h = sdktest.New(bare, sdk.User{UserID: userID(u)}, &sdktest.FakeHost{Settings: e.settings(t, u)})
		toolErr(t, h, "get_all_labels", nil, notConfigured)
	})

	t.Run("canceled_call", func(t *testing.T) {
		u := e.user(t)
		h := e.harness(t, u)
		uids := e.chain(t, u)
		var md string
		ok(t, h, "get_thread_for_message_id", map[string]any{"messageId": inboxID(uids[0])}, &md) // a cached connection
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if res, err := h.Call(ctx, "get_thread_for_message_id", map[string]any{"messageId": inboxID(uids[0])}); err == nil {
			t.Fatalf("canceled call answered %s", res.Content)
		}
		ctx, cancel = context.WithTimeout(context.Background(), time.Nanosecond)
		defer cancel()
		<-ctx.Done()
		if _, err := h.Call(ctx, "list_most_recent_inbox_emails", nil); err == nil {
			t.Fatal("timed-out call succeeded")
		}
		ok(t, h, "get_thread_for_message_id", map[string]any{"messageId": inboxID(uids[0])}, &md)
		if !strings.Contains(md, "**Messages:** 3") {
			t.Errorf("after cancellations: %s", md)
		}
	})

	t.Run("users_are_isolated", func(t *testing.T) {
		// One plugin process serves both users: the connection cache is
		// keyed by user, so each sees only its own mailbox.
		a, b := e.user(t), e.user(t)
		e.dv.Deliver(t, a, message("From: x@example.org\nSubject: only for a\nMessage-ID: <a@x>\n", "a\n"))
		for range 2 {
			for _, u := range []string{a, b} {
				var got []emailSummary
				ok(t, e.harness(t, u), "list_most_recent_inbox_emails", nil, &got)
				if (u == a) != (len(got) == 1) {
					t.Fatalf("%s sees %+v", u, got)
				}
			}
		}
	})
}

// checkDraft checks a saved draft's headers and parts.
func checkDraft(t *testing.T, u string, raw []byte, signature bool) {
	t.Helper()
	r, err := gomail.CreateReader(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("%s: draft: %v", u, err)
	}
	h := r.Header
	if subj, _ := h.Subject(); subj != "Re: Project kickoff" {
		t.Errorf("%s: Subject %q", u, subj)
	}
	if irt, _ := h.MsgIDList("In-Reply-To"); !slices.Equal(irt, []string{"reply-2@example.org"}) {
		t.Errorf("%s: In-Reply-To %v", u, irt)
	}
	if refs, _ := h.MsgIDList("References"); !slices.Equal(refs, []string{"root-1@example.org", "reply-1@example.com", "reply-2@example.org"}) {
		t.Errorf("%s: References %v", u, refs)
	}
	if to, _ := h.AddressList("To"); len(to) != 1 || to[0].Address != "bob@work.example" {
		t.Errorf("%s: To %v", u, to)
	}
	if cc, _ := h.AddressList("Cc"); len(cc) != 1 || cc[0].Address != "carol@example.net" {
		t.Errorf("%s: Cc %v (want Carol, without the user)", u, cc)
	}
	if ct, _, _ := h.ContentType(); ct != "multipart/alternative" {
		t.Errorf("%s: Content-Type %q", u, ct)
	}
	parts := map[string]string{}
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := p.Header.(*gomail.InlineHeader).ContentType()
		b, _ := io.ReadAll(p.Body)
		parts[ct] = string(b)
	}
	text, html := parts["text/plain"], parts["text/html"]
	if !strings.Contains(text, "thanks from **"+u+"**") {
		t.Errorf("%s: text part %q", u, text)
	}
	for _, want := range []string{"<strong>" + u + "</strong>", `<a href="https://example.com/plan">the plan</a>`, "<li>one</li>"} {
		if !strings.Contains(html, want) {
			t.Errorf("%s: html part lacks %q:\n%s", u, want, html)
		}
	}
	if got := strings.Contains(text, "-- \r\nFirst User\r\nACME Corp") && strings.Contains(html, "First User<br>"); got != signature {
		t.Errorf("%s: signature in draft %v, want %v:\n%s", u, got, signature, text)
	}
	if signature {
		if from, _ := h.AddressList("From"); len(from) != 1 || from[0].Address != u || from[0].Name != "First User" {
			t.Errorf("%s: From %v, want the address of the user's sent mail", u, from)
		}
	}
}

// recordingHost records the vector searches a tool makes.
type recordingHost struct {
	sdk.Host
	mu       sync.Mutex
	searches []searchCall
}

type searchCall struct {
	query   string
	limit   int
	exclude []string
}

func (r *recordingHost) VectorSearch(ctx context.Context, query string, limit int, exclude []string) ([]sdk.VectorHit, error) {
	r.mu.Lock()
	r.searches = append(r.searches, searchCall{query, limit, slices.Clone(exclude)})
	r.mu.Unlock()
	return r.Host.VectorSearch(ctx, query, limit, exclude)
}

// callWith calls a tool's handler directly with host (the harness takes a
// FakeHost only, and this one records).
func callWith(t *testing.T, p sdk.Plugin, tool, user string, host sdk.Host, args any) sdk.Result {
	t.Helper()
	i := slices.IndexFunc(p.Tools, func(x sdk.Tool) bool { return x.Name == tool })
	b, _ := json.Marshal(args)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := p.Tools[i].Handler(sdk.WithCall(ctx, sdk.User{UserID: user}, host), sdk.Call{Arguments: b})
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	return res
}

// TestDovecotWithoutMove: on a server that does not advertise MOVE,
// remove_from_inbox archives with COPY, \Deleted and UID EXPUNGE, and
// leaves the INBOX's other messages (even ones marked \Deleted) alone.
func TestDovecotWithoutMove(t *testing.T) {
	const u = "nomove@example.com"
	dv := testsvc.Dovecot(t, map[string]string{u: "pw"})
	// Dovecot's default capabilities after login, less MOVE.
	f, err := os.OpenFile(dv.ConfigPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SPECIAL-USE LITERAL+ UIDPLUS CHILDREN NAMESPACE UNSELECT")
	f.Close()
	dv.Doveadm(t, "reload")

	p, s := newPlugin(options{})
	t.Cleanup(func() { s.close() })
	e := &env{dv: dv, plugin: p}
	var uids []uint32
	for i := range 3 {
		uids = append(uids, dv.Deliver(t, u, message(fmt.Sprintf("From: a@example.org\nSubject: m%d\nMessage-ID: <m%d@x>\n", i, i), "x\n")))
	}
	c := e.dial(t, u)
	deadline := time.Now().Add(10 * time.Second)
	for c.Caps().Has(imap.CapMove) {
		if time.Now().After(deadline) {
			t.Fatal("Dovecot still advertises MOVE after the reload")
		}
		c.Close()
		time.Sleep(100 * time.Millisecond)
		c = e.dial(t, u)
	}
	// Another client marked m2 \Deleted without expunging it.
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.UIDSetNum(imap.UID(uids[2])), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}

	var ar archiveResult
	ok(t, sdktest.New(p, sdk.User{UserID: "00000000-0000-4000-8000-0000000000ff"}, &sdktest.FakeHost{Settings: sdk.Settings{
		IMAPServer: dv.Host, IMAPPort: dv.Port, IMAPSecurity: "none", IMAPUsername: u, IMAPPassword: "pw",
	}}), "remove_from_inbox", map[string]any{"messageId": inboxID(uids[0])}, &ar)
	if ar.Moved || ar.ArchivedTo != "Archive" {
		t.Errorf("remove_from_inbox = %+v, want the COPY fallback into Archive", ar)
	}
	if got := e.search(t, c, "INBOX", &imap.SearchCriteria{}); !slices.Equal(got, []imap.UID{imap.UID(uids[1]), imap.UID(uids[2])}) {
		t.Errorf("INBOX holds %v, want %v (UID EXPUNGE of the archived message only)", got, uids[1:])
	}
	if got := e.search(t, c, "Archive", byMessageID("<m0@x>")); len(got) != 1 {
		t.Errorf("Archive holds %v", got)
	}
}
