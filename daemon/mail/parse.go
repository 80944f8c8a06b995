package mail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	netmail "net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // registers charsets with go-message (its init sets message.CharsetReader)
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Parse limits: the defaults of ParseOptions.
const (
	DefaultMaxMessageSize = 25 << 20  // bytes of raw message read
	DefaultMaxBodyText    = 200 << 10 // bytes of body text kept (each of Text and HTMLText)
	DefaultMaxParts       = 100       // MIME parts read
	DefaultMaxDepth       = 20        // multipart nesting levels read
	DefaultMaxHeaders     = 1000      // header fields read from each header (the message's, each part's)
	DefaultMaxAttachments = 50        // attachments listed in Message.Attachments
	maxMsgIDs             = 100       // ids kept from References
	maxAddresses          = 1000      // addresses kept of each address field (From, To, Cc, Reply-To)
)

// ParseOptions bounds what ParseMessage reads. Zero values mean the
// defaults; a message beyond a limit is parsed partially, with a warning
// that names the limit.
type ParseOptions struct {
	MaxSize     int64 // raw message bytes; the rest is not read
	MaxBodyText int   // bytes of Text and of HTMLText; longer text is cut with a marker
	MaxParts    int   // MIME parts; later parts are skipped
	MaxDepth    int   // multipart nesting; deeper parts are skipped
	// MaxHeaders bounds the header fields read from the message's header
	// and from each part's header, and those listed in Message.Headers.
	// Beyond it only the first of each field the parser itself needs
	// (Subject, From, Content-Type ...) is read; the others are dropped
	// unread, so a flood of header fields costs no memory.
	MaxHeaders     int
	MaxAttachments int // attachments listed; later ones are not read
}

func (o ParseOptions) withDefaults() ParseOptions {
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultMaxMessageSize
	}
	if o.MaxBodyText <= 0 {
		o.MaxBodyText = DefaultMaxBodyText
	}
	if o.MaxParts <= 0 {
		o.MaxParts = DefaultMaxParts
	}
	if o.MaxDepth <= 0 {
		o.MaxDepth = DefaultMaxDepth
	}
	if o.MaxHeaders <= 0 {
		o.MaxHeaders = DefaultMaxHeaders
	}
	if o.MaxAttachments <= 0 {
		o.MaxAttachments = DefaultMaxAttachments
	}
	return o
}

// Address is a decoded mail address.
type Address struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email"`
}

// String formats the address for display: `Name <email>`, or the bare
// address. The name is not encoded; it is quoted only when it holds
// characters that would make a list of addresses ambiguous (`"Doe, Jane"
// <jane@example.com>`).
func (a Address) String() string {
	name := a.Name
	if strings.ContainsAny(name, ",;<>\"@:") {
		name = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(name) + `"`
	}
	switch {
	case name == "":
		return a.Email
	case a.Email == "":
		return name
	}
	return name + " <" + a.Email + ">"
}

