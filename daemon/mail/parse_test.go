package mail

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func readTestMail(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "mail", name))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestParseMessageFiles(t *testing.T) {
	type want struct {
		subject, messageID   string
		from                 []Address
		to, cc, replyTo      []Address
		date                 string // RFC 3339, "" for zero
		inReplyTo, refs      []string
		textHas, htmlHas     []string
		body, cleaned        string // exact, when set
		cleanedHas           []string
		cleanedHasNot        []string
		attachments          []Attachment
		warnings             []string // substrings, each must appear in some warning
		noWarnings           bool
		bodyIsHTML           bool
		textEmpty, htmlEmpty bool
	}
	tests := []struct {
		file string
		want want
	}{
		{"alternative.eml", want{
			subject:    "Re: Café meeting ☕",
			messageID:  "CAB123-reply@mail.example.org",
			from:       []Address{{Name: "Böb Müller", Email: "bob@example.org"}},
			to:         []Address{{Name: "Alice Example", Email: "alice@example.com"}, {Email: "carol@example.net"}},
			cc:         []Address{{Name: "Dave, the Boss", Email: "dave@example.com"}},
			replyTo:    []Address{{Email: "bob+replies@example.org"}},
			date:       "2024-01-02T10:00:00+01:00",
			inReplyTo:  []string{"CAA111-orig@mail.example.com"},
			refs:       []string{"CAA000-root@mail.example.com", "CAA111-orig@mail.example.com"},
			textHas:    []string{"Thursday at the café works for me. I'll bring the slides – see you there!", "> Shall we meet"},
			htmlHas:    []string{"the slides (https://example.org/slides) – see you there!", "> Shall we meet at the café on Thursday?"},
			cleaned:    "Hi Alice,\n\nThursday at the café works for me. I'll bring the slides – see you there!\n\nBob",
			noWarnings: true,
		}},
		{"latin1.eml", want{
			subject:    "Grüße aus München",
			messageID:  "latin1-42@example.de",
			from:       []Address{{Name: "Jürgen Weiß", Email: "juergen@example.de"}},
			to:         []Address{{Email: "alice@example.com"}},
			date:       "2024-01-03T08:30:00+01:00",
			textHas:    []string{"viele Grüße aus München! Das Wetter ist schön."},
			cleaned:    "Hallo Alice,\n\nviele Grüße aus München! Das Wetter ist schön.",
			noWarnings: true,
			htmlEmpty:  true,
		}},
		{"base64.eml", want{
			subject:    "Base64 body",
			date:       "2024-01-04T12:00:00Z",
			body:       "Hello from a base64 body.\nLine two with ümlauts and emoji 🎉.",
			noWarnings: true,
		}},
		{"mixed-attachment.eml", want{
			subject: "Invoice attached",
			textHas: []string{"Please find the invoice attached."},
			htmlHas: []string{"Please find the invoice attached.", "[image: Logo]"},
			body:    "Please find the invoice attached.",
			attachments: []Attachment{
				{Filename: "logo.png", ContentType: "image/png", Size: 108, Inline: true},
				{Filename: "Rechnung März.pdf", ContentType: "application/pdf", Size: 9 + 256*8},
				{ContentType: "message/rfc822", Size: 66},
			},
			noWarnings: true,
		}},
		{"html-only.eml", want{
			subject:       "RE: Project update",
			bodyIsHTML:    true,
			textEmpty:     true,
			htmlHas:       []string{"- Design done\n- Build in progress", "the wiki (https://wiki.example/proj)"},
			cleaned:       "Hi Alice,\n\nThe update:\n\n- Design done\n- Build in progress\n\nDetails on the wiki (https://wiki.example/proj).",
			cleanedHasNot: []string{"p {margin", "How is the project going?"},
			noWarnings:    true,
		}},
		{"broken-boundary.eml", want{
			textHas:  []string{"Text that should still be found."},
			htmlHas:  []string{"HTML that should still be found."},
			warnings: []string{"declared boundary not found"},
		}},
		{"original-message.eml", want{
			cleaned:    "The numbers look right to me.",
			noWarnings: true,
		}},
		{"malformed.eml", want{
			subject:   "=?x-unknown-charset?Q?abc?=",
			messageID: "no-brackets@example.com",
			from:      []Address{{Name: `"Broken <broken@@example.com`}},
			to:        []Address{{Email: "valid@example.com"}, {Name: "also valid", Email: "x@example.com"}},
			body:      "body",
			warnings:  []string{"subject: unknown charset", "date: unreadable", "from: malformed address list", "without boundary", `unknown charset "x-klingon"`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			m, err := ParseMessage(readTestMail(t, tt.file), ParseOptions{})
			if err != nil {
				t.Fatal(err)
			}
			w := tt.want
			check := func(name string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %#v, want %#v", name, got, want)
				}
			}
			if w.subject != "" {
				check("Subject", m.Subject, w.subject)
			}
			if w.messageID != "" {
				check("MessageID", m.MessageID, w.messageID)
			}
			if w.from != nil {
				check("From", m.From, w.from)
			}
			if w.to != nil {
				check("To", m.To, w.to)
			}
			if w.cc != nil {
				check("Cc", m.Cc, w.cc)
			}
			if w.replyTo != nil {
				check("ReplyTo", m.ReplyTo, w.replyTo)
			}
			if w.date != "" {
				check("Date", m.Date.Format(time.RFC3339), w.date)
			}
			if w.inReplyTo != nil {
				check("InReplyTo", m.InReplyTo, w.inReplyTo)
			}
			if w.refs != nil {
				check("References", m.References, w.refs)
			}
			for _, s := range w.textHas {
				if !strings.Contains(m.Text, s) {
					t.Errorf("Text %q lacks %q", m.Text, s)
				}
			}
			for _, s := range w.htmlHas {
				if !strings.Contains(m.HTMLText, s) {
					t.Errorf("HTMLText %q lacks %q", m.HTMLText, s)
				}
			}
			if w.body != "" {
				check("Body", m.Body, w.body)
			}
			if w.cleaned != "" {
				check("BodyCleaned", m.BodyCleaned, w.cleaned)
			}
			for _, s := range w.cleanedHasNot {
				if strings.Contains(m.BodyCleaned, s) {
					t.Errorf("BodyCleaned %q has %q", m.BodyCleaned, s)
				}
			}
			if w.attachments != nil {
				check("Attachments", m.Attachments, w.attachments)
			}
			if w.bodyIsHTML && m.Body != m.HTMLText {
				t.Errorf("Body is not the HTML text")
			}
			if w.textEmpty && m.Text != "" {
				t.Errorf("Text = %q, want empty", m.Text)
			}
			if w.htmlEmpty && m.HTMLText != "" {
				t.Errorf("HTMLText = %q, want empty", m.HTMLText)
			}
			if w.noWarnings && len(m.Warnings) > 0 {
				t.Errorf("unexpected warnings %q", m.Warnings)
			}
			for _, s := range w.warnings {
				found := false
				for _, got := range m.Warnings {
					found = found || strings.Contains(got, s)
				}
				if !found {
					t.Errorf("no warning with %q in %q", s, m.Warnings)
				}
			}
			checkMessageInvariants(t, m, ParseOptions{}.withDefaults())
		})
	}
}

