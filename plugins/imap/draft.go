package imap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	gomail "github.com/emersion/go-message/mail"

	"github.com/inboxd/inboxd/daemon/mail"
)

// Draft limits.
const (
	maxDraftBody   = 64 << 10 // bytes of the body argument
	maxReferences  = 20       // ids kept in References (the first and the newest)
	signatureScan  = 5        // recent sent messages read for the signature
	maxSigLines    = 10
	maxSigBytes    = 1000
	headerFetchMax = 256 << 10
)

type draftArgs struct {
	MessageID string `json:"messageId"`
	Body      string `json:"body"`
}

// draftResult is draft_reply's answer.
type draftResult struct {
	// DraftMessageID is the draft's id, when the server reports it (UIDPLUS).
	DraftMessageID string `json:"draftMessageId,omitempty"`
	Folder         string `json:"folder"`
	Subject        string `json:"subject"`
	To             string `json:"to"`
	Cc             string `json:"cc,omitempty"`
	SignatureAdded bool   `json:"signatureAdded"`
}

// replySubject is "Re: subject" unless subject already is a reply.
func replySubject(subject string) string {
	subject = strings.TrimSpace(subject)
	if isReply(subject) {
		return subject
	}
	return strings.TrimSpace("Re: " + subject)
}

// isReply reports whether a subject starts with "Re:" or one of its
// localised forms (AW, SV, VS, Antw, Odp, R, RIF, RES, YNT, ATB, ΑΠ, ΣΧΕΤ,
// 回复 ...), in any case, with an optional counter ("Re[2]:", "Re(2):").
func isReply(subject string) bool {
	i := strings.IndexAny(subject, ":：")
	if i <= 0 || i > 24 {
		return false
	}
	p := strings.TrimSpace(subject[:i])
	if j := strings.IndexAny(p, "[("); j > 0 && (strings.HasSuffix(p, "]") || strings.HasSuffix(p, ")")) {
		n := p[j+1 : len(p)-1]
		if n == "" || strings.Trim(n, "0123456789") != "" {
			return false
		}
		p = strings.TrimSpace(p[:j])
	}
	switch strings.ToLower(p) {
	case "re", "aw", "sv", "vs", "antw", "antwort", "odp", "r", "rif", "res", "ynt", "atb", "απ", "σχετ", "回复", "回覆", "答复":
		return true
	}
	return false
}

// addressSet is a set of mail addresses, compared case-insensitively.
type addressSet map[string]bool

func (s addressSet) add(email string) {
	if e := strings.ToLower(strings.TrimSpace(email)); e != "" {
		s[e] = true
	}
}

func (s addressSet) has(email string) bool { return s[strings.ToLower(strings.TrimSpace(email))] }

// replyRecipients chooses a reply's recipients: To is the original's
// Reply-To, else its sender (a reply to the user's own message goes to that
// message's recipients); Cc keeps the original's Cc, without the user's own
// addresses and without anyone already in To.
func replyRecipients(orig *mail.Message, self addressSet) (to, cc []mail.Address) {
	dedup := addressSet{}
	pick := func(list []mail.Address, into *[]mail.Address) {
		for _, a := range list {
			if a.Email == "" || self.has(a.Email) || dedup.has(a.Email) {
				continue
			}
			dedup.add(a.Email)
			*into = append(*into, a)
		}
	}
	switch {
	case len(orig.ReplyTo) > 0:
		pick(orig.ReplyTo, &to)
	case len(orig.From) > 0 && self.has(orig.From[0].Email):
		pick(orig.To, &to)
	default:
		pick(orig.From, &to)
	}
	if len(to) == 0 && len(orig.From) > 0 {
		// Only the user is left (a note to self): answer the sender anyway.
		to = append(to, orig.From[0])
		dedup.add(orig.From[0].Email)
	}
	pick(orig.Cc, &cc)
	return to, cc
}

