package mail

import (
	"strings"
)

// StripQuoted removes quoted earlier messages from a reply's text, leaving
// what the sender wrote:
//
//   - lines quoted with ">" are dropped wherever they are (so interleaved
//     and bottom-posted replies keep their own text);
//   - an attribution line that introduces a ">" quote ("On Mon, ... wrote:",
//     "Am ... schrieb:", "Le ... a écrit :", "El ... escribió:", ... also
//     when wrapped over two or three lines) is dropped with it;
//   - an attribution not followed by a ">" quote, an "-----Original
//     Message-----" separator (and its localised forms), or an Outlook
//     header block ("From: ... Sent: ... To: ... Subject: ...", also
//     German, French, Spanish, Italian, Dutch ...) ends the text: all that
//     follows is the quoted message.
//
// Forwarded messages ("---------- Forwarded message ---------") are kept:
// their content is what was sent. Blank lines are collapsed. The input is
// expected with "\n" line ends.
func StripQuoted(body string) string {
	lines := strings.Split(body, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t\r")
	}
	var kept []string
	for i := 0; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i])
		if isForwardMarker(t) {
			// Everything from here on is forwarded content: keep it as it is
			// (only its ">" lines go).
			for _, l := range lines[i:] {
				if !isQuotedLine(l) {
					kept = append(kept, l)
				}
			}
			break
		}
		if n := attributionLines(lines, i); n > 0 {
			next := nextNonBlank(lines, i+n)
			if next >= 0 && isQuotedLine(lines[next]) {
				i += n - 1 // drop the attribution; the quote goes below
				continue
			}
			if strings.ContainsAny(strings.Join(lines[i:i+n], " "), "0123456789") {
				// An unquoted quote (dated, so not prose like "On Monday
				// I wrote:"): the rest is the earlier message.
				break
			}
		}
		if isOriginalMessageSeparator(t) {
			break
		}
		if isOutlookHeaderBlock(lines, i) {
			// An Outlook separator line of underscores just above belongs to it.
			if k := len(kept) - 1; k >= 0 && strings.Trim(strings.TrimSpace(kept[k]), "_") == "" && strings.Contains(kept[k], "___") {
				kept = kept[:k]
			}
			break
		}
		if isQuotedLine(lines[i]) {
			continue
		}
		kept = append(kept, lines[i])
	}
	// Collapse runs of blank lines and trim the ends.
	var b strings.Builder
	blank := false
	for _, l := range kept {
		if strings.TrimSpace(l) == "" {
			blank = b.Len() > 0
			continue
		}
		if blank {
			b.WriteString("\n\n")
		} else if b.Len() > 0 {
			b.WriteByte('\n')
		}
		blank = false
		b.WriteString(l)
	}
	return b.String()
}

func isQuotedLine(l string) bool {
	return strings.HasPrefix(strings.TrimLeft(l, " \t"), ">")
}

func nextNonBlank(lines []string, from int) int {
	for i := from; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "" {
			return i
		}
	}
	return -1
}

// attribution describes an "On <date>, <name> wrote:" line in one language.
type attribution struct {
	prefix string // how the line starts (lower case)
	verb   string // a word it contains (lower case)
}

func attributions() []attribution {
	return []attribution{
		{"on ", "wrote"},
		{"am ", "schrieb"},
		{"le ", "a écrit"},
		{"el ", "escribió"},
		{"em ", "escreveu"},
		{"il ", "ha scritto"},
		{"op ", "schreef"},
		{"den ", "skrev"},
		{"w dniu ", "pisze"},
		{"", "wrote"}, // "John Doe <john@example.com> wrote:" (only before a > quote)
		{"", "schrieb"},
	}
}

// attributionLines reports how many lines (1 to 3) starting at i form an
// attribution line, or 0.
func attributionLines(lines []string, i int) int {
	joined := ""
	for n := 1; n <= 3 && i+n-1 < len(lines); n++ {
		l := strings.TrimSpace(lines[i+n-1])
		if l == "" || isQuotedLine(l) {
			return 0
		}
		if n == 1 {
			joined = l
		} else {
			joined += " " + l
		}
		if len(joined) > 400 {
			return 0
		}
		if isAttribution(joined, lines, i+n) {
			return n
		}
	}
	return 0
}