// FormatAddresses joins addresses for display with ", ".
func FormatAddresses(l []Address) string {
	s := make([]string, len(l))
	for i, a := range l {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// HeaderField is one decoded header field.
type HeaderField struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Attachment describes a part that is not body text. Its content is not kept.
type Attachment struct {
	Filename    string `json:"filename,omitempty"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`   // decoded bytes (as far as they could be read)
	Inline      bool   `json:"inline"` // Content-Disposition: inline (e.g. an embedded image)
}

// Message is a parsed mail message. Every text field is valid UTF-8.
type Message struct {
	Headers    []HeaderField // decoded top-level header fields, in order (at most MaxHeaders)
	MessageID  string        // without angle brackets
	InReplyTo  []string      // without angle brackets
	References []string      // without angle brackets, oldest first
	Subject    string
	From       []Address
	To         []Address
	Cc         []Address
	ReplyTo    []Address
	Date       time.Time // zero when missing or unreadable

	Text     string // the text/plain body parts
	HTMLText string // the text/html body parts, reduced to text with HTMLToText
	// Body is the readable body: Text, or HTMLText when there is no
	// text/plain body.
	Body string
	// BodyCleaned is Body without the quoted earlier messages of a reply
	// (see StripQuoted); Body itself when nothing else remains.
	BodyCleaned string

	Attachments []Attachment

	// Warnings says what could not be read as it should (malformed MIME,
	// unknown charsets, limits reached). They never quote message content.
	Warnings []string
}

// Header returns the first decoded value of the header field key
// (case-insensitive) among Headers, or "".
func (m *Message) Header(key string) string {
	for _, h := range m.Headers {
		if strings.EqualFold(h.Key, key) {
			return h.Value
		}
	}
	return ""
}

// ParseMessage parses a raw RFC 5322 message with MIME. It decodes headers
// (RFC 2047, RFC 2231, common charsets), addresses, ids and the date;
// collects text/plain and text/html bodies (transfer encodings and charsets
// decoded, HTML reduced to text); strips quoted replies into BodyCleaned;
// and lists attachments by name, type and size without keeping them.
//
// Malformed mail (bad MIME structure, missing boundaries, unknown charsets
// or encodings, broken headers) and mail beyond the limits in opts give a
// partial result with Warnings, never a panic; memory stays bounded by the
// limits. The only error is a message with no content at all.
func ParseMessage(raw []byte, opts ParseOptions) (*Message, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, errors.New("mail: parse message: empty message")
	}
	p := &parser{opts: opts.withDefaults(), msg: &Message{}}
	if int64(len(raw)) > p.opts.MaxSize {
		p.warn("message is %d bytes, over the size limit; only the first %d were read", len(raw), p.opts.MaxSize)
		raw = raw[:p.opts.MaxSize]
	}
	raw, over := limitHeaderFields(raw, p.opts.MaxHeaders)
	if over.top > 0 {
		p.warn("message has %d header fields, over the header limit (%d); only the first %d and the fields the parser reads were kept",
			over.top, p.opts.MaxHeaders, p.opts.MaxHeaders)
	}
	if over.parts > 0 {
		p.warn("%d part headers have more than %d fields (the header limit); their later fields were dropped", over.parts, p.opts.MaxHeaders)
	}

	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		// Keep the fields read so far; the body starts after the first
		// blank line, or is the whole message when no field was readable.
		p.warn("malformed message header (%s); kept %d fields", headerErrorKind(err), h.Len())
		body := raw
		if h.Len() > 0 {
			body = afterHeader(raw)
		}
		br = bufio.NewReader(bytes.NewReader(body))
	}
	hdr := message.Header{Header: h}
	p.headers(hdr)
	p.entity(hdr, br, 0, "")
	p.finish()
	return p.msg, nil
}

type parser struct {
	opts        ParseOptions
	msg         *Message
	parts       int
	attachments int // attachments seen, also those over the limit

	text, html       strings.Builder
	textCut, htmlCut bool
	partsWarned      bool
}

// where names a part in warnings: "message" for the top level, else
// "part 1.2" (IMAP part numbering).
func where(path string) string {
	if path == "" {
		return "message"
	}
	return "part " + path
}

func (p *parser) warn(format string, args ...any) {
	if len(p.msg.Warnings) < 50 {
		p.msg.Warnings = append(p.msg.Warnings, fmt.Sprintf(format, args...))
	}
}

// headerErrorKind describes a header parse error without quoting the line.
func headerErrorKind(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "initial line"):
		return "the first line is not a header field"
	case strings.Contains(s, "header key"):
		return "bad field name"
	case strings.Contains(s, "header line"):
		return "a line is not a header field"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "no blank line after the header"
	}
	return "unreadable"
}

// afterHeader returns what follows the first blank line of raw, or nothing.
func afterHeader(raw []byte) []byte {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		if j := bytes.Index(raw, []byte("\n\n")); j >= 0 && j < i {
			return raw[j+2:]
		}
		return raw[i+4:]
	}
	if j := bytes.Index(raw, []byte("\n\n")); j >= 0 {
		return raw[j+2:]
	}
	return nil
}