// validMsgID accepts message ids that can be written back between angle
// brackets: printable ASCII without spaces or brackets.
func validMsgID(id string) bool {
	if id == "" || len(id) > 250 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// replyReferences is the References of a reply (RFC 5322 3.6.4): the
// original's References (or its In-Reply-To when it has none) and its
// Message-ID; a long chain keeps its first id and the newest ones.
func replyReferences(orig *mail.Message) []string {
	var refs []string
	src := orig.References
	if len(src) == 0 && len(orig.InReplyTo) == 1 {
		src = orig.InReplyTo
	}
	for _, id := range src {
		if validMsgID(id) {
			refs = append(refs, id)
		}
	}
	if validMsgID(orig.MessageID) {
		refs = append(refs, orig.MessageID)
	}
	if len(refs) > maxReferences {
		refs = append(refs[:1], refs[len(refs)-maxReferences+1:]...)
	}
	return refs
}

// draftSpec is what composeDraft writes.
type draftSpec struct {
	From       *mail.Address
	To, Cc     []mail.Address
	Subject    string
	InReplyTo  string
	References []string
	MessageID  string
	Date       time.Time
	Text, HTML string
}

func toGoMail(l []mail.Address) []*gomail.Address {
	out := make([]*gomail.Address, 0, len(l))
	for _, a := range l {
		out = append(out, &gomail.Address{Name: a.Name, Address: a.Email})
	}
	return out
}

// composeDraft writes the draft as a MIME message: multipart/alternative
// with a text/plain and a text/html part (UTF-8, quoted-printable).
func composeDraft(d draftSpec) ([]byte, error) {
	var h gomail.Header
	h.Set("MIME-Version", "1.0")
	h.SetDate(d.Date)
	if d.From != nil {
		h.SetAddressList("From", toGoMail([]mail.Address{*d.From}))
	}
	h.SetAddressList("To", toGoMail(d.To))
	h.SetAddressList("Cc", toGoMail(d.Cc))
	h.SetSubject(d.Subject)
	h.SetMessageID(d.MessageID)
	if d.InReplyTo != "" {
		h.SetMsgIDList("In-Reply-To", []string{d.InReplyTo})
	}
	h.SetMsgIDList("References", d.References)
	h.Set("User-Agent", "inboxd")

	var buf bytes.Buffer
	w, err := gomail.CreateInlineWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("compose draft: %w", err)
	}
	for _, part := range []struct{ typ, body string }{{"text/plain", d.Text}, {"text/html", d.HTML}} {
		var ph gomail.InlineHeader
		ph.SetContentType(part.typ, map[string]string{"charset": "utf-8"})
		ph.Set("Content-Transfer-Encoding", "quoted-printable")
		pw, err := w.CreatePart(ph)
		if err != nil {
			return nil, fmt.Errorf("compose draft: %w", err)
		}
		if _, err := io.WriteString(pw, part.body); err != nil {
			return nil, fmt.Errorf("compose draft: %w", err)
		}
		if err := pw.Close(); err != nil {
			return nil, fmt.Errorf("compose draft: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("compose draft: %w", err)
	}
	return buf.Bytes(), nil
}

// newMessageID makes a unique Message-ID at the domain of the user's
// address.
func newMessageID(from *mail.Address) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("message id: %w", err)
	}
	domain := "inboxd.invalid"
	if from != nil {
		if _, d, ok := strings.Cut(from.Email, "@"); ok && validMsgID(d) {
			domain = d
		}
	}
	return hex.EncodeToString(b[:]) + "@" + domain, nil
}

