package imap

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"github.com/inboxd/inboxd/daemon/mail"
)

func TestReplySubject(t *testing.T) {
	for in, want := range map[string]string{
		"Project kickoff":      "Re: Project kickoff",
		"Re: Project kickoff":  "Re: Project kickoff",
		"RE: shouting":         "RE: shouting",
		"re:lower":             "re:lower",
		"AW: Angebot":          "AW: Angebot",
		"Sv: Möte":             "Sv: Möte",
		"Antw: Vraag":          "Antw: Vraag",
		"Re[2]: counted":       "Re[2]: counted",
		"Re (3): counted":      "Re (3): counted",
		"ΑΠ: θέμα":             "ΑΠ: θέμα",
		"回复：你好":                "回复：你好",
		"Fwd: forwarded":       "Re: Fwd: forwarded",
		"Meeting: 10am":        "Re: Meeting: 10am",
		"Regarding: the offer": "Re: Regarding: the offer",
		"Re[x]: odd":           "Re: Re[x]: odd",
		"  spaced  ":           "Re: spaced",
		"":                     "Re:",
	} {
		if got := replySubject(in); got != want {
			t.Errorf("replySubject(%q) = %q, want %q", in, got, want)
		}
	}
}

func addrs(l ...string) []mail.Address {
	var out []mail.Address
	for _, s := range l {
		name, email, ok := strings.Cut(s, "|")
		if !ok {
			name, email = "", s
		}
		out = append(out, mail.Address{Name: name, Email: email})
	}
	return out
}

func TestReplyRecipients(t *testing.T) {
	self := addressSet{}
	self.add("Me@Example.com")
	tests := []struct {
		name       string
		orig       mail.Message
		wantTo     []mail.Address
		wantCc     []mail.Address
		wantNoSelf bool
	}{
		{name: "sender", orig: mail.Message{From: addrs("Bob|bob@example.org"), To: addrs("me@example.com")},
			wantTo: addrs("Bob|bob@example.org")},
		{name: "reply-to wins", orig: mail.Message{From: addrs("bob@example.org"), ReplyTo: addrs("list@example.org"), To: addrs("me@example.com")},
			wantTo: addrs("list@example.org")},
		{name: "cc kept without self and To", orig: mail.Message{From: addrs("bob@example.org"), To: addrs("me@example.com"),
			Cc: addrs("carol@example.net", "ME@example.com", "BOB@example.org", "dave@example.net", "carol@example.net")},
			wantTo: addrs("bob@example.org"), wantCc: addrs("carol@example.net", "dave@example.net")},
		{name: "own message goes to its recipients", orig: mail.Message{From: addrs("me@example.com"), To: addrs("bob@example.org", "me@example.com")},
			wantTo: addrs("bob@example.org")},
		{name: "note to self", orig: mail.Message{From: addrs("me@example.com"), To: addrs("me@example.com")},
			wantTo: addrs("me@example.com")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			to, cc := replyRecipients(&tt.orig, self)
			if !reflect.DeepEqual(to, tt.wantTo) || !reflect.DeepEqual(cc, tt.wantCc) {
				t.Fatalf("to %v cc %v, want to %v cc %v", to, cc, tt.wantTo, tt.wantCc)
			}
		})
	}
}

