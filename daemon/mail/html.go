package mail

import (
	"html"
	"strconv"
	"strings"
	"unicode/utf8"
)

// HTMLToText reduces an HTML mail body to readable, markdown-ish plain text:
//
//   - paragraphs and block elements become lines separated by blank lines,
//     <br> a line break, <hr> "---";
//   - headings become "# Title" (one "#" per level);
//   - links become "text (url)"; a link whose text is its own address shows
//     once, and fragment (#...), javascript: and data: links show only
//     their text;
//   - list items become "- item" or "1. item", nested lists are indented;
//   - <blockquote> becomes "> " quoted lines, so quoted replies can be
//     stripped like plain text ones;
//   - table cells of a row are joined with " | ", rows become lines;
//   - images show their alt text as "[image: alt]";
//   - scripts, styles, <title>, <head> metadata, comments and elements
//     hidden with display:none (mail preheaders) are dropped;
//   - entities are decoded, whitespace is collapsed (except in <pre>),
//     invisible padding characters (zero-width, soft hyphen) are removed.
//
// It is a small tolerant tokenizer, not a full HTML5 parser: broken markup
// yields best-effort text, never an error or panic. It runs in time and
// memory linear in the input.
func HTMLToText(s string) string {
	var c htmlConverter
	// Invisible and control characters go first, so that what is parsed is
	// what is shown ("<\x15script>" does not turn into a tag later).
	c.convert(stripInvisible(s))
	return c.result()
}

// Caps that keep the output linear in the input whatever the nesting.
const (
	htmlMaxQuoteDepth = 8
	htmlMaxListIndent = 8
	htmlMaxStack      = 256
)

type htmlList struct {
	ordered bool
	n       int
}

type htmlLink struct {
	href  string
	start int // output length when the link text started
	text  strings.Builder
}

type htmlConverter struct {
	lower string // s with ASCII letters lowered, same byte offsets

	out          strings.Builder
	atLineStart  bool // nothing but the line prefix is pending on this line
	lineHasText  bool
	textQuote    int // quote depth of the last line with text
	pendingSpace bool
	pendingNL    int    // line breaks to write before the next text (max 2)
	marker       string // list or heading marker for the next text

	quote     int
	lists     []htmlList
	listDepth int // may exceed len(lists) when capped
	pre       int
	link      *htmlLink
	cellCount int // non-empty cells in the current table row

	// Searches that failed once fail for every later offset too: they are
	// not repeated, which keeps the run time linear. noQuote is indexed by
	// the quote character's low bit (" is 0x22, ' is 0x27).
	noQuote  [2]bool
	noEndTag map[string]bool

	// hidden tracks an element hidden with display:none (or skipped as a
	// whole): its name and how deep same-named elements are nested in it.
	hidden      string
	hiddenDepth int
}

func (c *htmlConverter) convert(s string) {
	c.lower = asciiLower(s)
	c.noEndTag = map[string]bool{}
	c.atLineStart = true
	i := 0
	for i < len(s) {
		if s[i] != '<' {
			j := strings.IndexByte(s[i:], '<')
			if j < 0 {
				j = len(s) - i
			}
			c.text(s[i : i+j])
			i += j
			continue
		}
		rest := c.lower[i:]
		switch {
		case strings.HasPrefix(rest, "<!-->"):
			i += 5
		case strings.HasPrefix(rest, "<!--->"):
			i += 6
		case strings.HasPrefix(rest, "<!--"):
			end := strings.Index(rest[4:], "-->")
			if end < 0 {
				return
			}
			i += 4 + end + 3
		case strings.HasPrefix(rest, "<![cdata["):
			end := strings.Index(rest, "]]>")
			if end < 0 {
				c.text(s[i+9:])
				return
			}
			c.text(s[i+9 : i+end])
			i += end + 3
		case strings.HasPrefix(rest, "<!") || strings.HasPrefix(rest, "<?"):
			end := strings.IndexByte(rest, '>')
			if end < 0 {
				return
			}
			i += end + 1
		case len(rest) > 1 && (isASCIILetter(rest[1]) || rest[1] == '/' && len(rest) > 2 && isASCIILetter(rest[2])):
			next, ok := c.tag(s, i)
			if !ok {
				// No '>' follows: not a tag after all ("a<b" in prose).
				c.text(s[i:])
				return
			}
			i = next
		default:
			c.text("<")
			i++
		}
	}
}