// checkMessageInvariants holds for every parse result, whatever the input.
func checkMessageInvariants(t testing.TB, m *Message, opts ParseOptions) {
	t.Helper()
	strs := []string{m.MessageID, m.Subject, m.Text, m.HTMLText, m.Body, m.BodyCleaned}
	strs = append(strs, m.InReplyTo...)
	strs = append(strs, m.References...)
	for _, l := range [][]Address{m.From, m.To, m.Cc, m.ReplyTo} {
		for _, a := range l {
			strs = append(strs, a.Name, a.Email)
		}
	}
	for _, h := range m.Headers {
		strs = append(strs, h.Key, h.Value)
	}
	for _, a := range m.Attachments {
		strs = append(strs, a.Filename, a.ContentType)
	}
	for _, s := range strs {
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8: %q", s)
		}
	}
	const marker = 64
	if len(m.Text) > opts.MaxBodyText+marker || len(m.HTMLText) > opts.MaxBodyText+marker {
		t.Fatalf("body text %d/%d bytes over the limit %d", len(m.Text), len(m.HTMLText), opts.MaxBodyText)
	}
	if len(m.Attachments) > opts.MaxParts || len(m.Attachments) > opts.MaxAttachments {
		t.Fatalf("%d attachments over %d parts or the limit of %d", len(m.Attachments), opts.MaxParts, opts.MaxAttachments)
	}
	for _, id := range append(append([]string{m.MessageID}, m.InReplyTo...), m.References...) {
		if strings.ContainsAny(id, "<> \t") {
			t.Fatalf("message id %q is not bare", id)
		}
	}
	for _, l := range [][]Address{m.From, m.To, m.Cc, m.ReplyTo} {
		if len(l) > maxAddresses {
			t.Fatalf("%d addresses", len(l))
		}
	}
	if len(m.Headers) > opts.MaxHeaders {
		t.Fatalf("%d headers over %d", len(m.Headers), opts.MaxHeaders)
	}
	if len(m.References) > maxMsgIDs {
		t.Fatalf("%d references", len(m.References))
	}
	if len(m.Warnings) > 50 {
		t.Fatalf("%d warnings", len(m.Warnings))
	}
}

