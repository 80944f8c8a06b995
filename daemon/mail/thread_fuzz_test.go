package mail

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// fuzzHeaders reads one message a line: "MESSAGE-ID IN-REPLY-TO REFS...",
// fields separated by spaces, lists by commas (so "<a@x>,b" is two ids).
// UIDs are the line numbers; the date comes from the line's length, so that
// dates tie often.
func fuzzHeaders(s string) []Header {
	lines := strings.Split(s, "\n")
	if len(lines) > 200 {
		lines = lines[:200]
	}
	day := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var out []Header
	for i, line := range lines {
		f := strings.Split(line, " ")
		h := Header{UID: imap.UID(i + 1), MessageID: f[0], Date: day.Add(time.Duration(len(line)%5) * time.Hour)}
		if len(f) > 1 {
			h.InReplyTo = strings.Split(f[1], ",")
		}
		for _, r := range f[min(2, len(f)):] {
			h.References = append(h.References, strings.Split(r, ",")...)
		}
		out = append(out, h)
	}
	return out
}

// headerIDs are the normalised ids a header names (its own and referenced).
func headerIDs(h Header) []string {
	var ids []string
	for _, id := range append(append([]string{h.MessageID}, h.InReplyTo...), h.References...) {
		if id = normalizeMsgID(id); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// FuzzBuildThreads checks BuildThreads against its contract: every message
// is in exactly one thread; the threads are exactly the groups of messages
// linked by a chain of shared ids (computed here independently); threads
// and their messages are ordered; and the input order does not matter.
//
// Seed corpus: testdata/fuzz/FuzzBuildThreads.
func FuzzBuildThreads(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		in := fuzzHeaders(s)
		threads := BuildThreads(in)

		// Exactly once each.
		where := map[imap.UID]int{}
		for ti, th := range threads {
			if len(th) == 0 {
				t.Fatalf("thread %d is empty", ti)
			}
			for _, h := range th {
				if _, dup := where[h.UID]; dup {
					t.Fatalf("UID %d in two threads", h.UID)
				}
				where[h.UID] = ti
			}
		}
		if len(where) != len(in) {
			t.Fatalf("%d messages in, %d in threads", len(in), len(where))
		}

		// Linked messages share a thread; unlinked ones do not. The
		// reference: a flood fill over "names a common id".
		comp := make([]int, len(in))
		for i := range comp {
			comp[i] = -1
		}
		for i := range in {
			if comp[i] >= 0 {
				continue
			}
			comp[i] = i
			queue := []int{i}
			for len(queue) > 0 {
				a := queue[0]
				queue = queue[1:]
				for b := range in {
					if comp[b] < 0 && sharesID(in[a], in[b]) {
						comp[b] = i
						queue = append(queue, b)
					}
				}
			}
		}
		for a := range in {
			for b := a + 1; b < len(in); b++ {
				same := where[in[a].UID] == where[in[b].UID]
				if same != (comp[a] == comp[b]) {
					t.Fatalf("UIDs %d and %d: same thread %v, linked %v", in[a].UID, in[b].UID, same, comp[a] == comp[b])
				}
			}
		}

		// Ordered: messages by date then UID, threads by their first.
		for ti, th := range threads {
			if !slices.IsSortedFunc(th, cmpHeader) {
				t.Fatalf("thread %d is not in date order", ti)
			}
			if ti > 0 && !headerLess(threads[ti-1][0], th[0]) {
				t.Fatalf("threads %d and %d are not in order", ti-1, ti)
			}
		}

		// Any input order gives the same result.
		rev := slices.Clone(in)
		slices.Reverse(rev)
		if again := BuildThreads(rev); !reflect.DeepEqual(again, threads) {
			t.Fatalf("reversed input gives other threads")
		}
	})
}

func sharesID(a, b Header) bool {
	for _, x := range headerIDs(a) {
		if slices.Contains(headerIDs(b), x) {
			return true
		}
	}
	return false
}

func cmpHeader(a, b Header) int {
	switch {
	case headerLess(a, b):
		return -1
	case headerLess(b, a):
		return 1
	}
	return 0
}

// FuzzParseThreadHeader: the threading fields read from any raw header are
// clean ids (no brackets, white space or control characters, valid UTF-8)
// that BuildThreads links: a message naming one of them joins the thread.
//
// Seed corpus: testdata/fuzz/FuzzParseThreadHeader.
func FuzzParseThreadHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw []byte) {
		h := Header{UID: 1}
		parseThreadHeader(&h, raw)
		ids := append(append([]string{h.MessageID}, h.InReplyTo...), h.References...)
		if len(h.References) > maxMsgIDs {
			t.Fatalf("%d references", len(h.References))
		}
		for i, id := range ids {
			if i > 0 && id == "" {
				t.Fatalf("empty id in a list: %q", ids)
			}
			if id != normalizeMsgID(id) || id != clean(id) {
				t.Fatalf("id %q is not clean", id)
			}
		}
		for _, id := range ids[1:] {
			other := Header{UID: 2, MessageID: "<" + id + ">"}
			if th := BuildThreads([]Header{h, other}); len(th) != 1 {
				t.Fatalf("a message with id %q does not join the thread of %+v", id, h)
			}
		}
	})
}
