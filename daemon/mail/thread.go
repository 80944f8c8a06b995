package mail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// ThreadMethod is how FetchThread found a thread's messages.
type ThreadMethod string

// Thread methods. ThreadAuto (the zero value) picks the best the server
// offers.
const (
	ThreadAuto       ThreadMethod = ""
	ThreadGmail      ThreadMethod = "gmail"      // X-GM-THRID (X-GM-EXT-1); not available yet, see FetchThread
	ThreadReferences ThreadMethod = "references" // the server's THREAD=REFERENCES
	ThreadClient     ThreadMethod = "client"     // client-side, by Message-ID / In-Reply-To / References
)

// Thread defaults.
const (
	DefaultThreadScan        = 500 // newest messages whose headers the client-side method reads
	DefaultThreadMaxMessages = 100 // newest messages of a thread fetched
)

// ErrMessageNotFound is returned by FetchThread when the UID does not exist
// in the mailbox (deleted, or from another UIDVALIDITY).
var ErrMessageNotFound = errors.New("mail: message not found")

// ThreadOptions tunes FetchThread. Zero values mean the defaults.
type ThreadOptions struct {
	// Method forces a method; ThreadAuto uses the best one the server
	// supports. ThreadReferences on a server without THREAD=REFERENCES
	// falls back to ThreadClient.
	Method ThreadMethod
	// Scan bounds the client-side method: the headers of the newest Scan
	// messages of the mailbox are read (plus the message itself and the
	// ancestors its thread names). Default 500.
	Scan int
	// MaxMessages caps the messages fetched: the newest of a longer thread.
	// Default 100.
	MaxMessages int
	// Parse bounds the parsing of every message; its MaxSize also bounds
	// how much of each message is fetched.
	Parse ParseOptions
}

// Thread is a conversation: the messages of one mailbox that belong to the
// thread of a given message, oldest first.
type Thread struct {
	Mailbox  string
	Method   ThreadMethod
	Messages []*ThreadMessage
	// Truncated says that the thread has more messages than were fetched
	// (ThreadOptions.MaxMessages).
	Truncated bool
}

// ThreadMessage is one fetched and parsed message of a thread.
type ThreadMessage struct {
	*Message
	UID          imap.UID
	ID           string // EncodeMessageID(mailbox, UID)
	Flags        []imap.Flag
	InternalDate time.Time
	Size         int64 // RFC822.SIZE: the full size on the server
}

// Subject is the subject of the thread's first message.
func (t *Thread) Subject() string {
	if len(t.Messages) == 0 {
		return ""
	}
	return t.Messages[0].Subject
}

