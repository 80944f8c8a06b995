package imap

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/sdk"
	"github.com/inboxd/inboxd/sdk/sdktest"
)

func TestPluginDefinition(t *testing.T) {
	p, s := newPlugin(options{})
	t.Cleanup(func() { s.close() })
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.Name != "imap" || p.Version != "1.0.0" || !slices.Equal(p.Needs, []sdk.Need{sdk.NeedIMAPCredentials}) {
		t.Errorf("plugin %s %s needs %v", p.Name, p.Version, p.Needs)
	}
	var names []string
	for _, tool := range p.Tools {
		names = append(names, tool.Name)
		var schema struct {
			Type       string                     `json:"type"`
			Properties map[string]json.RawMessage `json:"properties"`
			Required   []string                   `json:"required"`
		}
		if err := json.Unmarshal(tool.InputSchema, &schema); err != nil || schema.Type != "object" {
			t.Errorf("%s: schema %s: %v", tool.Name, tool.InputSchema, err)
		}
		for _, r := range schema.Required {
			if _, ok := schema.Properties[r]; !ok {
				t.Errorf("%s: required %q is not a property", tool.Name, r)
			}
		}
		if len(tool.Description) < 40 {
			t.Errorf("%s: description too short", tool.Name)
		}
	}
	want := []string{"list_most_recent_inbox_emails", "get_thread_for_message_id", "search_emails", "get_messages_from_folder",
		"get_all_labels", "draft_reply", "set_label", "remove_from_inbox", "find_similar_threads"}
	if !slices.Equal(names, want) {
		t.Errorf("tools %v, want %v", names, want)
	}
	if d := p.Tools[slices.Index(names, "draft_reply")].Description; !strings.Contains(d, "draft_creation_enabled") || !strings.Contains(d, "NOT sent") {
		t.Errorf("draft_reply description does not say it is refused when drafts are off, or that it does not send: %q", d)
	}
	if err := Plugin().Validate(); err != nil {
		t.Error(err)
	}
}

// TestToolErrorsBeforeIMAP: argument problems are answered before any
// connection is made (here there is no server at all).
func TestToolErrorsBeforeIMAP(t *testing.T) {
	p, s := newPlugin(options{})
	t.Cleanup(func() { s.close() })
	h := sdktest.New(p, sdk.User{UserID: "00000000-0000-4000-8000-000000000001"}, &sdktest.FakeHost{Settings: sdk.Settings{
		IMAPServer: "127.0.0.1", IMAPPort: 1, IMAPSecurity: "none", IMAPUsername: "u", IMAPPassword: "p", DraftCreationEnabled: true,
	}})
	for _, tc := range []struct {
		tool string
		args any
		want string
	}{
		{"get_thread_for_message_id", map[string]any{"messageId": "SU5CT1g:0"}, "unknown message id"},
		{"get_thread_for_message_id", map[string]any{"messageId": "SU5CT1g=:1"}, "unknown message id"},
		{"get_thread_for_message_id", map[string]any{"messageId": 12}, `"messageId"`},
		{"search_emails", map[string]any{"query": ""}, "query is empty"},
		{"search_emails", map[string]any{"query": "x", "limit": -1}, "limit must be at least 1"},
		{"draft_reply", map[string]any{"messageId": "SU5CT1g:1", "body": strings.Repeat("x", maxDraftBody+1)}, "body is too long"},
		{"set_label", map[string]any{"messageId": "SU5CT1g:1", "label": "a*"}, "wildcard"},
		{"set_label", map[string]any{"messageId": "SU5CT1g:1", "label": "a\nb"}, "control characters"},
		{"find_similar_threads", map[string]any{"messageId": "SU5CT1g:1", "top_k": 0}, "top_k must be at least 1"},
		{"get_all_labels", map[string]any{"x": 1}, "unknown field"},
	} {
		res, err := h.Call(context.Background(), tc.tool, tc.args)
		var msg string
		_ = json.Unmarshal(res.Content, &msg)
		if err != nil || !res.IsError || !strings.Contains(msg, tc.want) {
			t.Errorf("%s(%v) = %q (is_error %v), %v; want an error result containing %q", tc.tool, tc.args, msg, res.IsError, err, tc.want)
		}
	}
}