// tag parses the tag starting at s[i] == '<' and returns the offset after it.
func (c *htmlConverter) tag(s string, i int) (int, bool) {
	j := i + 1
	closing := false
	if s[j] == '/' {
		closing = true
		j++
	}
	nameStart := j
	for j < len(s) && !isHTMLSpace(s[j]) && s[j] != '/' && s[j] != '>' {
		j++
	}
	name := c.lower[nameStart:j]
	attrs, end, ok := c.parseAttrs(s, j)
	if !ok {
		return 0, false
	}
	if closing {
		c.endTag(name)
	} else {
		c.startTag(name, attrs)
		if rawTextElement(name) {
			// Skip to the matching end tag; the content is not text. An
			// unclosed script or style swallows the rest, as in browsers;
			// other elements are then read on as usual.
			k := c.rawTextEnd(s, end, name)
			switch {
			case k >= 0:
				end = k
			case name == "script" || name == "style":
				return len(s), true
			}
		}
	}
	return end, true
}

// rawTextEnd returns the offset of the end tag of the raw text element
// name whose content starts at s[from], or -1 when it has none. An end tag
// is "</name" followed by white space, '/' or '>' ("</stylex>" is not one)
// and closed by a '>': one left open at the end of the input is text in
// the element, not its end.
func (c *htmlConverter) rawTextEnd(s string, from int, name string) int {
	for !c.noEndTag[name] {
		k := strings.Index(c.lower[from:], "</"+name)
		if k < 0 {
			break
		}
		at := from + k
		after := at + 2 + len(name)
		if after < len(s) && !isHTMLSpace(s[after]) && s[after] != '/' && s[after] != '>' {
			from = at + 1
			continue
		}
		if _, _, ok := c.parseAttrs(s, after); ok {
			return at
		}
		break
	}
	c.noEndTag[name] = true // and none further on either
	return -1
}

// parseAttrs reads attributes from s[j:] up to the closing '>', and returns
// them (names lowered, values unescaped) and the offset after '>'.
func (c *htmlConverter) parseAttrs(s string, j int) (map[string]string, int, bool) {
	lower := c.lower
	var attrs map[string]string
	for {
		for j < len(s) && (isHTMLSpace(s[j]) || s[j] == '/') {
			j++
		}
		if j >= len(s) {
			return nil, 0, false
		}
		if s[j] == '>' {
			return attrs, j + 1, true
		}
		k := j
		for k < len(s) && !isHTMLSpace(s[k]) && s[k] != '/' && s[k] != '>' && s[k] != '=' {
			k++
		}
		name := lower[j:k]
		if k == j { // a lone '=' or similar junk
			k++
		}
		j = k
		for j < len(s) && isHTMLSpace(s[j]) {
			j++
		}
		val := ""
		if j < len(s) && s[j] == '=' {
			j++
			for j < len(s) && isHTMLSpace(s[j]) {
				j++
			}
			if j < len(s) && (s[j] == '"' || s[j] == '\'') {
				q := s[j]
				e := -1
				if !c.noQuote[q&1] {
					if e = strings.IndexByte(s[j+1:], q); e < 0 {
						c.noQuote[q&1] = true // and none further on either
					}
				}
				if e < 0 {
					// Unterminated quote: end the tag at the next '>'.
					gt := strings.IndexByte(s[j:], '>')
					if gt < 0 {
						return nil, 0, false
					}
					return attrs, j + gt + 1, true
				}
				val = s[j+1 : j+1+e]
				j += e + 2
			} else {
				k := j
				for k < len(s) && !isHTMLSpace(s[k]) && s[k] != '>' {
					k++
				}
				val = s[j:k]
				j = k
			}
		}
		if name != "" && (name == "href" || name == "alt" || name == "style" || name == "hidden" || name == "start" || name == "src") {
			if attrs == nil {
				attrs = map[string]string{}
			}
			if _, dup := attrs[name]; !dup {
				attrs[name] = html.UnescapeString(val)
			}
		}
	}
}