func TestParseMessageLimits(t *testing.T) {
	t.Run("body text truncated", func(t *testing.T) {
		raw := "Subject: long\r\n\r\n" + strings.Repeat("0123456789", 1000)
		m, err := ParseMessage([]byte(raw), ParseOptions{MaxBodyText: 2048})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(m.Text, strings.Repeat("0123456789", 204)) || !strings.HasSuffix(m.Text, "[... text truncated at 2 KiB ...]") {
			t.Fatalf("Text = %q", m.Text)
		}
		wantWarning(t, m, "truncated")
	})
	t.Run("truncation keeps UTF-8 whole", func(t *testing.T) {
		raw := "Content-Type: text/plain; charset=utf-8\r\n\r\n" + strings.Repeat("é", 100)
		m, _ := ParseMessage([]byte(raw), ParseOptions{MaxBodyText: 51})
		if !utf8.ValidString(m.Text) || !strings.HasPrefix(m.Text, strings.Repeat("é", 25)+"\n") {
			t.Fatalf("Text = %q", m.Text)
		}
	})
	t.Run("message size", func(t *testing.T) {
		raw := "Subject: big\r\n\r\n" + strings.Repeat("x", 5000)
		m, _ := ParseMessage([]byte(raw), ParseOptions{MaxSize: 1000})
		if len(m.Text) > 1000 {
			t.Fatalf("read %d bytes of text", len(m.Text))
		}
		wantWarning(t, m, "only the first 1000 were read")
	})
	t.Run("parts", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("Content-Type: multipart/mixed; boundary=b\r\n\r\n")
		for i := 0; i < 500; i++ {
			fmt.Fprintf(&b, "--b\r\nContent-Type: application/octet-stream\r\n\r\npart %d\r\n", i)
		}
		b.WriteString("--b--\r\n")
		m, _ := ParseMessage([]byte(b.String()), ParseOptions{MaxAttachments: 1000})
		if len(m.Attachments) != DefaultMaxParts {
			t.Fatalf("%d attachments, want %d", len(m.Attachments), DefaultMaxParts)
		}
		wantWarning(t, m, "more than 100 MIME parts")
	})
	t.Run("depth", func(t *testing.T) {
		var b strings.Builder
		n := 60
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i)
		}
		b.WriteString("Content-Type: text/plain\r\n\r\ndeep text\r\n")
		for i := n - 1; i >= 0; i-- {
			fmt.Fprintf(&b, "--b%d--\r\n", i)
		}
		m, _ := ParseMessage([]byte(b.String()), ParseOptions{})
		if strings.Contains(m.Text, "deep text") {
			t.Fatal("text below the depth limit was read")
		}
		wantWarning(t, m, "nested deeper than 20 levels")

		m, _ = ParseMessage([]byte(b.String()), ParseOptions{MaxDepth: 100})
		if m.Text != "deep text" {
			t.Fatalf("Text = %q with a deep enough limit", m.Text)
		}
	})
	t.Run("headers", func(t *testing.T) {
		var b strings.Builder
		for i := 0; i < 1500; i++ {
			fmt.Fprintf(&b, "X-Filler-%d: v\r\n", i)
		}
		b.WriteString("Subject: after many\r\n\r\nbody")
		m, _ := ParseMessage([]byte(b.String()), ParseOptions{})
		if len(m.Headers) != DefaultMaxHeaders || m.Subject != "after many" || m.Text != "body" {
			t.Fatalf("%d headers, subject %q, text %q", len(m.Headers), m.Subject, m.Text)
		}
		wantWarning(t, m, "1501 header fields")
	})
	t.Run("references", func(t *testing.T) {
		var ids []string
		for i := 0; i < 300; i++ {
			ids = append(ids, fmt.Sprintf("<id%d@x>", i))
		}
		m, _ := ParseMessage([]byte("References: "+strings.Join(ids, " ")+"\r\n\r\nx"), ParseOptions{})
		if len(m.References) != maxMsgIDs || m.References[0] != "id0@x" || m.References[maxMsgIDs-1] != "id299@x" {
			t.Fatalf("References = %d ids, %q .. %q", len(m.References), m.References[0], m.References[len(m.References)-1])
		}
	})
}

