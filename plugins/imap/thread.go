package imap

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/mail"
)

// Similar-thread limits.
const (
	defaultTopK = 5
	maxTopK     = 20
	// maxQueryText bounds the thread text sent as the search query (the
	// host embeds it), in bytes.
	maxQueryText = 16 << 10
	// maxExclude bounds the thread ids excluded from the search.
	maxExclude = 100
)

type similarArgs struct {
	MessageID string  `json:"messageId"`
	TopK      flexInt `json:"top_k"`
}

// similarThread is one thread find_similar_threads found.
type similarThread struct {
	ThreadID string  `json:"threadId"`
	Score    float32 `json:"score"`
	Subject  string  `json:"subject"`
	Markdown string  `json:"markdown"`
}

// fetchThread fetches the thread of a message id on c.
func fetchThread(c *imapclient.Client, id string) (*mail.Thread, error) {
	mailbox, uid, err := decodeMessageID(id)
	if err != nil {
		return nil, err
	}
	if _, err := selectMailbox(c, mailbox, false); err != nil {
		return nil, err
	}
	// The context is watched by withConn; FetchThread needs none of its own.
	t, err := mail.FetchThread(context.Background(), c, mailbox, uid, mail.ThreadOptions{})
	if err != nil {
		if errors.Is(err, mail.ErrMessageNotFound) {
			return nil, notFound(id, mailbox, uid)
		}
		if ie, ok := serverRefusal(err); ok {
			return nil, toolErrorf("cannot read the thread of %q (server said: %s)", id, ie.Text)
		}
		return nil, err
	}
	return t, nil
}

// getThread is get_thread_for_message_id.
func (s *server) getThread(ctx context.Context, cl call, args messageArgs) (string, error) {
	if _, _, err := decodeMessageID(args.MessageID); err != nil {
		return "", err
	}
	var md string
	err := s.withConn(ctx, cl, func(c *imapclient.Client, _ accountSettings) error {
		t, err := fetchThread(c, args.MessageID)
		if err != nil {
			return err
		}
		md = mail.ThreadMarkdown(t)
		return nil
	})
	return md, err
}

// threadIDs are the ids the vector collection may know the thread under,
// the most likely first. The inbox initialiser (daemon/jobs) names a thread
// by its root: the oldest message's first References entry, else its
// In-Reply-To, else its own Message-ID; that id comes first. The
// Message-IDs and references of every other message follow, so that the
// thread is left out even when this mailbox holds only part of it (the
// initialiser may have seen an older root in another folder).
func threadIDs(t *mail.Thread) []string {
	var ids []string
	seen := map[string]bool{}
	add := func(id string) {
		id = strings.Trim(strings.TrimSpace(id), "<>")
		if id != "" && !seen[id] && len(ids) < maxExclude {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if len(t.Messages) > 0 {
		first := t.Messages[0]
		switch {
		case len(first.References) > 0 && first.References[0] != "":
			add(first.References[0])
		case len(first.InReplyTo) > 0 && first.InReplyTo[0] != "":
			add(first.InReplyTo[0])
		}
	}
	for _, m := range t.Messages {
		add(m.MessageID)
	}
	for _, m := range t.Messages {
		for _, r := range m.References {
			add(r)
		}
		for _, r := range m.InReplyTo {
			add(r)
		}
	}
	return ids
}

// findSimilar is find_similar_threads: the source thread's markdown is the
// query of a vector search on the user's collection (through the host),
// which leaves the source thread out; the search asks for
// max(3*top_k, 10) hits, as the original did, of which the best top_k are
// returned.
func (s *server) findSimilar(ctx context.Context, cl call, args similarArgs) ([]similarThread, error) {
	if _, _, err := decodeMessageID(args.MessageID); err != nil {
		return nil, err
	}
	topK, err := intArg("top_k", args.TopK, defaultTopK, maxTopK)
	if err != nil {
		return nil, err
	}
	var t *mail.Thread
	err = s.withConn(ctx, cl, func(c *imapclient.Client, _ accountSettings) error {
		var err error
		t, err = fetchThread(c, args.MessageID)
		return err
	})
	if err != nil {
		return nil, err
	}
	query := truncateUTF8(mail.ThreadMarkdown(t), maxQueryText)
	exclude := threadIDs(t)
	hits, err := cl.host.vectorSearch(ctx, query, max(3*topK, 10), exclude)
	if err != nil {
		return nil, fmt.Errorf("imap: vector search: %w", err)
	}
	excluded := map[string]bool{}
	for _, id := range exclude {
		excluded[id] = true
	}
	out := []similarThread{}
	for _, h := range hits {
		if len(out) == topK {
			break
		}
		if excluded[h.ThreadID] {
			continue // the host should have left it out; never show it
		}
		st := similarThread{ThreadID: h.ThreadID, Score: h.Score}
		st.Subject, _ = h.Payload["subject"].(string)
		st.Markdown, _ = h.Payload["thread_markdown"].(string)
		out = append(out, st)
	}
	return out, nil
}

// truncateUTF8 cuts s to at most n bytes at a rune boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
