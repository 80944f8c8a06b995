package mail

import (
	"strconv"
	"strings"
)

// ThreadMarkdown renders a thread as markdown, the <<trigger_output>> of
// workflows and the text of thread vectors. The layout is stable:
//
//	# Email Thread
//
//	**Messages:** 2
//
//	## Message 1
//
//	- **From:** Alice <alice@example.com>
//	- **To:** Bob <bob@example.com>
//	- **CC:** Carol <carol@example.com>
//	- **Date:** Mon, 01 Jan 2024 21:15:00 +0100
//	- **Message ID:** <abc@example.com>
//	- **Tool message ID:** SU5CT1g:12
//	- **Subject:** Lunch?
//
//	Shall we have lunch?
//
//	## Message 2
//	...
//
// Messages come in the thread's order (oldest first), numbered from 1. The
// header list always has these lines, in this order (the tool message id,
// EncodeMessageID's mailbox:uid form, only for fetched messages); an empty field
// shows as "(none)" (the date as "(unknown)"). Addresses are formatted by
// Address.String and joined with ", "; the date is RFC 1123 with a numeric
// zone, in the sender's zone. The body is the message's BodyCleaned (the reply
// without quoted earlier messages), or "(no text)"; a body line that would
// read as a markdown heading ("# x") is escaped with a backslash so that
// "## Message" headings stay the only structure. The output ends with one
// newline.
func ThreadMarkdown(t *Thread) string {
	var b strings.Builder
	b.WriteString("# Email Thread\n\n")
	n := 0
	if t != nil {
		n = len(t.Messages)
	}
	b.WriteString("**Messages:** " + strconv.Itoa(n) + "\n")
	for i := 0; i < n; i++ {
		m := t.Messages[i]
		if m == nil || m.Message == nil {
			continue
		}
		b.WriteString("\n## Message " + strconv.Itoa(i+1) + "\n\n")
		field(&b, "From", FormatAddresses(m.From), "(none)")
		field(&b, "To", FormatAddresses(m.To), "(none)")
		field(&b, "CC", FormatAddresses(m.Cc), "(none)")
		date := ""
		if !m.Date.IsZero() {
			date = m.Date.Format("Mon, 02 Jan 2006 15:04:05 -0700")
		}
		field(&b, "Date", date, "(unknown)")
		id := ""
		if m.MessageID != "" {
			id = "<" + m.MessageID + ">"
		}
		field(&b, "Message ID", id, "(none)")
		if m.ID != "" {
			// The id tools take (draft_reply, set_label ...): agents read it here.
			field(&b, "Tool message ID", m.ID, "")
		}
		field(&b, "Subject", m.Subject, "(none)")
		b.WriteString("\n")
		body := strings.TrimSpace(m.BodyCleaned)
		if body == "" {
			body = "(no text)"
		}
		b.WriteString(escapeHeadings(body))
		b.WriteString("\n")
	}
	return b.String()
}

func field(b *strings.Builder, name, value, empty string) {
	value = strings.TrimSpace(value)
	if value == "" {
		value = empty
	}
	b.WriteString("- **" + name + ":** " + value + "\n")
}

// escapeHeadings puts a backslash before "#" at the start of a line when
// the line would otherwise be an ATX heading.
func escapeHeadings(s string) string {
	if !strings.Contains(s, "#") {
		return s
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		t := strings.TrimLeft(l, " ")
		if len(l)-len(t) > 3 || !strings.HasPrefix(t, "#") {
			continue
		}
		hashes := len(t) - len(strings.TrimLeft(t, "#"))
		rest := t[hashes:]
		if hashes <= 6 && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			lines[i] = l[:len(l)-len(t)] + `\` + t
		}
	}
	return strings.Join(lines, "\n")
}
