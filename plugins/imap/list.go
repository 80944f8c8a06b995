package imap

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
)

// Listing limits.
const (
	defaultListCount   = 10
	maxListCount       = 50
	defaultSearchLimit = 20
	maxSearchLimit     = 50
	snippetRunes       = 200
	// summaryFetchSize bounds how much of each listed message is fetched:
	// enough for the headers and the start of the text.
	summaryFetchSize = 64 << 10
)

// emailSummary is one message of a listing.
type emailSummary struct {
	MessageID string `json:"messageId"`
	From      string `json:"from"`
	To        string `json:"to"`
	Subject   string `json:"subject"`
	Date      string `json:"date"` // RFC 3339 in the sender's zone; "" when unknown
	Snippet   string `json:"snippet"`
}

type countArgs struct {
	Count flexInt `json:"count"`
}

type folderArgs struct {
	Folder string  `json:"folder"`
	Count  flexInt `json:"count"`
}

type searchArgs struct {
	Query  string  `json:"query"`
	Folder string  `json:"folder"`
	Limit  flexInt `json:"limit"`
}

// listRecent is list_most_recent_inbox_emails.
func (s *server) listRecent(ctx context.Context, cl call, args countArgs) ([]emailSummary, error) {
	count, err := intArg("count", args.Count, defaultListCount, maxListCount)
	if err != nil {
		return nil, err
	}
	return s.newest(ctx, cl, "INBOX", count)
}

// folderMessages is get_messages_from_folder.
func (s *server) folderMessages(ctx context.Context, cl call, args folderArgs) ([]emailSummary, error) {
	folder := strings.TrimSpace(args.Folder)
	if folder == "" {
		return nil, toolErrorf("folder is required: a folder name from get_all_labels, or INBOX")
	}
	count, err := intArg("count", args.Count, defaultListCount, maxListCount)
	if err != nil {
		return nil, err
	}
	return s.newest(ctx, cl, folder, count)
}

// newest lists the count most recently arrived messages of mailbox, newest
// first.
func (s *server) newest(ctx context.Context, cl call, mailbox string, count int) ([]emailSummary, error) {
	var out []emailSummary
	err := s.withConn(ctx, cl, func(c *imapclient.Client, _ accountSettings) error {
		data, err := selectMailbox(c, mailbox, false)
		if err != nil {
			return err
		}
		if data.NumMessages == 0 {
			return nil
		}
		from := uint32(1)
		if data.NumMessages > uint32(count) {
			from = data.NumMessages - uint32(count) + 1
		}
		var set imap.SeqSet
		set.AddRange(from, data.NumMessages)
		out, err = fetchSummaries(c, mailbox, set)
		return err
	})
	if out == nil {
		out = []emailSummary{}
	}
	return out, err
}

// searchEmails is search_emails.
func (s *server) searchEmails(ctx context.Context, cl call, args searchArgs) ([]emailSummary, error) {
	q, err := parseQuery(args.Query)
	if err != nil {
		return nil, toolErrorf("bad query: %v", err)
	}
	limit, err := intArg("limit", args.Limit, defaultSearchLimit, maxSearchLimit)
	if err != nil {
		return nil, err
	}
	folder := strings.TrimSpace(args.Folder)
	if folder == "" {
		folder = "INBOX"
	}
	var out []emailSummary
	err = s.withConn(ctx, cl, func(c *imapclient.Client, _ accountSettings) error {
		if _, err := selectMailbox(c, folder, false); err != nil {
			return err
		}
		data, err := c.UIDSearch(q.criteria(), nil).Wait()
		if err != nil {
			if ie, ok := serverRefusal(err); ok {
				return toolErrorf("the server refused the search %s: %s", q, ie.Text)
			}
			return fmt.Errorf("search: %w", err)
		}
		uids := data.AllUIDs()
		if len(uids) == 0 {
			return nil
		}
		slices.Sort(uids)
		if len(uids) > limit {
			uids = uids[len(uids)-limit:] // the newest
		}
		out, err = fetchSummaries(c, folder, imap.UIDSetNum(uids...))
		return err
	})
	if out == nil {
		out = []emailSummary{}
	}
	return out, err
}

// fetchedMessage is one message read by fetchMessages.
type fetchedMessage struct {
	UID          imap.UID
	InternalDate time.Time
	Msg          *mail.Message // nil when nothing could be parsed
}

// fetchMessages fetches (at most size bytes of each, never marking mail as
// seen) and parses the messages in set of the selected mailbox, newest
// (highest UID) first.
func fetchMessages(c *imapclient.Client, set imap.NumSet, size int64) ([]fetchedMessage, error) {
	msgs, err := mail.FetchMessages(c, "", set, mail.ParseOptions{MaxSize: size, MaxBodyText: 16 << 10})
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	out := make([]fetchedMessage, len(msgs))
	for i, m := range msgs {
		out[i] = fetchedMessage{UID: m.UID, InternalDate: m.InternalDate, Msg: m.Message}
	}
	slices.SortFunc(out, func(a, b fetchedMessage) int { return int(int64(b.UID) - int64(a.UID)) })
	return out, nil
}

// fetchSummaries fetches and summarises the messages in set of the
// selected mailbox, newest first.
func fetchSummaries(c *imapclient.Client, mailbox string, set imap.NumSet) ([]emailSummary, error) {
	msgs, err := fetchMessages(c, set, summaryFetchSize)
	if err != nil {
		return nil, err
	}
	out := make([]emailSummary, 0, len(msgs))
	for _, f := range msgs {
		sum := emailSummary{MessageID: mail.EncodeMessageID(mailbox, f.UID)}
		if m := f.Msg; m != nil {
			sum.From = mail.FormatAddresses(m.From)
			sum.To = mail.FormatAddresses(m.To)
			sum.Subject = m.Subject
			sum.Snippet = snippet(m.BodyCleaned)
			if !m.Date.IsZero() {
				sum.Date = m.Date.Format(time.RFC3339)
			}
		}
		if sum.Date == "" && !f.InternalDate.IsZero() {
			sum.Date = f.InternalDate.Format(time.RFC3339)
		}
		out = append(out, sum)
	}
	return out, nil
}

// snippet is the start of a body on one line.
func snippet(body string) string {
	return clip(strings.Join(strings.FieldsFunc(body, unicode.IsSpace), " "), snippetRunes)
}
