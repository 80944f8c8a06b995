package mail

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// multipartOf is a multipart/mixed message of the given parts.
func multipartOf(parts ...string) string {
	var b strings.Builder
	b.WriteString("Subject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n")
	for _, p := range parts {
		b.WriteString("--b\r\n" + p + "\r\n")
	}
	b.WriteString("--b--\r\n")
	return b.String()
}

func attachmentParts(n int) []string {
	parts := []string{"Content-Type: text/plain\r\n\r\nsee attached"}
	for i := 0; i < n; i++ {
		parts = append(parts, fmt.Sprintf("Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=f%d.pdf\r\n\r\n%%PDF %d", i, i))
	}
	return parts
}

func headerFlood(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "X-Flood-%d: v\r\n", i)
	}
	return b.String()
}

// TestParseMessageLimitTable: each limit of ParseOptions, just under and
// over it. Over a limit the message is read partially, with a warning that
// names the limit.
func TestParseMessageLimitTable(t *testing.T) {
	nested := func(levels int) string {
		var b strings.Builder
		for i := 0; i < levels; i++ {
			fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n", i, i)
		}
		b.WriteString("Content-Type: text/plain\r\n\r\ndeep text\r\n")
		for i := levels - 1; i >= 0; i-- {
			fmt.Fprintf(&b, "--n%d--\r\n", i)
		}
		return b.String()
	}
	tests := []struct {
		name    string
		raw     string
		opts    ParseOptions
		warning string // "" = no warning at all
		check   func(t *testing.T, m *Message)
	}{
		{
			name: "size at the limit", raw: "Subject: s\r\n\r\n" + strings.Repeat("x", 86), opts: ParseOptions{MaxSize: 100},
			check: func(t *testing.T, m *Message) { wantLen(t, "text", len(m.Text), 86) },
		},
		{
			name: "size over the limit", raw: "Subject: s\r\n\r\n" + strings.Repeat("x", 1000), opts: ParseOptions{MaxSize: 100},
			warning: "message is 1014 bytes, over the size limit; only the first 100 were read",
			check:   func(t *testing.T, m *Message) { wantLen(t, "text", len(m.Text), 86) },
		},
		{
			name: "attachments at the limit", raw: multipartOf(attachmentParts(3)...), opts: ParseOptions{MaxAttachments: 3},
			check: func(t *testing.T, m *Message) { wantLen(t, "attachments", len(m.Attachments), 3) },
		},
		{
			name: "attachments over the limit", raw: multipartOf(attachmentParts(7)...), opts: ParseOptions{MaxAttachments: 3},
			warning: "message has 7 attachments, over the attachment limit (3); only the first 3 are listed",
			check: func(t *testing.T, m *Message) {
				wantLen(t, "attachments", len(m.Attachments), 3)
				if m.Attachments[2].Filename != "f2.pdf" || m.Text != "see attached" {
					t.Errorf("attachments %+v, text %q", m.Attachments, m.Text)
				}
			},
		},
		{
			name: "default attachment limit", raw: multipartOf(attachmentParts(DefaultMaxAttachments + 1)...),
			warning: fmt.Sprintf("over the attachment limit (%d)", DefaultMaxAttachments),
			check:   func(t *testing.T, m *Message) { wantLen(t, "attachments", len(m.Attachments), DefaultMaxAttachments) },
		},
		{
			name: "parts over the limit", raw: multipartOf(attachmentParts(9)...), opts: ParseOptions{MaxParts: 4},
			warning: "more than 4 MIME parts (the part limit)",
			check:   func(t *testing.T, m *Message) { wantLen(t, "attachments", len(m.Attachments), 3) },
		},
		{
			name: "headers at the limit", raw: headerFlood(9) + "Subject: last\r\n\r\nbody", opts: ParseOptions{MaxHeaders: 10},
			check: func(t *testing.T, m *Message) { wantLen(t, "headers", len(m.Headers), 10) },
		},
		{
			name: "headers over the limit", raw: headerFlood(30) + "Subject: after the flood\r\nX-Late: dropped\r\n\r\nbody", opts: ParseOptions{MaxHeaders: 10},
			warning: "message has 32 header fields, over the header limit (10)",
			check: func(t *testing.T, m *Message) {
				wantLen(t, "headers", len(m.Headers), 10)
				if m.Subject != "after the flood" || m.Text != "body" || m.Header("X-Late") != "" {
					t.Errorf("subject %q, text %q, X-Late %q", m.Subject, m.Text, m.Header("X-Late"))
				}
			},
		},
		{
			name: "folded fields count once", raw: "Subject: a\r\n b\r\n c\r\nFrom: x@example.com\r\n\r\nbody", opts: ParseOptions{MaxHeaders: 2},
			check: func(t *testing.T, m *Message) {
				if m.Subject != "a b c" || len(m.From) != 1 {
					t.Errorf("subject %q, from %v", m.Subject, m.From)
				}
			},
		},
		{
			name: "part headers over the limit",
			raw:  multipartOf(headerFlood(30) + "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8="),
			opts: ParseOptions{MaxHeaders: 10}, warning: "1 part headers have more than 10 fields (the header limit)",
			check: func(t *testing.T, m *Message) {
				if m.Text != "hello" {
					t.Errorf("text %q: the part's own fields were lost", m.Text)
				}
			},
		},
		{
			name: "nesting at the limit", raw: nested(3), opts: ParseOptions{MaxDepth: 3},
			check: func(t *testing.T, m *Message) {
				if m.Text != "deep text" {
					t.Errorf("text %q", m.Text)
				}
			},
		},
		{
			name: "nesting over the limit", raw: nested(4), opts: ParseOptions{MaxDepth: 3},
			warning: "part 1.1.1: multipart nested deeper than 3 levels (the nesting limit); skipped",
			check: func(t *testing.T, m *Message) {
				if m.Text != "" {
					t.Errorf("text %q read below the nesting limit", m.Text)
				}
			},
		},
		{
			name: "addresses over the limit", raw: "To: " + strings.Repeat("a@example.com, ", maxAddresses+5) + "b@example.com\r\n\r\nx",
			warning: fmt.Sprintf("to: %d addresses, over the limit of %d", maxAddresses+6, maxAddresses),
			check:   func(t *testing.T, m *Message) { wantLen(t, "to", len(m.To), maxAddresses) },
		},
		{
			name: "malformed addresses over the limit", raw: "To: " + strings.Repeat("a@example.com <, ", maxAddresses+5) + "\r\n\r\nx",
			warning: fmt.Sprintf("to: more than %d addresses, over the limit", maxAddresses),
			check:   func(t *testing.T, m *Message) { wantLen(t, "to", len(m.To), maxAddresses) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMessage([]byte(tt.raw), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.warning == "" && len(m.Warnings) > 0 {
				t.Errorf("warnings %q", m.Warnings)
			}
			if tt.warning != "" {
				wantWarning(t, m, tt.warning)
			}
			tt.check(t, m)
			checkMessageInvariants(t, m, tt.opts.withDefaults())
		})
	}
}

func wantLen(t *testing.T, what string, got, want int) {
	t.Helper()
	if got != want {
		t.Errorf("%d %s, want %d", got, what, want)
	}
}

// TestParseMessageHeaderFloodBounded: a message of nothing but millions of
// tiny header fields (in its header and in a part's) is read in bounded
// memory; before the header limit cut them, go-message allocated some
// 600 bytes a field (3 GB for 25 MiB).
func TestParseMessageHeaderFloodBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates a 25 MiB message")
	}
	flood := strings.Repeat("a:b\r\n", DefaultMaxMessageSize/5)
	for name, raw := range map[string]string{
		"message header": flood + "\r\nbody",
		"part header":    "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + flood + "\r\nx\r\n--b--\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			m, err := ParseMessage([]byte(raw), ParseOptions{})
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			// The raw message and one copy without the flood, plus slack.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4*DefaultMaxMessageSize {
				t.Errorf("allocated %d MiB for a %d MiB message", alloc>>20, len(raw)>>20)
			}
			wantWarning(t, m, "the header limit")
		})
	}
}