// headers reads the top-level fields the Message exposes.
func (p *parser) headers(hdr message.Header) {
	mh := gomail.Header{Header: hdr}
	// limitHeaderFields left at most MaxHeaders fields and a few the parser
	// reads (and warned); the list shows the first MaxHeaders.
	fields := hdr.Fields()
	for fields.Next() && len(p.msg.Headers) < p.opts.MaxHeaders {
		v, err := fields.Text()
		if err != nil {
			v = fields.Value()
		}
		p.msg.Headers = append(p.msg.Headers, HeaderField{Key: clean(fields.Key()), Value: clean(v)})
	}

	if subj, err := mh.Subject(); err == nil {
		p.msg.Subject = clean(subj)
	} else {
		p.msg.Subject = clean(subj)
		if p.msg.Subject == "" {
			p.msg.Subject = clean(hdr.Get("Subject"))
		}
		p.warn("subject: %s", charsetProblem(err))
	}

	if v := hdr.Get("Date"); v != "" {
		if d, err := mh.Date(); err == nil {
			p.msg.Date = d
		} else if d, ok := lenientDate(v); ok {
			p.msg.Date = d
		} else {
			p.warn("date: unreadable Date header")
		}
	}

	if id, err := mh.MessageID(); err == nil && id != "" {
		p.msg.MessageID = cleanMsgID(id)
	} else if ids := lenientMsgIDs(hdr.Get("Message-Id")); len(ids) > 0 {
		p.msg.MessageID = cleanMsgID(ids[0])
	}
	p.msg.InReplyTo = p.msgIDList(mh, "In-Reply-To")
	refs := p.msgIDList(mh, "References")
	if len(refs) > maxMsgIDs {
		p.warn("references: %d ids; kept the first and the last %d", len(refs), maxMsgIDs-1)
		refs = append(refs[:1], refs[len(refs)-(maxMsgIDs-1):]...)
	}
	p.msg.References = refs

	p.msg.From = p.addresses(mh, "From")
	p.msg.To = p.addresses(mh, "To")
	p.msg.Cc = p.addresses(mh, "Cc")
	p.msg.ReplyTo = p.addresses(mh, "Reply-To")
}

func charsetProblem(err error) string {
	if message.IsUnknownCharset(err) {
		return "unknown charset; shown undecoded"
	}
	return "malformed encoded words; shown undecoded"
}

func (p *parser) msgIDList(mh gomail.Header, key string) []string {
	raw := mh.Get(key)
	if strings.TrimSpace(raw) == "" {
		return nil
	}
	ids, err := mh.MsgIDList(key)
	if err != nil || len(ids) == 0 {
		ids = lenientMsgIDs(raw)
	}
	out := ids[:0]
	for _, id := range ids {
		if id = cleanMsgID(id); id != "" {
			out = append(out, id)
		}
	}
	return out
}

// cleanMsgID returns a message id without angle brackets, or "" for
// something that cannot be one (brackets or white space inside, as in a
// mangled "<<>>"): threading compares ids as they are.
func cleanMsgID(id string) string {
	id = normalizeMsgID(clean(id))
	if strings.ContainsAny(id, "<> ") {
		return ""
	}
	return id
}

// lenientMsgIDs takes the <...> tokens of a malformed id list, or its
// whitespace-separated words when it has none.
func lenientMsgIDs(s string) []string {
	var ids []string
	for {
		i := strings.IndexByte(s, '<')
		if i < 0 {
			break
		}
		j := strings.IndexByte(s[i:], '>')
		if j < 0 {
			break
		}
		if id := strings.TrimSpace(s[i+1 : i+j]); id != "" && !strings.ContainsAny(id, " \t") {
			ids = append(ids, id)
		}
		s = s[i+j+1:]
	}
	if len(ids) == 0 && !strings.ContainsAny(s, "<>") {
		for _, f := range strings.Fields(s) {
			if strings.Contains(f, "@") {
				ids = append(ids, f)
			}
		}
	}
	return ids
}

func (p *parser) addresses(mh gomail.Header, key string) []Address {
	raw := mh.Get(key)
	if strings.TrimSpace(raw) == "" {
		return nil
	}
	list, err := mh.AddressList(key)
	if err == nil {
		if len(list) > maxAddresses {
			p.warn("%s: %d addresses, over the limit of %d; the rest were dropped", strings.ToLower(key), len(list), maxAddresses)
			list = list[:maxAddresses]
		}
		out := make([]Address, 0, len(list))
		for _, a := range list {
			out = append(out, Address{Name: clean(a.Name), Email: clean(a.Address)})
		}
		return out
	}
	// Malformed list: take each comma-separated piece that parses, or that
	// holds something like an address.
	p.warn("%s: malformed address list; read leniently", strings.ToLower(key))
	dec := mime.WordDecoder{CharsetReader: charsetReaderFunc}
	var out []Address
	for _, piece := range strings.Split(raw, ",") {
		piece = strings.TrimSpace(piece)
		if piece == "" {
			continue
		}
		if len(out) == maxAddresses {
			p.warn("%s: more than %d addresses, over the limit; the rest were dropped", strings.ToLower(key), maxAddresses)
			break
		}
		if a, err := gomail.ParseAddress(piece); err == nil {
			out = append(out, Address{Name: clean(a.Name), Email: clean(a.Address)})
			continue
		}
		email, name := piece, ""
		if i := strings.LastIndexByte(piece, '<'); i >= 0 {
			if j := strings.IndexByte(piece[i:], '>'); j > 0 {
				email = piece[i+1 : i+j]
				name = strings.Trim(strings.TrimSpace(piece[:i]), `"`)
			}
		}
		email = strings.TrimSpace(email)
		if d, err := dec.DecodeHeader(name); err == nil {
			name = d
		}
		if !plausibleEmail(email) {
			// Keep what is there as a name rather than a broken address.
			if d, err := dec.DecodeHeader(piece); err == nil {
				piece = d
			}
			out = append(out, Address{Name: clean(piece)})
			continue
		}
		out = append(out, Address{Name: clean(name), Email: clean(email)})
	}
	return out
}