// bodyLines splits text into lines without trailing spaces, leading and
// trailing blank lines removed.
func bodyLines(text string) []string {
	text = strings.ReplaceAll(text, "\r\n", "\n")
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRightFunc(l, unicode.IsSpace)
	}
	for len(lines) > 0 && lines[0] == "" {
		lines = lines[1:]
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// acceptSignature returns lines as a signature when they look like one: a
// few short lines with some text.
func acceptSignature(lines []string) string {
	for len(lines) > 0 && lines[0] == "" {
		lines = lines[1:]
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 || len(lines) > maxSigLines {
		return ""
	}
	sig := strings.Join(lines, "\n")
	if len(sig) > maxSigBytes || strings.TrimSpace(sig) == "" {
		return ""
	}
	return sig
}

// findSignature finds the user's signature in the bodies of recent sent
// messages (newest first):
//
//  1. the block after the last "-- " delimiter line (RFC 3676; "--" too,
//     since trailing spaces get lost) of the newest message that has one;
//  2. else the longest run of closing lines the newest message shares with
//     another one, when both have their own text before it.
//
// A signature is at most maxSigLines lines and maxSigBytes bytes; "" when
// none is found.
func findSignature(bodies []string) string {
	var all [][]string
	for _, b := range bodies {
		if lines := bodyLines(b); len(lines) > 0 {
			all = append(all, lines)
		}
	}
	for _, lines := range all {
		for i := len(lines) - 1; i >= 0; i-- {
			if lines[i] == "--" {
				if sig := acceptSignature(lines[i+1:]); sig != "" {
					return sig
				}
				break
			}
		}
	}
	if len(all) < 2 {
		return ""
	}
	newest, best := all[0], 0
	for _, other := range all[1:] {
		n := 0
		for n < len(newest) && n < len(other) &&
			strings.TrimSpace(newest[len(newest)-1-n]) == strings.TrimSpace(other[len(other)-1-n]) {
			n++
		}
		// Both need text of their own before the shared tail.
		if !hasText(newest[:len(newest)-n]) || !hasText(other[:len(other)-n]) {
			continue
		}
		best = max(best, n)
	}
	if best == 0 {
		return ""
	}
	return acceptSignature(newest[len(newest)-best:])
}

func hasText(lines []string) bool {
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			return true
		}
	}
	return false
}

// bodyHasSignature reports whether the body already ends with (or holds)
// the signature, so that it is not added twice.
func bodyHasSignature(body, sig string) bool {
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	if strings.Contains(norm(body), norm(sig)) {
		return true
	}
	b, s := bodyLines(body), bodyLines(sig)
	return len(b) > 0 && len(s) > 0 && strings.TrimSpace(b[len(b)-1]) == strings.TrimSpace(s[len(s)-1])
}

// sentMail is what the recent sent messages tell about the user.
type sentMail struct {
	from   *mail.Address // the From of the newest one
	self   addressSet    // every From address seen
	bodies []string      // their texts, newest first
}

// readSent reads the newest messages of the Sent folder.
func readSent(c *imapclient.Client, folder string) (sentMail, error) {
	sm := sentMail{self: addressSet{}}
	data, err := selectMailbox(c, folder, false)
	if err != nil {
		return sm, err
	}
	if data.NumMessages == 0 {
		return sm, nil
	}
	from := uint32(1)
	if data.NumMessages > signatureScan {
		from = data.NumMessages - signatureScan + 1
	}
	var set imap.SeqSet
	set.AddRange(from, data.NumMessages)
	msgs, err := fetchMessages(c, set, summaryFetchSize)
	if err != nil {
		return sm, err
	}
	for _, f := range msgs {
		if f.Msg == nil {
			continue
		}
		for _, a := range f.Msg.From {
			if sm.from == nil && a.Email != "" {
				sm.from = &a
			}
			sm.self.add(a.Email)
		}
		text := f.Msg.BodyCleaned
		if text == "" {
			text = f.Msg.Body
		}
		sm.bodies = append(sm.bodies, text)
	}
	return sm, nil
}

// fetchHeader reads and parses the header of uid in the selected mailbox.
func fetchHeader(c *imapclient.Client, uid imap.UID) (*mail.Message, bool, error) {
	section := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}
	cmd := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{section}})
	// After a failed literal read the connection failed under it and go-imap's
	// reader goroutine has moved on: closing the command would drain the
	// literal concurrently with it (a data race). Leave it; the caller
	// discards the connection (as daemon/mail's fetches do).
	abandoned := false
	defer func() {
		if !abandoned {
			cmd.Close()
		}
	}()
	var raw []byte
	found := false
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		var got imap.UID
		var b []byte
		for {
			item := msg.Next()
			if item == nil {
				break
			}
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				got = item.UID
			case imapclient.FetchItemDataBodySection:
				if item.Literal != nil {
					var err error
					if b, err = io.ReadAll(io.LimitReader(item.Literal, headerFetchMax)); err != nil {
						abandoned = true
						return nil, false, fmt.Errorf("fetch header: %w", err)
					}
				}
			}
		}
		if got == uid {
			found, raw = true, b
		}
	}
	if err := cmd.Close(); err != nil {
		return nil, false, fmt.Errorf("fetch header: %w", err)
	}
	if !found {
		return nil, false, nil
	}
	m, err := mail.ParseMessage(raw, mail.ParseOptions{MaxSize: headerFetchMax})
	if err != nil {
		m = &mail.Message{}
	}
	return m, true, nil
}