func wantWarning(t *testing.T, m *Message, sub string) {
	t.Helper()
	for _, w := range m.Warnings {
		if strings.Contains(w, sub) {
			return
		}
	}
	t.Errorf("no warning with %q in %q", sub, m.Warnings)
}

func TestParseMessageMalformed(t *testing.T) {
	tests := []struct {
		name, raw string
		text      string // expected Body ("" = do not check)
		warn      string
	}{
		{"no header at all", "just some text\nwithout headers", "just some text\nwithout headers", "malformed message header"},
		{"bad header line in the middle", "Subject: ok\r\nthis is not a header\r\nX: y\r\n\r\nbody", "body", "malformed message header"},
		{"header only", "Subject: only", "", ""},
		{"missing final boundary", "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\npartial", "partial", "malformed multipart"},
		{"unknown transfer encoding", "Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644", "begin 644", "unknown transfer encoding"},
		{"bad base64", "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=!!!!", "hello", "could not be fully decoded"},
		{"8-bit without charset", "Subject: x\r\n\r\ncaf\xe9", "café", "read as Windows-1252"},
		{"unquoted boundary with =", "Content-Type: multipart/alternative; boundary=----=_Part_1\r\n\r\n------=_Part_1\r\nContent-Type: text/plain\r\n\r\nok\r\n------=_Part_1--\r\n", "ok", ""},
		{"invalid content type", "Content-Type: ;;;\r\n\r\nplain", "plain", "malformed Content-Type"},
		{"empty multipart", "Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here", "", "boundary not found"},
		{"lenient date", "Date: Tue, 2 Jan 2024 10:00:00 +0100 (CET)\r\n\r\nx", "x", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMessage([]byte(tt.raw), ParseOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if tt.text != "" && m.Body != tt.text {
				t.Errorf("Body = %q, want %q", m.Body, tt.text)
			}
			if tt.warn != "" {
				wantWarning(t, m, tt.warn)
			}
			checkMessageInvariants(t, m, ParseOptions{}.withDefaults())
		})
	}
	if _, err := ParseMessage([]byte(" \r\n "), ParseOptions{}); err == nil {
		t.Error("empty message: no error")
	}
}

func TestParseMessageWarningsDoNotQuoteContent(t *testing.T) {
	secret := "SECRET-CONTENT-12345"
	raws := []string{
		secret + "\r\n\r\nbody",
		"Subject: x\r\n" + secret + "\r\n\r\nbody",
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + secret + "\r\n",
		"From: " + secret + " <<<\r\n\r\nx",
	}
	for _, raw := range raws {
		m, _ := ParseMessage([]byte(raw), ParseOptions{})
		for _, w := range m.Warnings {
			if strings.Contains(w, secret) {
				t.Errorf("warning %q quotes the message", w)
			}
		}
	}
}

// FuzzParseMessage's seed corpus is testdata/fuzz/FuzzParseMessage: the
// real-world-shaped messages of testdata/mail (seed-*, in the fuzz corpus
// encoding) and the inputs of past crashes.
func FuzzParseMessage(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		small := ParseOptions{MaxSize: 8 << 10, MaxBodyText: 256, MaxParts: 5, MaxDepth: 3, MaxHeaders: 10}
		for _, opts := range []ParseOptions{{}, small} {
			m, err := ParseMessage(raw, opts)
			if err != nil {
				if len(bytes.TrimSpace(raw)) != 0 {
					t.Fatalf("error for non-empty input: %v", err)
				}
				continue
			}
			checkMessageInvariants(t, m, opts.withDefaults())
		}
	})
}