func rawTextElement(name string) bool {
	switch name {
	case "script", "style", "title", "textarea", "xml", "template", "noscript", "iframe", "object", "svg", "math":
		return true
	}
	return false
}

func voidElement(name string) bool {
	switch name {
	case "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr":
		return true
	}
	return false
}

func isHidden(attrs map[string]string) bool {
	if _, ok := attrs["hidden"]; ok {
		return true
	}
	style := attrs["style"]
	if style == "" {
		return false
	}
	compact := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, strings.ToLower(style))
	return strings.Contains(compact, "display:none") || strings.Contains(compact, "visibility:hidden") ||
		strings.Contains(compact, "max-height:0") && strings.Contains(compact, "overflow:hidden")
}

func (c *htmlConverter) startTag(name string, attrs map[string]string) {
	if c.hidden != "" {
		if name == c.hidden && !voidElement(name) {
			c.hiddenDepth++
		}
		return
	}
	if !voidElement(name) && !rawTextElement(name) && isHidden(attrs) {
		c.hidden, c.hiddenDepth = name, 1
		return
	}
	switch name {
	case "br":
		c.lineBreak()
	case "p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "address",
		"figure", "figcaption", "form", "fieldset", "center", "dl", "details", "summary":
		if name == "p" || name == "dl" {
			c.block(2)
		} else {
			c.block(1)
		}
	case "h1", "h2", "h3", "h4", "h5", "h6":
		c.block(2)
		c.marker = strings.Repeat("#", int(name[1]-'0')) + " "
	case "blockquote":
		c.block(2)
		c.quote++
	case "ul", "ol", "menu":
		if c.listDepth == 0 {
			c.block(2)
		} else {
			c.block(1)
		}
		c.listDepth++
		if len(c.lists) < htmlMaxStack {
			l := htmlList{ordered: name == "ol"}
			if n, err := strconv.Atoi(strings.TrimSpace(attrs["start"])); err == nil && n > -1e6 && n < 1e6 {
				l.n = n - 1
			}
			c.lists = append(c.lists, l)
		}
	case "li":
		c.block(1)
		marker := "- "
		if n := len(c.lists); n > 0 && n == c.listDepth {
			l := &c.lists[n-1]
			if l.ordered {
				l.n++
				marker = strconv.Itoa(l.n) + ". "
			}
		}
		c.marker = marker
	case "dt", "dd":
		c.block(1)
	case "pre":
		c.block(2)
		c.pre++
	case "hr":
		c.block(2)
		c.write("---")
		c.block(2)
	case "table":
		c.block(2)
	case "tr":
		c.block(1)
		c.cellCount = 0
	case "td", "th":
		if c.cellCount > 0 && !c.atLineStart {
			c.pendingSpace = false
			c.write(" |")
			c.pendingSpace = true
		}
	case "a":
		c.closeLink()
		c.link = &htmlLink{href: strings.TrimSpace(attrs["href"]), start: c.out.Len()}
	case "img":
		if alt := strings.TrimSpace(collapseSpace(attrs["alt"])); alt != "" {
			c.pendingSpaceIfText()
			c.write("[image: " + alt + "]")
			c.pendingSpace = true
		}
	}
}

