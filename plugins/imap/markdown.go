package imap

import (
	"html"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Renderer bounds: how far ahead an emphasis marker looks for its closing
// marker, and how deeply block quotes nest. They keep rendering linear in
// the input, whatever it holds.
const (
	mdMaxEmphasisSpan = 300 // bytes
	mdMaxQuoteDepth   = 8
)

// renderMarkdown renders the small markdown subset a model writes in an
// email body as an HTML fragment:
//
//   - paragraphs (separated by blank lines), single line breaks as <br>;
//   - "# " to "###### " headings, "> " block quotes, "---" rules;
//   - "- ", "* ", "+ " bullet lists and "1. " / "1) " numbered lists (a
//     line that follows an item without a marker continues it);
//   - **bold** (or __bold__), *emphasis* (or _emphasis_), `code`;
//   - [text](url) links and bare http(s):// addresses, only with http,
//     https and mailto targets (anything else stays text);
//   - a backslash escapes a marker character.
//
// Everything else is text, HTML-escaped: the output never carries markup
// the input did not ask for through this syntax.
func renderMarkdown(md string) string {
	md = strings.ReplaceAll(md, "\r\n", "\n")
	md = strings.ReplaceAll(md, "\r", "\n")
	var b strings.Builder
	renderBlocks(&b, strings.Split(md, "\n"), 0)
	return b.String()
}

// mdList is the kind of a list item line.
type mdList int

const (
	mdNoList mdList = iota
	mdBullet
	mdOrdered
)

// listItem recognises a list item line: its kind, its number (ordered
// lists) and its text.
func listItem(line string) (mdList, int, string) {
	t := strings.TrimLeft(line, " \t")
	if len(t) >= 2 && (t[0] == '-' || t[0] == '*' || t[0] == '+') && (t[1] == ' ' || t[1] == '\t') {
		if isRule(t) {
			return mdNoList, 0, ""
		}
		return mdBullet, 0, strings.TrimSpace(t[2:])
	}
	i := 0
	for i < len(t) && i < 9 && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i > 0 && i+1 < len(t) && (t[i] == '.' || t[i] == ')') && (t[i+1] == ' ' || t[i+1] == '\t') {
		n, _ := strconv.Atoi(t[:i])
		return mdOrdered, n, strings.TrimSpace(t[i+2:])
	}
	return mdNoList, 0, ""
}

// isRule: "---", "***" or "___" (three or more, spaces allowed between).
func isRule(line string) bool {
	t := strings.ReplaceAll(strings.TrimSpace(line), " ", "")
	if len(t) < 3 {
		return false
	}
	c := t[0]
	if c != '-' && c != '*' && c != '_' {
		return false
	}
	return strings.Count(t, string(c)) == len(t)
}

// heading recognises "# title" lines.
func heading(line string) (int, string, bool) {
	t := strings.TrimLeft(line, " ")
	n := 0
	for n < len(t) && t[n] == '#' {
		n++
	}
	if n == 0 || n > 6 || n == len(t) || (t[n] != ' ' && t[n] != '\t') {
		return 0, "", false
	}
	return n, strings.TrimSpace(strings.TrimRight(strings.TrimSpace(t[n:]), "#")), true
}

// quoteLine recognises "> text" lines and returns the text.
func quoteLine(line string) (string, bool) {
	t := strings.TrimLeft(line, " ")
	if !strings.HasPrefix(t, ">") {
		return "", false
	}
	t = t[1:]
	if strings.HasPrefix(t, " ") {
		t = t[1:]
	}
	return t, true
}

func renderBlocks(b *strings.Builder, lines []string, depth int) {
	for i := 0; i < len(lines); {
		line := lines[i]
		if strings.TrimSpace(line) == "" {
			i++
			continue
		}
		if level, text, ok := heading(line); ok {
			tag := "h" + strconv.Itoa(level)
			b.WriteString("<" + tag + ">")
			renderInline(b, text)
			b.WriteString("</" + tag + ">\n")
			i++
			continue
		}
		if isRule(line) {
			b.WriteString("<hr>\n")
			i++
			continue
		}
		if _, ok := quoteLine(line); ok && depth < mdMaxQuoteDepth {
			var inner []string
			for i < len(lines) {
				t, ok := quoteLine(lines[i])
				if !ok {
					break
				}
				inner = append(inner, t)
				i++
			}
			b.WriteString("<blockquote>\n")
			renderBlocks(b, inner, depth+1)
			b.WriteString("</blockquote>\n")
			continue
		}
		if kind, n, _ := listItem(line); kind != mdNoList {
			i = renderList(b, lines, i, kind, n)
			continue
		}
		// A paragraph: lines up to a blank line or another block.
		var para []string
		for i < len(lines) {
			l := lines[i]
			if strings.TrimSpace(l) == "" || isRule(l) {
				break
			}
			if _, _, ok := heading(l); ok {
				break
			}
			if _, ok := quoteLine(l); ok && depth < mdMaxQuoteDepth {
				break
			}
			if kind, _, _ := listItem(l); kind != mdNoList {
				break
			}
			para = append(para, strings.TrimSpace(l))
			i++
		}
		b.WriteString("<p>")
		for j, l := range para {
			if j > 0 {
				b.WriteString("<br>\n")
			}
			renderInline(b, l)
		}
		b.WriteString("</p>\n")
	}
}

// renderList renders the list starting at lines[i] and returns the index
// of the first line after it.
func renderList(b *strings.Builder, lines []string, i int, kind mdList, start int) int {
	tag := "ul"
	if kind == mdOrdered {
		tag = "ol"
	}
	b.WriteString("<" + tag)
	if kind == mdOrdered && start != 1 {
		b.WriteString(` start="` + strconv.Itoa(start) + `"`)
	}
	b.WriteString(">\n")
	for i < len(lines) {
		k, _, text := listItem(lines[i])
		if k != kind {
			break
		}
		i++
		// Lines without a marker continue the item, up to a blank line or
		// another block.
		parts := []string{text}
		for i < len(lines) {
			l := lines[i]
			if strings.TrimSpace(l) == "" || isRule(l) {
				break
			}
			if k, _, _ := listItem(l); k != mdNoList {
				break
			}
			if _, _, ok := heading(l); ok {
				break
			}
			if _, ok := quoteLine(l); ok {
				break
			}
			parts = append(parts, strings.TrimSpace(l))
			i++
		}
		b.WriteString("<li>")
		for j, p := range parts {
			if j > 0 {
				b.WriteString("<br>\n")
			}
			renderInline(b, p)
		}
		b.WriteString("</li>\n")
		// A blank line between items of the same list keeps the list going.
		if i+1 < len(lines) && strings.TrimSpace(lines[i]) == "" {
			if k, _, _ := listItem(lines[i+1]); k == kind {
				i++
			}
		}
	}
	b.WriteString("</" + tag + ">\n")
	return i
}

// renderInline renders one line's inline markup.
func renderInline(b *strings.Builder, s string) { renderSpan(b, s, false) }

// renderSpan renders inline markup; inLink: inside a link's text, where no
// further links are made.
func renderSpan(b *strings.Builder, s string, inLink bool) {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && strings.IndexByte("\\*_`[]()#>-+.!", s[i+1]) >= 0:
			b.WriteString(html.EscapeString(s[i+1 : i+2]))
			i += 2
			continue
		case c == '`':
			if j := strings.IndexByte(s[i+1:], '`'); j > 0 {
				b.WriteString("<code>")
				b.WriteString(html.EscapeString(s[i+1 : i+1+j]))
				b.WriteString("</code>")
				i += j + 2
				continue
			}
		case (c == '*' || c == '_') && strings.HasPrefix(s[i:], string([]byte{c, c})):
			if j := emphasis(s, i, 2); j > 0 {
				b.WriteString("<strong>")
				renderSpan(b, s[i+2:j], inLink)
				b.WriteString("</strong>")
				i = j + 2
				continue
			}
		case c == '*' || c == '_':
			if j := emphasis(s, i, 1); j > 0 {
				b.WriteString("<em>")
				renderSpan(b, s[i+1:j], inLink)
				b.WriteString("</em>")
				i = j + 1
				continue
			}
		case c == '[' && !inLink:
			if text, url, end, ok := link(s, i); ok {
				b.WriteString(`<a href="` + html.EscapeString(url) + `">`)
				renderSpan(b, text, true)
				b.WriteString("</a>")
				i = end
				continue
			}
		case c == 'h' && !inLink && (strings.HasPrefix(s[i:], "http://") || strings.HasPrefix(s[i:], "https://")) && wordBoundaryBefore(s, i):
			end := i
			for end < len(s) && s[end] != ' ' && s[end] != '\t' && s[end] != '<' && s[end] != '>' && s[end] != '"' {
				end++
			}
			// Trailing punctuation ends the sentence, not the address.
			for end > i && strings.IndexByte(".,;:!?)'", s[end-1]) >= 0 {
				end--
			}
			if url := s[i:end]; len(url) > len("https://") {
				b.WriteString(`<a href="` + html.EscapeString(url) + `">` + html.EscapeString(url) + "</a>")
				i = end
				continue
			}
		}
		_, n := utf8.DecodeRuneInString(s[i:])
		b.WriteString(html.EscapeString(s[i : i+n]))
		i += n
	}
}