// plausibleEmail accepts local@domain without spaces, quotes or brackets.
func plausibleEmail(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	return ok && local != "" && domain != "" && !strings.Contains(domain, "@") &&
		!strings.ContainsAny(s, " \t\"<>(),;:[]\\")
}

func decodeCharset(charset string, b []byte) ([]byte, bool) {
	r, err := charsetReaderFunc(charset, bytes.NewReader(b))
	if err != nil {
		return nil, false
	}
	d, err := io.ReadAll(r)
	return d, err == nil
}

func charsetReaderFunc(charset string, input io.Reader) (io.Reader, error) {
	if message.CharsetReader == nil {
		return nil, fmt.Errorf("unhandled charset %q", charset)
	}
	return message.CharsetReader(charset, input)
}

// lenientDate tries date layouts net/mail rejects but real mail uses.
func lenientDate(v string) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if i := strings.IndexByte(v, '('); i > 0 { // trailing "(CEST)" comments
		v = strings.TrimSpace(v[:i])
	}
	for _, layout := range []string{
		"Mon, 2 Jan 2006 15:04:05 -0700", "Mon, 2 Jan 2006 15:04 -0700", "2 Jan 2006 15:04:05 -0700",
		"Mon, 2 Jan 2006 15:04:05 MST", "Mon, 2 Jan 06 15:04:05 -0700", "Mon, 2 Jan 2006 15:04:05",
		"Monday, 2 January 2006 15:04:05 -0700", "Mon Jan 2 15:04:05 2006", "Mon Jan 2 15:04:05 MST 2006",
		time.RFC3339, "2006-01-02 15:04:05 -0700", "2006-01-02 15:04:05",
	} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, true
		}
	}
	if t, err := netmail.ParseDate(strings.ReplaceAll(v, "  ", " ")); err == nil {
		return t, true
	}
	return time.Time{}, false
}

// clean makes header text single-line, valid UTF-8, free of control
// characters and trimmed.
func clean(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexFunc(s, isControl) >= 0 {
		s = strings.Map(func(r rune) rune {
			switch {
			case r == '\r' || r == '\n' || r == '\t':
				return ' '
			case isControl(r):
				return -1
			}
			return r
		}, s)
	}
	return strings.TrimSpace(s)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// contentType reads a Content-Type leniently: RFC 2045 says a missing or
// invalid one means text/plain; parameters are kept as far as they parse.
func contentType(hdr message.Header) (mediaType string, params map[string]string, malformed bool) {
	v := hdr.Get("Content-Type")
	if strings.TrimSpace(v) == "" {
		return "text/plain", map[string]string{}, false
	}
	mt, params, err := mime.ParseMediaType(v)
	if err == nil {
		return strings.ToLower(mt), params, false
	}
	// Lenient: "type/subtype" before the first ';', then key=value pairs
	// (e.g. the common unquoted boundary=----=_Part_1).
	head, rest, _ := strings.Cut(v, ";")
	mt = strings.ToLower(strings.TrimSpace(head))
	if !validMediaType(mt) {
		mt = "text/plain"
	}
	params = map[string]string{}
	for _, kv := range strings.Split(rest, ";") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		val = strings.TrimSpace(val)
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			val = val[1 : len(val)-1]
		}
		if k != "" && val != "" {
			if _, dup := params[k]; !dup {
				params[k] = val
			}
		}
	}
	return mt, params, true
}

func validMediaType(mt string) bool {
	typ, sub, ok := strings.Cut(mt, "/")
	return ok && isToken(typ) && isToken(sub)
}