// FetchThread returns the thread of the message uid in mailbox, found with
// the best method the server offers:
//
//   - Gmail's X-GM-THRID would be exact on Gmail, but go-imap v2 (beta.8)
//     cannot send the X-GM-THRID search key nor fetch the attribute.
//     TODO: use it once the library supports raw search keys or Gmail
//     extensions; until then Gmail gets the client-side method.
//   - THREAD=REFERENCES when advertised (UID THREAD REFERENCES UTF-8 ALL).
//     Note that RFC 5256 also groups messages by base subject.
//   - else client-side: the Message-ID, In-Reply-To and References of the
//     newest opts.Scan messages (and of the message itself and the
//     ancestors its thread names) are grouped with BuildThreads.
//
// The messages are fetched with BODY.PEEK[] (never setting \Seen), parsed
// with ParseMessage and ordered by date. If mailbox is not the selected one
// it is selected read-only (EXAMINE). If ctx ends first, the connection is
// closed and the caller must discard it; after any error the connection
// should be discarded.
func FetchThread(ctx context.Context, c *imapclient.Client, mailbox string, uid imap.UID, opts ThreadOptions) (*Thread, error) {
	if err := checkMailboxName(mailbox); err != nil {
		return nil, fmt.Errorf("mail: fetch thread: %v", err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("mail: fetch thread: %w: UID 0", ErrMessageNotFound)
	}
	if opts.Scan <= 0 {
		opts.Scan = DefaultThreadScan
	}
	if opts.MaxMessages <= 0 {
		opts.MaxMessages = DefaultThreadMaxMessages
	}
	opts.Parse = opts.Parse.withDefaults()

	var t *Thread
	err := withContext(ctx, c, func() error {
		var err error
		t, err = fetchThread(c, mailbox, uid, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

func fetchThread(c *imapclient.Client, mailbox string, uid imap.UID, opts ThreadOptions) (*Thread, error) {
	// Always EXAMINE, and use its answer: go-imap (v2 beta.8) may report the
	// previous selection state for a moment after a command returns, so
	// c.Mailbox() cannot tell whether the mailbox is still selected.
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, fmt.Errorf("mail: fetch thread: examine %q: %w", mailbox, err)
	}

	method := opts.Method
	caps := c.Caps()
	if method == ThreadAuto || method == ThreadGmail {
		// ThreadGmail is not implemented (see FetchThread): use the next best.
		method = ThreadClient
		if caps.Has(imap.Cap("THREAD=REFERENCES")) {
			method = ThreadReferences
		}
	}
	if method == ThreadReferences && !caps.Has(imap.Cap("THREAD=REFERENCES")) {
		method = ThreadClient
	}

	var uids []imap.UID
	switch method {
	case ThreadReferences:
		uids, err = serverThread(c, uid)
	default:
		method = ThreadClient
		uids, err = clientThread(c, uid, opts.Scan, sel.NumMessages)
	}
	if err != nil {
		return nil, err
	}

	t := &Thread{Mailbox: mailbox, Method: method}
	sort.Slice(uids, func(i, j int) bool { return uids[i] < uids[j] })
	if len(uids) > opts.MaxMessages {
		// Keep the newest, and always the message asked for.
		newest := uids[len(uids)-opts.MaxMessages:]
		if newest[0] > uid {
			newest = append([]imap.UID{uid}, newest[1:]...)
		}
		uids = newest
		t.Truncated = true
	}
	var msgs []*ThreadMessage
	if len(uids) > 0 {
		var set imap.UIDSet
		for _, u := range uids {
			set.AddNum(u)
		}
		var err error
		if msgs, err = FetchMessages(c, mailbox, set, opts.Parse); err != nil {
			return nil, fmt.Errorf("mail: fetch thread: %w", err)
		}
	}
	found := false
	for _, m := range msgs {
		found = found || m.UID == uid
	}
	if !found {
		return nil, fmt.Errorf("mail: fetch thread: %w: UID %d in %q", ErrMessageNotFound, uid, mailbox)
	}
	sortByDate(msgs)
	t.Messages = msgs
	return t, nil
}

// sortByDate orders messages by their Date header (the internal date when
// it is missing), then UID.
func sortByDate(msgs []*ThreadMessage) {
	when := func(m *ThreadMessage) time.Time {
		if !m.Date.IsZero() {
			return m.Date
		}
		return m.InternalDate
	}
	sort.SliceStable(msgs, func(i, j int) bool {
		ti, tj := when(msgs[i]), when(msgs[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return msgs[i].UID < msgs[j].UID
	})
}

// serverThread asks the server (UID THREAD REFERENCES) for the thread
// containing uid.
func serverThread(c *imapclient.Client, uid imap.UID) ([]imap.UID, error) {
	threads, err := c.UIDThread(&imapclient.ThreadOptions{
		Algorithm:      imap.ThreadReferences,
		SearchCriteria: &imap.SearchCriteria{},
	}).Wait()
	if err != nil {
		return nil, fmt.Errorf("mail: fetch thread: UID THREAD: %w", err)
	}
	for _, th := range threads {
		var all []imap.UID
		collectThread(th, &all, 0)
		for _, u := range all {
			if u == uid {
				return all, nil
			}
		}
	}
	// Not in any thread: the UID does not exist (fetchMessages says so), or
	// the server left it out; the message alone is its thread.
	return []imap.UID{uid}, nil
}

func collectThread(th imapclient.ThreadData, out *[]imap.UID, depth int) {
	for _, n := range th.Chain {
		*out = append(*out, imap.UID(n))
	}
	if depth > 1000 {
		return // a pathological server answer; what was read is enough
	}
	for _, sub := range th.SubThreads {
		collectThread(sub, out, depth+1)
	}
}

// Header is what threading needs of a message.
type Header struct {
	UID        imap.UID
	MessageID  string   // without angle brackets
	InReplyTo  []string // without angle brackets
	References []string // without angle brackets
	Date       time.Time
}

// BuildThreads groups messages into threads by the ids they carry: two
// messages are in one thread when a chain of Message-ID / In-Reply-To /
// References links them, also through ids of messages that are not in the
// list (a missing parent still joins its replies). Duplicates (the same
// Message-ID twice) fall into one thread. Reference cycles are harmless.
// Messages without any id are threads of their own.
//
// Each thread is ordered by date (then UID); the threads are ordered by
// their first message. The result is the same for any input order.
func BuildThreads(headers []Header) [][]Header {
	parent := make([]int, len(headers))
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(x int) int {
		for parent[x] != x {
			parent[x] = parent[parent[x]]
			x = parent[x]
		}
		return x
	}
	union := func(a, b int) {
		ra, rb := find(a), find(b)
		if ra == rb {
			return
		}
		if ra < rb {
			parent[rb] = ra
		} else {
			parent[ra] = rb
		}
	}
	// The first message naming an id (as its own or as a reference) stands
	// for that id; every later one joins it.
	byID := map[string]int{}
	link := func(i int, id string) {
		id = normalizeMsgID(id)
		if id == "" {
			return
		}
		if j, ok := byID[id]; ok {
			union(i, j)
		} else {
			byID[id] = i
		}
	}
	for i, h := range headers {
		link(i, h.MessageID)
		for _, id := range h.InReplyTo {
			link(i, id)
		}
		for _, id := range h.References {
			link(i, id)
		}
	}

	groups := map[int][]Header{}
	for i, h := range headers {
		r := find(i)
		groups[r] = append(groups[r], h)
	}
	out := make([][]Header, 0, len(groups))
	for _, g := range groups {
		sort.SliceStable(g, func(i, j int) bool { return headerLess(g[i], g[j]) })
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return headerLess(out[i][0], out[j][0]) })
	return out
}

func headerLess(a, b Header) bool {
	if !a.Date.Equal(b.Date) {
		return a.Date.Before(b.Date)
	}
	if a.UID != b.UID {
		return a.UID < b.UID
	}
	return a.MessageID < b.MessageID
}

// normalizeMsgID strips angle brackets and space around an id.
func normalizeMsgID(id string) string {
	id = strings.TrimSpace(id)
	id = strings.TrimPrefix(id, "<")
	id = strings.TrimSuffix(id, ">")
	return strings.TrimSpace(id)
}

// threadHeaderFields are the fields the client-side method reads.
func threadHeaderFields() []string {
	return []string{"Message-ID", "In-Reply-To", "References", "Date"}
}

// clientThread finds the thread of uid client-side.
func clientThread(c *imapclient.Client, uid imap.UID, scan int, messages uint32) ([]imap.UID, error) {
	var headers []Header
	if messages > 0 {
		from := uint32(1)
		if messages > uint32(scan) {
			from = messages - uint32(scan) + 1
		}
		var set imap.SeqSet
		set.AddRange(from, messages)
		h, err := fetchHeaders(c, set)
		if err != nil {
			return nil, err
		}
		headers = h
	}
	have := map[imap.UID]bool{}
	for _, h := range headers {
		have[h.UID] = true
	}
	if !have[uid] {
		// Older than the scanned window: read it too.
		h, err := fetchHeaders(c, imap.UIDSetNum(uid))
		if err != nil {
			return nil, err
		}
		if len(h) == 0 {
			return nil, nil // fetchMessages reports the missing message
		}
		headers = append(headers, h...)
	}

	thread := threadOf(BuildThreads(headers), uid)
	// Ancestors the thread names but the window missed: look them up by
	// Message-ID (bounded), then group again.
	if missing := missingAncestors(thread, headers, 20); len(missing) > 0 {
		found, err := searchMessageIDs(c, missing)
		if err != nil {
			return nil, err
		}
		var extra imap.UIDSet
		for _, u := range found {
			if !have[u] && u != uid {
				extra.AddNum(u)
			}
		}
		if len(extra) > 0 {
			h, err := fetchHeaders(c, extra)
			if err != nil {
				return nil, err
			}
			headers = append(headers, h...)
			thread = threadOf(BuildThreads(headers), uid)
		}
	}
	uids := make([]imap.UID, 0, len(thread))
	seen := map[imap.UID]bool{}
	for _, h := range thread {
		if !seen[h.UID] {
			seen[h.UID] = true
			uids = append(uids, h.UID)
		}
	}
	return uids, nil
}

func threadOf(threads [][]Header, uid imap.UID) []Header {
	for _, th := range threads {
		for _, h := range th {
			if h.UID == uid {
				return th
			}
		}
	}
	return nil
}

// missingAncestors lists ids the thread refers to that none of headers
// carries as its Message-ID, at most max, nearest ancestors first.
func missingAncestors(thread, headers []Header, max int) []string {
	present := map[string]bool{}
	for _, h := range headers {
		if id := normalizeMsgID(h.MessageID); id != "" {
			present[id] = true
		}
	}
	var out []string
	added := map[string]bool{}
	for _, h := range thread {
		refs := append(append([]string(nil), h.InReplyTo...), reversed(h.References)...)
		for _, id := range refs {
			id = normalizeMsgID(id)
			if id != "" && !present[id] && !added[id] && len(out) < max {
				added[id] = true
				out = append(out, id)
			}
		}
	}
	return out
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// searchMessageIDs finds the UIDs of messages with any of the ids.
func searchMessageIDs(c *imapclient.Client, ids []string) ([]imap.UID, error) {
	var crit *imap.SearchCriteria
	for i := len(ids) - 1; i >= 0; i-- {
		one := imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: "<" + ids[i] + ">"}}}
		if crit == nil {
			crit = &one
			continue
		}
		crit = &imap.SearchCriteria{Or: [][2]imap.SearchCriteria{{one, *crit}}}
	}
	data, err := c.UIDSearch(crit, nil).Wait()
	if err != nil {
		return nil, fmt.Errorf("mail: fetch thread: search ancestors: %w", err)
	}
	return data.AllUIDs(), nil
}

// abandonOnReadError: when reading a FETCH literal fails, the connection
// failed under it, and go-imap's reader goroutine has already moved on to
// the rest of the response. Any later Next or Close of the command would
// drain the failed literal again, reading the connection's buffer
// concurrently with that goroutine (a data race, found by cutting the
// connection mid-FETCH). So the fetch returns at once and leaves the command
// alone; the connection is unusable, and the caller discards it.

// fetchHeaders reads the threading fields of the messages in set.
func fetchHeaders(c *imapclient.Client, set imap.NumSet) ([]Header, error) {
	section := &imap.FetchItemBodySection{
		Specifier:    imap.PartSpecifierHeader,
		HeaderFields: threadHeaderFields(),
		Peek:         true,
	}
	cmd := c.Fetch(set, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{section}})
	abandoned := false // see abandonOnReadError
	defer func() {
		if !abandoned {
			cmd.Close()
		}
	}()
	var out []Header
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		var h Header
		var raw []byte
		for {
			item := msg.Next()
			if item == nil {
				break
			}
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				h.UID = item.UID
			case imapclient.FetchItemDataBodySection:
				if item.Literal != nil {
					// Header fields only: small; cap them anyway.
					var err error
					if raw, err = io.ReadAll(io.LimitReader(item.Literal, 256<<10)); err != nil {
						abandoned = true
						return nil, fmt.Errorf("mail: fetch thread: fetch headers: %w", err)
					}
				}
			}
		}
		if h.UID == 0 {
			continue
		}
		parseThreadHeader(&h, raw)
		out = append(out, h)
	}
	if err := cmd.Close(); err != nil {
		return nil, fmt.Errorf("mail: fetch thread: fetch headers: %w", err)
	}
	return out, nil
}