// draftReply is draft_reply.
func (s *server) draftReply(ctx context.Context, cl call, args draftArgs) (draftResult, error) {
	mailbox, uid, err := decodeMessageID(args.MessageID)
	if err != nil {
		return draftResult{}, err
	}
	body := strings.ReplaceAll(args.Body, "\r\n", "\n")
	if strings.TrimSpace(body) == "" {
		return draftResult{}, toolErrorf("body is required: the text of the reply (markdown)")
	}
	if len(body) > maxDraftBody {
		return draftResult{}, toolErrorf("body is too long (%d bytes, at most %d)", len(body), maxDraftBody)
	}
	var res draftResult
	enabled := func(st accountSettings) error {
		if !st.DraftCreationEnabled {
			return toolErrorf("draft creation is disabled in this user's settings (draft_creation_enabled is false); no draft was saved")
		}
		return nil
	}
	err = s.withConnIf(ctx, cl, enabled, func(c *imapclient.Client, st accountSettings) error {
		list, err := listFolders(c)
		if err != nil {
			return err
		}
		folders := resolve(list)
		drafts, err := folders.Name(mail.RoleDrafts)
		if err != nil {
			return toolErrorf("cannot save the draft: %s", strings.TrimPrefix(err.Error(), "mail: "))
		}
		if _, err := selectMailbox(c, mailbox, false); err != nil {
			return err
		}
		orig, ok, err := fetchHeader(c, uid)
		if err != nil {
			return err
		}
		if !ok {
			return notFound(args.MessageID, mailbox, uid)
		}

		sm := sentMail{self: addressSet{}}
		if sent, err := folders.Name(mail.RoleSent); err == nil {
			if sm, err = readSent(c, sent); err != nil {
				if _, isTool := asToolError(err); !isTool {
					return err
				}
				sm = sentMail{self: addressSet{}} // an unreadable Sent folder only costs the signature
			}
		}
		if strings.Contains(st.Username, "@") {
			sm.self.add(st.Username)
			if sm.from == nil {
				sm.from = &mail.Address{Email: st.Username}
			}
		}

		to, cc := replyRecipients(orig, sm.self)
		if len(to) == 0 {
			return toolErrorf("cannot reply to %q: the message has no sender address", args.MessageID)
		}
		sig := findSignature(sm.bodies)
		if sig != "" && bodyHasSignature(body, sig) {
			sig = ""
		}
		text := strings.TrimRightFunc(body, unicode.IsSpace) + "\n"
		if sig != "" {
			text += "\n-- \n" + sig + "\n"
		}
		msgID, err := newMessageID(sm.from)
		if err != nil {
			return err
		}
		spec := draftSpec{
			From:       sm.from,
			To:         to,
			Cc:         cc,
			Subject:    replySubject(orig.Subject),
			References: replyReferences(orig),
			MessageID:  msgID,
			Date:       s.now(),
			Text:       text,
			HTML:       htmlDocument(renderMarkdown(body), sig),
		}
		if validMsgID(orig.MessageID) {
			spec.InReplyTo = orig.MessageID
		}
		raw, err := composeDraft(spec)
		if err != nil {
			return err
		}
		cmd := c.Append(drafts, int64(len(raw)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagDraft, imap.FlagSeen}, Time: spec.Date})
		if _, err := cmd.Write(raw); err != nil {
			cmd.Close()
			return fmt.Errorf("append draft: %w", err)
		}
		if err := cmd.Close(); err != nil {
			return fmt.Errorf("append draft: %w", err)
		}
		data, err := cmd.Wait()
		if err != nil {
			if ie, ok := serverRefusal(err); ok {
				return toolErrorf("the server refused to save the draft in %q: %s", drafts, ie.Text)
			}
			return fmt.Errorf("append draft: %w", err)
		}
		res = draftResult{
			Folder:         drafts,
			Subject:        spec.Subject,
			To:             mail.FormatAddresses(to),
			Cc:             mail.FormatAddresses(cc),
			SignatureAdded: sig != "",
		}
		if data != nil && data.UID != 0 {
			res.DraftMessageID = mail.EncodeMessageID(drafts, data.UID)
		}
		return nil
	})
	return res, err
}