// isToken reports whether s is an RFC 2045 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return true
}

// entity reads one MIME entity (header already read, body in r).
func (p *parser) entity(hdr message.Header, r io.Reader, depth int, path string) {
	mt, params, malformed := contentType(hdr)
	if malformed {
		p.warn("%s: malformed Content-Type; read as %s", where(path), mt)
	}
	if strings.HasPrefix(mt, "multipart/") {
		// A missing boundary, or one that never occurs (mangled by a
		// gateway), would lose every part: look ahead for it, and if it is
		// not there, use the first delimiter-like line instead; with none
		// at all, read the body as text.
		br := bufio.NewReaderSize(r, boundaryPeek)
		head, _ := br.Peek(boundaryPeek)
		r = br
		boundary := params["boundary"]
		if boundary == "" || !bytes.Contains(head, []byte("--"+boundary)) {
			problem := "declared boundary not found"
			if boundary == "" {
				problem = mt + " without boundary"
			}
			switch alt := guessBoundary(head); {
			case alt != "":
				p.warn("%s: %s; using the delimiter found in the body", where(path), problem)
				boundary = alt
			case len(head) < boundaryPeek || boundary == "":
				// The whole body was searched (or there is nothing to search
				// for): no part can be found.
				p.warn("%s: %s; read as text", where(path), problem)
				boundary = ""
			}
		}
		if boundary != "" {
			p.multipart(r, boundary, depth, path)
			return
		}
		mt = "text/plain"
	}
	// Hand go-message a clean Content-Type so that it decodes the transfer
	// encoding and charset.
	h := hdr.Copy()
	if formatted := mime.FormatMediaType(mt, params); formatted != "" {
		h.Set("Content-Type", formatted)
	} else {
		h.Set("Content-Type", mt)
	}
	e, err := message.New(h, r)
	if err != nil {
		switch {
		case message.IsUnknownEncoding(err):
			p.warn("%s: unknown transfer encoding; read undecoded", where(path))
		case message.IsUnknownCharset(err):
			p.warn("%s: unknown charset %q; read undecoded", where(path), printable(params["charset"], 40))
		default:
			p.warn("%s: unreadable", where(path))
		}
		if e == nil {
			return
		}
	}
	p.leaf(e, mt, params, path)
}

func (p *parser) multipart(r io.Reader, boundary string, depth int, path string) {
	if depth >= p.opts.MaxDepth {
		p.warn("%s: multipart nested deeper than %d levels (the nesting limit); skipped", where(path), p.opts.MaxDepth)
		return
	}
	mr := textproto.NewMultipartReader(r, boundary)
	for i := 1; ; i++ {
		if p.parts >= p.opts.MaxParts {
			if !p.partsWarned {
				p.partsWarned = true
				p.warn("message has more than %d MIME parts (the part limit); the rest were skipped", p.opts.MaxParts)
			}
			return
		}
		part, err := mr.NextPart()
		if err != nil && i == 1 {
			p.warn("%s: multipart without any part (boundary not found)", where(path))
			return
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			p.warn("%s: malformed multipart body after %d parts", where(path), i-1)
			return
		}
		p.parts++
		sub := fmt.Sprint(i)
		if path != "" {
			sub = path + "." + sub
		}
		p.entity(message.Header{Header: part.Header}, part, depth+1, sub)
	}
}

// boundaryPeek is how far ahead a multipart body is searched for its
// boundary.
const boundaryPeek = 64 << 10

// guessBoundary returns the boundary of the first line that looks like a
// multipart delimiter ("--" and a token, and a header on the next line).
func guessBoundary(b []byte) string {
	for len(b) > 0 {
		line, rest, _ := bytes.Cut(b, []byte("\n"))
		line = bytes.TrimRight(line, "\r \t")
		if len(line) > 4 && len(line) < 200 && bytes.HasPrefix(line, []byte("--")) &&
			!bytes.ContainsAny(line, " \t") {
			next, _, _ := bytes.Cut(rest, []byte("\n"))
			if i := bytes.IndexByte(next, ':'); i > 0 && !bytes.ContainsAny(next[:i], " \t") {
				return strings.TrimSuffix(string(line[2:]), "--")
			}
		}
		b = rest
	}
	return ""
}