func (c *htmlConverter) endTag(name string) {
	if c.hidden != "" {
		if name == c.hidden {
			c.hiddenDepth--
			if c.hiddenDepth == 0 {
				c.hidden = ""
			}
		}
		return
	}
	switch name {
	case "p", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "table":
		c.block(2)
		c.marker = ""
	case "div", "section", "article", "header", "footer", "main", "aside", "nav", "address",
		"figure", "figcaption", "form", "fieldset", "center", "details", "summary", "li", "dt", "dd", "tr":
		c.block(1)
		if name == "li" {
			c.marker = ""
		}
	case "blockquote":
		c.block(2)
		if c.quote > 0 {
			c.quote--
		}
	case "ul", "ol", "menu":
		if c.listDepth > 0 {
			if len(c.lists) == c.listDepth {
				c.lists = c.lists[:len(c.lists)-1]
			}
			c.listDepth--
		}
		if c.listDepth == 0 {
			c.block(2)
		} else {
			c.block(1)
		}
	case "pre":
		if c.pre > 0 {
			c.pre--
		}
		c.block(2)
	case "td", "th":
		if c.lineHasText {
			c.cellCount++
		}
	case "a":
		c.closeLink()
	}
}

func (c *htmlConverter) closeLink() {
	l := c.link
	if l == nil {
		return
	}
	c.link = nil
	href := l.href
	lowerHref := strings.ToLower(href)
	if href == "" || strings.HasPrefix(href, "#") || strings.HasPrefix(lowerHref, "javascript:") ||
		strings.HasPrefix(lowerHref, "data:") || strings.HasPrefix(lowerHref, "cid:") {
		return
	}
	text := strings.TrimSpace(l.text.String())
	if text == "" {
		return // nothing visible was linked (e.g. a spacer image)
	}
	bare := strings.TrimPrefix(strings.TrimPrefix(href, "mailto:"), "tel:")
	if strings.EqualFold(text, href) || strings.EqualFold(text, bare) ||
		strings.EqualFold(strings.TrimSuffix(text, "/"), strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(href, "https://"), "http://"), "/")) {
		return
	}
	c.pendingSpace = true
	c.write("(" + collapseSpace(href) + ")")
}

// block asks for n line breaks (1: new line, 2: blank line) before the next
// text.
func (c *htmlConverter) block(n int) {
	if c.out.Len() == 0 {
		return
	}
	c.pendingNL = max(c.pendingNL, n)
	c.pendingSpace = false
}

// lineBreak is <br>: one more line break, at most a blank line.
func (c *htmlConverter) lineBreak() {
	if c.out.Len() == 0 {
		return
	}
	c.pendingNL = min(c.pendingNL+1, 2)
	c.pendingSpace = false
}

func (c *htmlConverter) pendingSpaceIfText() {
	if c.lineHasText {
		c.pendingSpace = true
	}
}

// text handles character data between tags.
func (c *htmlConverter) text(raw string) {
	if c.hidden != "" || raw == "" {
		return
	}
	t := html.UnescapeString(raw)
	if c.pre > 0 {
		for i, line := range strings.Split(t, "\n") {
			if i > 0 {
				c.flushBreaks()
				c.newline()
			}
			line = strings.TrimRight(stripInvisible(line), "\r")
			if line != "" {
				c.write(line)
			}
		}
		return
	}
	words := strings.FieldsFunc(stripInvisible(t), isTextSpace)
	if len(words) == 0 {
		if t != "" {
			c.pendingSpaceIfText()
		}
		return
	}
	if isTextSpace(firstRune(t)) {
		c.pendingSpaceIfText()
	}
	for i, w := range words {
		if i > 0 {
			c.pendingSpace = true
		}
		c.write(w)
	}
	if isTextSpace(lastRune(t)) {
		c.pendingSpace = true
	}
}