// emphasis finds the closing marker of an emphasis of n marker characters
// opened at s[i]; "_" opens only at a word start (so snake_case_names
// stay text). It returns the closing marker's index, or -1.
func emphasis(s string, i, n int) int {
	if s[i] == '_' && !wordBoundaryBefore(s, i) {
		return -1
	}
	return closingMarker(s, i+n, s[i:i+n])
}

// closingMarker finds the marker that closes an emphasis opened just before
// from: not right after the opening (empty), not preceded by a space, within
// mdMaxEmphasisSpan bytes. It returns the marker's index, or -1.
func closingMarker(s string, from int, marker string) int {
	if from >= len(s) || s[from] == ' ' || s[from] == '\t' {
		return -1 // "* item" or "a * b": not emphasis
	}
	limit := min(len(s), from+mdMaxEmphasisSpan)
	for j := from + 1; j+len(marker) <= limit; j++ {
		if s[j-1] == '\\' {
			continue
		}
		if strings.HasPrefix(s[j:], marker) && s[j-1] != ' ' && s[j-1] != '\t' {
			// "***" closing "**": the last two close it ("**a *b***").
			for len(marker) == 2 && j+2 < limit && s[j+2] == marker[0] {
				j++
			}
			// "**" closing a single "*" is not a close.
			if len(marker) == 1 && j+1 < len(s) && s[j+1] == marker[0] {
				j++
				continue
			}
			if marker[0] == '_' && !wordBoundaryAfter(s, j+len(marker)) {
				continue
			}
			return j
		}
	}
	return -1
}