// leaf reads a non-multipart entity: body text or an attachment.
func (p *parser) leaf(e *message.Entity, mt string, params map[string]string, path string) {
	disp, dparams, derr := e.Header.ContentDisposition()
	if derr != nil {
		disp = strings.ToLower(strings.TrimSpace(strings.SplitN(e.Header.Get("Content-Disposition"), ";", 2)[0]))
	}
	isBody := (mt == "text/plain" || mt == "text/html") && disp != "attachment"
	if !isBody {
		p.attachments++
		if len(p.msg.Attachments) >= p.opts.MaxAttachments {
			return // not listed, not read (finish warns)
		}
		name, err := (&gomail.AttachmentHeader{Header: e.Header}).Filename()
		if err != nil || name == "" {
			name = dparams["filename"]
			if name == "" {
				name = params["name"]
			}
		}
		n, rerr := io.Copy(io.Discard, e.Body)
		if rerr != nil {
			p.warn("%s: attachment could not be fully decoded", where(path))
		}
		p.msg.Attachments = append(p.msg.Attachments, Attachment{
			Filename: clean(name), ContentType: mt, Size: n, Inline: disp == "inline",
		})
		return
	}
	if mt == "text/html" {
		// HTML is bulkier than its text: read more of it, but not unbounded.
		limit := int64(p.opts.MaxBodyText) * 16
		b, err := io.ReadAll(io.LimitReader(e.Body, limit+1))
		if err != nil {
			p.warn("%s: body could not be fully decoded", where(path))
		}
		if int64(len(b)) > limit {
			b = b[:limit]
			p.warn("%s: HTML longer than %d bytes; the rest was not read", where(path), limit)
		}
		p.appendText(&p.html, &p.htmlCut, HTMLToText(string(b)))
		return
	}
	room := p.opts.MaxBodyText - p.text.Len()
	b, err := io.ReadAll(io.LimitReader(e.Body, int64(max(room, 0))+1))
	if err != nil {
		p.warn("%s: body could not be fully decoded", where(path))
	}
	if cs := strings.ToLower(params["charset"]); !utf8.Valid(b) && (cs == "" || cs == "us-ascii") {
		// 8-bit text without a charset is nearly always Windows-1252
		// (a superset of ISO-8859-1) in practice.
		if d, ok := decodeCharset("windows-1252", b); ok {
			b = d
			p.warn("%s: 8-bit text without charset; read as Windows-1252", where(path))
		}
	}
	p.appendText(&p.text, &p.textCut, normalizeText(string(b)))
}

// normalizeText makes body text valid UTF-8 with "\n" line ends, without
// control characters (but tabs) or invisible padding characters.
func normalizeText(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return stripInvisible(s)
}

// appendText adds a body part's text, keeping the total within MaxBodyText.
func (p *parser) appendText(b *strings.Builder, cut *bool, s string) {
	s = strings.TrimSpace(s)
	if s == "" || *cut {
		return
	}
	if b.Len() > 0 {
		s = "\n\n" + s
	}
	room := p.opts.MaxBodyText - b.Len()
	if len(s) > room {
		s = truncateUTF8(s, max(room, 0))
		*cut = true
	}
	b.WriteString(s)
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (p *parser) finish() {
	if p.attachments > p.opts.MaxAttachments {
		p.warn("message has %d attachments, over the attachment limit (%d); only the first %d are listed",
			p.attachments, p.opts.MaxAttachments, p.opts.MaxAttachments)
	}
	marker := fmt.Sprintf("\n\n[... text truncated at %d KiB ...]", p.opts.MaxBodyText>>10)
	if p.opts.MaxBodyText < 1024 {
		marker = fmt.Sprintf("\n\n[... text truncated at %d bytes ...]", p.opts.MaxBodyText)
	}
	p.msg.Text = p.text.String()
	if p.textCut {
		p.msg.Text += marker
		p.warn("body text longer than %d bytes; truncated", p.opts.MaxBodyText)
	}
	p.msg.HTMLText = p.html.String()
	if p.htmlCut {
		p.msg.HTMLText += marker
		p.warn("HTML body text longer than %d bytes; truncated", p.opts.MaxBodyText)
	}
	p.msg.Body = p.msg.Text
	if strings.TrimSpace(p.msg.Body) == "" {
		p.msg.Body = p.msg.HTMLText
	}
	p.msg.BodyCleaned = StripQuoted(p.msg.Body)
	if strings.TrimSpace(p.msg.BodyCleaned) == "" {
		p.msg.BodyCleaned = strings.TrimSpace(p.msg.Body)
	}
}