// write emits s (which has no line breaks) after any pending line breaks,
// line prefix, marker and space.
func (c *htmlConverter) write(s string) {
	c.flushBreaks()
	if c.atLineStart {
		c.out.WriteString(c.prefix())
		if c.marker != "" {
			c.out.WriteString(c.marker)
			c.marker = ""
		}
		c.atLineStart = false
		c.pendingSpace = false
	} else if c.pendingSpace {
		c.out.WriteByte(' ')
		if c.link != nil && c.link.text.Len() > 0 {
			c.link.text.WriteByte(' ')
		}
	}
	c.pendingSpace = false
	c.out.WriteString(s)
	c.lineHasText = true
	c.textQuote = c.quote
	if c.link != nil && c.link.text.Len() < 4096 {
		c.link.text.WriteString(s)
	}
}

// flushBreaks writes the pending line breaks.
func (c *htmlConverter) flushBreaks() {
	if c.out.Len() > 0 {
		for i := 0; i < c.pendingNL; i++ {
			c.newline()
		}
	}
	c.pendingNL = 0
}

func (c *htmlConverter) newline() {
	if q := min(c.quote, c.textQuote, htmlMaxQuoteDepth); c.atLineStart && q > 0 {
		// A blank line inside a quote keeps its ">" so the quote stays one
		// block; between quote levels it gets the outer level.
		c.out.WriteString(strings.TrimRight(strings.Repeat("> ", q), " "))
	}
	c.out.WriteByte('\n')
	c.atLineStart = true
	c.lineHasText = false
}

// prefix is the start of every output line: quote markers and list indent.
func (c *htmlConverter) prefix() string {
	var b strings.Builder
	for i := 0; i < min(c.quote, htmlMaxQuoteDepth); i++ {
		b.WriteString("> ")
	}
	if d := min(c.listDepth, htmlMaxListIndent); d > 1 {
		b.WriteString(strings.Repeat("  ", d-1))
	}
	return b.String()
}

func (c *htmlConverter) result() string {
	c.closeLink()
	lines := strings.Split(c.out.String(), "\n")
	var b strings.Builder
	blank := 0
	for _, l := range lines {
		l = strings.TrimRight(l, " \t")
		if l == "" {
			blank++
			continue
		}
		if b.Len() > 0 {
			b.WriteString(strings.Repeat("\n", min(blank, 1)+1))
		}
		blank = 0
		b.WriteString(l)
	}
	return b.String()
}

func isHTMLSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f'
}

func isASCIILetter(b byte) bool { return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' }

// isTextSpace is whitespace for collapsing, including the no-break space
// mail bodies use for padding.
func isTextSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\r', '\f', '\v', '\u00a0', '\u2007', '\u202f', '\u3000':
		return true
	}
	return r >= '\u2000' && r <= '\u200a'
}

// stripInvisible drops characters that render as nothing (zero-width
// spaces and joiners, soft hyphens, the combining grapheme joiner
// newsletters use as preheader padding, byte order marks) and replaces
// invalid UTF-8.
func stripInvisible(s string) string {
	if utf8.ValidString(s) && strings.IndexFunc(s, invisible) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if invisible(r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// invisible reports characters that render as nothing, and control
// characters other than line breaks and tabs.
func invisible(r rune) bool {
	switch r {
	case '\u200b', '\u200c', '\u200d', '\u2060', '\ufeff', '\u00ad', '\u034f', '\u180e':
		return true
	case '\n', '\t', '\r':
		return false
	}
	return r < 0x20 || r == 0x7f
}

func collapseSpace(s string) string {
	return strings.Join(strings.FieldsFunc(stripInvisible(s), isTextSpace), " ")
}

func firstRune(s string) rune { r, _ := utf8.DecodeRuneInString(s); return r }
func lastRune(s string) rune  { r, _ := utf8.DecodeLastRuneInString(s); return r }

// asciiLower lowers ASCII letters only, so byte offsets stay valid.
func asciiLower(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if ch >= 'A' && ch <= 'Z' {
			b[i] = ch + 'a' - 'A'
		}
	}
	return string(b)
}