func isAttribution(s string, lines []string, after int) bool {
	if !strings.HasSuffix(s, ":") {
		return false
	}
	lower := strings.ToLower(s)
	for _, a := range attributions() {
		if !strings.HasPrefix(lower, a.prefix) || !strings.Contains(lower, a.verb) {
			continue
		}
		if a.prefix == "" {
			// Bare "... wrote:" only counts right before a quote, and only as
			// the line's end (not "I wrote: ...").
			next := nextNonBlank(lines, after)
			if next < 0 || !isQuotedLine(lines[next]) {
				continue
			}
			if !strings.HasSuffix(strings.TrimSuffix(lower, ":"), a.verb) && !strings.HasSuffix(lower, ">:") {
				continue
			}
		}
		return true
	}
	return false
}

// isForwardMarker matches "---------- Forwarded message ---------" (and
// its localised forms) and Apple Mail's "Begin forwarded message:".
func isForwardMarker(t string) bool {
	lower := strings.ToLower(t)
	if strings.HasPrefix(lower, "begin forwarded message") {
		return true
	}
	inner := strings.Trim(lower, "-_ *")
	if len(lower)-len(inner) < 3 {
		return false
	}
	switch inner {
	case "forwarded message", "weitergeleitete nachricht", "message transféré", "mensaje reenviado",
		"mensagem encaminhada", "messaggio inoltrato", "doorgestuurd bericht", "vidarebefordrat meddelande",
		"wiadomość przekazana", "videresendt meddelelse", "välitetty viesti", "пересылаемое сообщение":
		return true
	}
	return false
}

// isOriginalMessageSeparator matches "-----Original Message-----" and its
// localised forms (at least three dashes or underscores around it).
func isOriginalMessageSeparator(t string) bool {
	inner := strings.Trim(t, "-_ *")
	if len(t)-len(inner) < 3 {
		return false
	}
	switch strings.ToLower(inner) {
	case "original message", "original-nachricht", "ursprüngliche nachricht", "message d'origine",
		"message d’origine", "mensaje original", "mensagem original", "messaggio originale",
		"oorspronkelijk bericht", "originalmeddelande", "opprinnelig melding", "oprindelig meddelelse",
		"wiadomość oryginalna", "alkuperäinen viesti", "исходное сообщение":
		return true
	}
	return false
}

// Outlook header labels: the first line of the block, the date line, and
// the other lines one of which must follow.
func outlookFrom() []string {
	return []string{"from:", "von:", "de :", "de:", "da:", "van:", "från:", "od:", "fra:", "lähettäjä:", "от:"}
}

func outlookSent() []string {
	return []string{"sent:", "date:", "gesendet:", "datum:", "envoyé :", "envoyé:", "date :", "enviado el:", "enviado:",
		"fecha:", "inviato:", "data:", "verzonden:", "skickat:", "sendt:", "wysłano:", "wysłane:", "lähetetty:", "отправлено:"}
}

func outlookOther() []string {
	return []string{"to:", "subject:", "an:", "betreff:", "à :", "à:", "objet :", "objet:", "para:", "asunto:", "a:",
		"oggetto:", "aan:", "onderwerp:", "till:", "ämne:", "til:", "emne:", "do:", "temat:", "vastaanottaja:",
		"aihe:", "кому:", "тема:", "cc:"}
}

// isOutlookHeaderBlock reports whether lines[i] starts a block like
// "From: X" / "Sent: Y" / "To: Z" / "Subject: W" (Outlook's reply header;
// in text made from HTML the labels may be bold: "*From:*").
func isOutlookHeaderBlock(lines []string, i int) bool {
	if !hasLabel(lines[i], outlookFrom()) {
		return false
	}
	sent, other := false, false
	for j := i + 1; j < len(lines) && j <= i+6; j++ {
		l := lines[j]
		if strings.TrimSpace(l) == "" {
			continue
		}
		switch {
		case hasLabel(l, outlookSent()):
			sent = true
		case hasLabel(l, outlookOther()):
			other = true
		}
	}
	return sent && other
}

func hasLabel(line string, labels []string) bool {
	l := strings.ToLower(strings.TrimLeft(line, " \t*"))
	l = strings.Replace(l, "*", "", 2) // "*From:* x" -> "from: x"
	for _, lab := range labels {
		if strings.HasPrefix(l, lab) {
			rest := l[len(lab):]
			if rest == "" || rest[0] == ' ' || rest[0] == '\t' {
				return true
			}
		}
	}
	return false
}
