package jobs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/inboxd/inboxd/daemon/mail"
)

// threadRef is one conversation found in the listed folders: its messages
// (one per Message-ID, oldest first) and where they are.
type threadRef struct {
	id      string
	msgs    []msgRef
	folders []string // every folder holding one of its messages, sorted
	last    time.Time
}

// buildThreads groups the listed messages of several folders into threads
// (mail.BuildThreads over all of them, so that a reply in Sent joins the
// message in INBOX it answers). A message found in two folders (Gmail's All
// Mail holds the Sent messages too) is kept once. Each thread keeps its
// newest maxMsgs messages.
func buildThreads(refs []msgRef, maxMsgs int) []*threadRef {
	headers := make([]mail.Header, len(refs))
	for i, r := range refs {
		h := r.hdr
		h.UID = imap.UID(i + 1) // an index into refs: UIDs of two folders collide
		headers[i] = h
	}
	groups := mail.BuildThreads(headers)
	out := make([]*threadRef, 0, len(groups))
	for _, g := range groups {
		t := &threadRef{}
		seen := map[string]bool{}
		folders := map[string]bool{}
		for _, h := range g {
			r := refs[h.UID-1]
			folders[r.folder] = true
			if id := r.hdr.MessageID; id != "" {
				if seen[id] {
					continue
				}
				seen[id] = true
			}
			t.msgs = append(t.msgs, r)
		}
		if len(t.msgs) > maxMsgs {
			t.msgs = t.msgs[len(t.msgs)-maxMsgs:]
		}
		for f := range folders {
			t.folders = append(t.folders, f)
		}
		sort.Strings(t.folders)
		t.id = threadID(g, refs)
		for _, r := range t.msgs {
			if r.hdr.Date.After(t.last) {
				t.last = r.hdr.Date
			}
		}
		out = append(out, t)
	}
	return out
}

// threadID names a thread the same way whichever of its messages were
// listed: the root Message-ID, which the oldest message carries as its
// first References entry (or In-Reply-To), or as its own Message-ID when it
// is the root. A thread without any id is named by a hash of where its
// first message is.
func threadID(g []mail.Header, refs []msgRef) string {
	for _, h := range g {
		switch {
		case len(h.References) > 0 && h.References[0] != "":
			return h.References[0]
		case len(h.InReplyTo) > 0 && h.InReplyTo[0] != "":
			return h.InReplyTo[0]
		case h.MessageID != "":
			return h.MessageID
		}
	}
	r := refs[g[0].UID-1]
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%s", r.folder, r.uid, r.hdr.Date.UTC().Format(time.RFC3339Nano))))
	return "no-message-id-" + hex.EncodeToString(sum[:12])
}

// selectThreads takes, for each folder in order, the perFolder threads with
// the newest last message among those with a message there; the union is
// returned newest first.
func selectThreads(threads []*threadRef, folders []string, perFolder int) []*threadRef {
	byLast := slices.Clone(threads)
	sort.SliceStable(byLast, func(i, j int) bool {
		if !byLast[i].last.Equal(byLast[j].last) {
			return byLast[i].last.After(byLast[j].last)
		}
		return byLast[i].id < byLast[j].id
	})
	picked := map[*threadRef]bool{}
	for _, f := range folders {
		n := 0
		for _, t := range byLast {
			if n >= perFolder {
				break
			}
			if slices.Contains(t.folders, f) {
				picked[t] = true
				n++
			}
		}
	}
	var out []*threadRef
	for _, t := range byLast {
		if picked[t] {
			out = append(out, t)
		}
	}
	return dedupeIDs(out)
}

// dedupeIDs keeps the first (newest) of threads that ended up with the
// same id (two threads answering one root message that is not listed):
// one point per thread id.
func dedupeIDs(threads []*threadRef) []*threadRef {
	seen := map[string]*threadRef{}
	out := threads[:0:0]
	for _, t := range threads {
		if first, ok := seen[t.id]; ok {
			// Fold the later one's messages into the first.
			first.msgs = mergeRefs(first.msgs, t.msgs)
			for _, f := range t.folders {
				if !slices.Contains(first.folders, f) {
					first.folders = append(first.folders, f)
				}
			}
			sort.Strings(first.folders)
			continue
		}
		seen[t.id] = t
		out = append(out, t)
	}
	return out
}

func mergeRefs(a, b []msgRef) []msgRef {
	out := slices.Clone(a)
	have := map[refKey]bool{}
	for _, r := range a {
		have[r.key()] = true
	}
	for _, r := range b {
		if !have[r.key()] {
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].hdr.Date.Before(out[j].hdr.Date) })
	return out
}

// payloadMessage is one message in a thread's payload.
type payloadMessage struct {
	From        string `json:"from"`
	Date        string `json:"date"`
	BodyCleaned string `json:"body_cleaned"`
	Type        string `json:"type"` // sent | received
}

// threadDoc is a fetched thread, ready to embed and store.
type threadDoc struct {
	id       string
	markdown string
	payload  map[string]any
}

// document renders a thread's fetched messages as its markdown (the text
// embedded) and payload. sent reports whether a message is the user's.
// ok is false when none of its messages could be fetched.
func document(t *threadRef, fetched map[refKey]*mail.ThreadMessage, sent func(r msgRef, m *mail.ThreadMessage) bool) (threadDoc, bool) {
	th := &mail.Thread{Mailbox: t.folders[0], Method: mail.ThreadClient}
	var msgs []payloadMessage
	var types []string
	participants := map[string]bool{}
	var bodies []string
	for _, r := range t.msgs {
		m := fetched[r.key()]
		if m == nil || m.Message == nil {
			continue
		}
		th.Messages = append(th.Messages, m)
		typ := "received"
		if sent(r, m) {
			typ = "sent"
		}
		date := ""
		if !m.Date.IsZero() {
			date = m.Date.UTC().Format(time.RFC3339)
		}
		msgs = append(msgs, payloadMessage{From: mail.FormatAddresses(m.From), Date: date, BodyCleaned: m.BodyCleaned, Type: typ})
		types = append(types, typ)
		for _, list := range [][]mail.Address{m.From, m.To, m.Cc} {
			for _, a := range list {
				if a.Email != "" {
					participants[strings.ToLower(a.Email)] = true
				}
			}
		}
		bodies = append(bodies, m.BodyCleaned)
	}
	if len(th.Messages) == 0 {
		return threadDoc{}, false
	}
	// Reply: a message of the user's after one the user received.
	reply := false
	for i := 1; i < len(types); i++ {
		if types[i] == "sent" && slices.Contains(types[:i], "received") {
			reply = true
			break
		}
	}
	parts := make([]string, 0, len(participants))
	for p := range participants {
		parts = append(parts, p)
	}
	sort.Strings(parts)
	var last time.Time
	for _, m := range th.Messages {
		if m.Date.After(last) {
			last = m.Date
		}
	}
	lastDate := ""
	if !last.IsZero() {
		lastDate = last.UTC().Format(time.RFC3339)
	}
	md := mail.ThreadMarkdown(th)
	return threadDoc{
		id:       t.id,
		markdown: md,
		payload: map[string]any{
			"thread_id":           t.id,
			"thread_markdown":     md,
			"messages":            msgs,
			"language":            detectLanguage(strings.Join(bodies, "\n")),
			"message_count":       len(msgs),
			"subject":             th.Subject(),
			"participants":        parts,
			"last_message_date":   lastDate,
			"folders":             t.folders,
			"contains_user_reply": reply,
		},
	}, true
}