// parseThreadHeader fills h from the raw header fields.
func parseThreadHeader(h *Header, raw []byte) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return
	}
	m, err := ParseMessage(raw, ParseOptions{MaxHeaders: 16})
	if err != nil {
		return
	}
	h.MessageID, h.InReplyTo, h.References, h.Date = m.MessageID, m.InReplyTo, m.References, m.Date
}

// FetchMessages fetches the messages of set (UIDs or sequence numbers) in
// the selected mailbox with BODY.PEEK[] — never setting \Seen — at most
// opts.MaxSize bytes of each, and parses them, in the server's order. A
// message that cannot be parsed is kept, with a warning. The thread
// fetcher, the imap plugin and the inbox jobs all read mail through it.
func FetchMessages(c *imapclient.Client, mailbox string, set imap.NumSet, opts ParseOptions) ([]*ThreadMessage, error) {
	opts = opts.withDefaults()
	section := &imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 0, Size: opts.MaxSize}}
	cmd := c.Fetch(set, &imap.FetchOptions{
		UID: true, Flags: true, InternalDate: true, RFC822Size: true,
		BodySection: []*imap.FetchItemBodySection{section},
	})
	abandoned := false // see abandonOnReadError
	defer func() {
		if !abandoned {
			cmd.Close()
		}
	}()
	var out []*ThreadMessage
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		tm := &ThreadMessage{}
		var raw []byte
		for {
			item := msg.Next()
			if item == nil {
				break
			}
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				tm.UID = item.UID
			case imapclient.FetchItemDataFlags:
				tm.Flags = item.Flags
			case imapclient.FetchItemDataInternalDate:
				tm.InternalDate = item.Time
			case imapclient.FetchItemDataRFC822Size:
				tm.Size = item.Size
			case imapclient.FetchItemDataBodySection:
				if item.Literal != nil {
					var err error
					if raw, err = io.ReadAll(io.LimitReader(item.Literal, opts.MaxSize)); err != nil {
						abandoned = true
						return nil, fmt.Errorf("mail: fetch messages: read message: %w", err)
					}
				}
			}
		}
		if tm.UID == 0 {
			continue
		}
		tm.ID = EncodeMessageID(mailbox, tm.UID)
		m, err := ParseMessage(raw, opts)
		if err != nil {
			m = &Message{Warnings: []string{"message is empty"}}
		}
		if tm.Size > int64(len(raw)) && int64(len(raw)) >= opts.MaxSize {
			m.Warnings = append(m.Warnings, fmt.Sprintf("message is %d bytes; only the first %d were fetched", tm.Size, len(raw)))
		}
		tm.Message = m
		out = append(out, tm)
	}
	if err := cmd.Close(); err != nil {
		return nil, fmt.Errorf("mail: fetch messages: %w", err)
	}
	return out, nil
}