func TestReplyReferences(t *testing.T) {
	tests := []struct {
		name string
		orig mail.Message
		want []string
	}{
		{"first reply", mail.Message{MessageID: "a@x"}, []string{"a@x"}},
		{"chain", mail.Message{MessageID: "c@x", References: []string{"a@x", "b@x"}, InReplyTo: []string{"b@x"}}, []string{"a@x", "b@x", "c@x"}},
		{"in-reply-to only", mail.Message{MessageID: "b@x", InReplyTo: []string{"a@x"}}, []string{"a@x", "b@x"}},
		{"bad ids dropped", mail.Message{MessageID: "c@x", References: []string{"a b", "<x>", "b@x"}}, []string{"b@x", "c@x"}},
		{"no id", mail.Message{}, nil},
	}
	for _, tt := range tests {
		if got := replyReferences(&tt.orig); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	var long []string
	for i := range 50 {
		long = append(long, strings.Repeat("x", i+1)+"@x")
	}
	got := replyReferences(&mail.Message{MessageID: "last@x", References: long})
	if len(got) != maxReferences || got[0] != long[0] || got[len(got)-1] != "last@x" || got[len(got)-2] != long[49] {
		t.Errorf("long chain kept %d ids: first %q, last %q", len(got), got[0], got[len(got)-1])
	}
}

func TestFindSignature(t *testing.T) {
	tests := []struct {
		name   string
		bodies []string
		want   string
	}{
		{"none", nil, ""},
		{"delimiter", []string{"Hi Bob,\n\nsure.\n\n-- \nAlice Example\nACME Corp\n"}, "Alice Example\nACME Corp"},
		{"delimiter without space", []string{"Hi\n--\nAlice"}, "Alice"},
		{"newest with a delimiter wins", []string{"no sig here", "Old\n-- \nOld Sig", "Older\n-- \nOlder Sig"}, "Old Sig"},
		{"last delimiter", []string{"a\n-- \nnot this\n-- \nThis"}, "This"},
		{"too long after delimiter", []string{"a\n-- \n" + strings.Repeat("line\n", maxSigLines+1)}, ""},
		{"common tail", []string{
			"Hi Bob,\nsure thing.\n\nBest regards\nAlice Example\nACME Corp",
			"Dear Carol,\nno.\n\nBest regards\nAlice Example\nACME Corp\n\n",
			"unrelated",
		}, "Best regards\nAlice Example\nACME Corp"},
		{"identical messages are no signature", []string{"Same text\nAlice", "Same text\nAlice"}, ""},
		{"no common tail", []string{"Hi\nA", "Hello\nB"}, ""},
		{"one message without delimiter", []string{"Hi\nAlice"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := findSignature(tt.bodies); got != tt.want {
				t.Fatalf("findSignature = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBodyHasSignature(t *testing.T) {
	sig := "Alice Example\nACME Corp"
	for body, want := range map[string]bool{
		"Hi,\nsure.": false,
		"Hi,\nsure.\n\nAlice Example\nACME Corp\n": true,
		"Hi,\nsure.\n\nBest,\nACME Corp":           true,
		"Hi,\nsure.\n\nBest,\nAlice":               false,
	} {
		if got := bodyHasSignature(body, sig); got != want {
			t.Errorf("bodyHasSignature(%q) = %v, want %v", body, got, want)
		}
	}
}

func TestComposeDraft(t *testing.T) {
	date := time.Date(2024, 3, 4, 10, 0, 0, 0, time.UTC)
	raw, err := composeDraft(draftSpec{
		From:       &mail.Address{Name: "Alice Ä", Email: "alice@example.com"},
		To:         addrs("Bob|bob@example.org"),
		Cc:         addrs("carol@example.net"),
		Subject:    "Re: Grüße",
		InReplyTo:  "b@x",
		References: []string{"a@x", "b@x"},
		MessageID:  "new@example.com",
		Date:       date,
		Text:       "Hallo **Bob**, " + strings.Repeat("long line ", 20) + "\n\n-- \nAlice\n",
		HTML:       htmlDocument(renderMarkdown("Hallo **Bob**"), "Alice"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Error("draft has bare LF line ends")
	}
	r, err := gomail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	h := r.Header
	if ct, _, _ := h.ContentType(); ct != "multipart/alternative" {
		t.Errorf("content type %q", ct)
	}
	if subj, _ := h.Subject(); subj != "Re: Grüße" {
		t.Errorf("subject %q", subj)
	}
	if irt, _ := h.MsgIDList("In-Reply-To"); !reflect.DeepEqual(irt, []string{"b@x"}) {
		t.Errorf("In-Reply-To %v", irt)
	}
	if refs, _ := h.MsgIDList("References"); !reflect.DeepEqual(refs, []string{"a@x", "b@x"}) {
		t.Errorf("References %v", refs)
	}
	if to, _ := h.AddressList("To"); len(to) != 1 || to[0].Address != "bob@example.org" || to[0].Name != "Bob" {
		t.Errorf("To %v", to)
	}
	if from, _ := h.AddressList("From"); len(from) != 1 || from[0].Name != "Alice Ä" {
		t.Errorf("From %v", from)
	}
	if d, _ := h.Date(); !d.Equal(date) {
		t.Errorf("Date %v", d)
	}
	var types []string
	var texts []string
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ct, params, _ := p.Header.(*gomail.InlineHeader).ContentType()
		types = append(types, ct+";"+params["charset"])
		b, _ := io.ReadAll(p.Body)
		texts = append(texts, string(b))
	}
	if want := []string{"text/plain;utf-8", "text/html;utf-8"}; !reflect.DeepEqual(types, want) {
		t.Fatalf("parts %v, want %v", types, want)
	}
	if !strings.Contains(texts[0], "Hallo **Bob**, long line") || !strings.Contains(texts[0], "\r\n-- \r\nAlice") {
		t.Errorf("text part %q", texts[0])
	}
	if !strings.Contains(texts[1], "<strong>Bob</strong>") {
		t.Errorf("html part %q", texts[1])
	}
	// daemon/mail reads it back as the thread markdown would show it.
	m, err := mail.ParseMessage(raw, mail.ParseOptions{})
	if err != nil || m.MessageID != "new@example.com" || !strings.HasPrefix(m.Text, "Hallo **Bob**") {
		t.Errorf("ParseMessage: %v %q %q", err, m.MessageID, m.Text)
	}
}