func TestNoUser(t *testing.T) {
	p, s := newPlugin(options{})
	t.Cleanup(func() { s.close() })
	_, err := p.Tools[0].Handler(context.Background(), sdk.Call{})
	if err == nil || !strings.Contains(err.Error(), "no user") {
		t.Fatalf("call without a user: %v", err)
	}
}

func TestFlexInt(t *testing.T) {
	for in, want := range map[string]flexInt{
		`7`: {true, 7}, `"7"`: {true, 7}, `" 12 "`: {true, 12}, `7.0`: {true, 7}, `null`: {}, `-3`: {true, -3},
	} {
		var f flexInt
		if err := json.Unmarshal([]byte(in), &f); err != nil || f != want {
			t.Errorf("%s: %+v, %v; want %+v", in, f, err, want)
		}
	}
	for _, in := range []string{`"ten"`, `7.5`, `true`, `1e12`, `[]`} {
		var v struct {
			N flexInt `json:"n"`
		}
		err := json.Unmarshal([]byte(`{"n":`+in+`}`), &v)
		if err == nil || !strings.Contains(err.Error(), "field .n") {
			t.Errorf("%s: %v, want an error naming the field", in, err)
		}
	}
}

func TestUserLabels(t *testing.T) {
	// Exercised against Dovecot in TestDovecot; here Gmail's list, and a
	// server without SPECIAL-USE whose special folders are known by name.
	if got, want := userLabels(gmailList()), []string{"Clients", "Clients/Acme", "Receipts"}; !slices.Equal(got, want) {
		t.Errorf("Gmail labels %v, want %v", got, want)
	}
	l := func(name string) *imap.ListData { return &imap.ListData{Mailbox: name, Delim: '.'} }
	plain := []*imap.ListData{l("INBOX"), l("INBOX.Sent Items"), l("INBOX.Drafts"), l("INBOX.Deleted Items"), l("INBOX.Junk"),
		l("INBOX.Archive"), l("INBOX.Projects"), l("Receipts")}
	if got, want := userLabels(plain), []string{"INBOX.Projects", "Receipts"}; !slices.Equal(got, want) {
		t.Errorf("plain labels %v, want %v", got, want)
	}
}

func gmailList() []*imap.ListData {
	l := func(name string, attrs ...imap.MailboxAttr) *imap.ListData {
		return &imap.ListData{Mailbox: name, Delim: '/', Attrs: attrs}
	}
	return []*imap.ListData{
		l("INBOX"), l("Clients"), l("Clients/Acme"), l("Receipts"),
		l("[Gmail]", imap.MailboxAttrNoSelect),
		l("[Gmail]/All Mail", imap.MailboxAttrAll), l("[Gmail]/Drafts", imap.MailboxAttrDrafts),
		l("[Gmail]/Important", imap.MailboxAttrImportant), l("[Gmail]/Sent Mail", imap.MailboxAttrSent),
		l("[Gmail]/Spam", imap.MailboxAttrJunk), l("[Gmail]/Starred", imap.MailboxAttrFlagged),
		l("[Gmail]/Trash", imap.MailboxAttrTrash),
	}
}

func TestThreadIDs(t *testing.T) {
	msg := func(id string, inReplyTo []string, refs ...string) *mail.ThreadMessage {
		return &mail.ThreadMessage{Message: &mail.Message{MessageID: id, InReplyTo: inReplyTo, References: refs}}
	}
	tests := []struct {
		name string
		msgs []*mail.ThreadMessage
		want []string
	}{
		{"root here", []*mail.ThreadMessage{msg("a", nil), msg("b", []string{"a"}, "a")}, []string{"a", "b"}},
		{"root elsewhere", []*mail.ThreadMessage{msg("c", []string{"b"}, "a", "b"), msg("d", []string{"c"}, "a", "b", "c")},
			[]string{"a", "c", "d", "b"}},
		{"in-reply-to only", []*mail.ThreadMessage{msg("b", []string{"a"})}, []string{"a", "b"}},
		{"no ids", []*mail.ThreadMessage{msg("", nil)}, nil},
	}
	for _, tt := range tests {
		if got := threadIDs(&mail.Thread{Messages: tt.msgs}); !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