// wordBoundaryBefore: s[i] starts a word (so snake_case_names stay text).
func wordBoundaryBefore(s string, i int) bool {
	if i == 0 {
		return true
	}
	r, _ := utf8.DecodeLastRuneInString(s[:i])
	return !unicode.IsLetter(r) && !unicode.IsDigit(r)
}

func wordBoundaryAfter(s string, i int) bool {
	if i >= len(s) {
		return true
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return !unicode.IsLetter(r) && !unicode.IsDigit(r)
}

// link parses "[text](url)" at s[i] and returns the text, the url and the
// index after it; only http, https and mailto targets make a link.
func link(s string, i int) (string, string, int, bool) {
	limit := min(len(s), i+mdMaxEmphasisSpan)
	closeText := strings.Index(s[i:limit], "](")
	if closeText < 1 {
		return "", "", 0, false
	}
	text := s[i+1 : i+closeText]
	if strings.ContainsRune(text, '[') {
		return "", "", 0, false
	}
	urlStart := i + closeText + 2
	closeURL := strings.IndexByte(s[urlStart:limit], ')')
	if closeURL < 1 {
		return "", "", 0, false
	}
	url := strings.TrimSpace(s[urlStart : urlStart+closeURL])
	if !safeURL(url) {
		return "", "", 0, false
	}
	return text, url, urlStart + closeURL + 1, true
}

func safeURL(u string) bool {
	if strings.ContainsAny(u, " \t\"'<>") {
		return false
	}
	l := strings.ToLower(u)
	return strings.HasPrefix(l, "http://") || strings.HasPrefix(l, "https://") || strings.HasPrefix(l, "mailto:")
}

// htmlDocument wraps a rendered body (and the signature, when there is one)
// in the HTML part of a draft.
func htmlDocument(body, signature string) string {
	var b strings.Builder
	b.WriteString("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n")
	b.WriteString(body)
	if signature != "" {
		b.WriteString("<div class=\"signature\">-- <br>\n")
		for i, l := range strings.Split(signature, "\n") {
			if i > 0 {
				b.WriteString("<br>\n")
			}
			b.WriteString(html.EscapeString(l))
		}
		b.WriteString("</div>\n")
	}
	b.WriteString("</body></html>\n")
	return b.String()
}
