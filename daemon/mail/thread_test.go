package mail

import (
	"math/rand"
	"reflect"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

func TestBuildThreads(t *testing.T) {
	day := func(d int) time.Time { return time.Date(2024, 1, d, 12, 0, 0, 0, time.UTC) }
	tests := []struct {
		name string
		in   []Header
		want [][]imap.UID
	}{
		{"empty", nil, [][]imap.UID{}},
		{"one", []Header{{UID: 1, MessageID: "a@x", Date: day(1)}}, [][]imap.UID{{1}}},
		{"chain by references", []Header{
			{UID: 1, MessageID: "a@x", Date: day(1)},
			{UID: 2, MessageID: "b@x", InReplyTo: []string{"a@x"}, References: []string{"a@x"}, Date: day(2)},
			{UID: 3, MessageID: "c@x", InReplyTo: []string{"b@x"}, References: []string{"a@x", "b@x"}, Date: day(3)},
		}, [][]imap.UID{{1, 2, 3}}},
		{"in-reply-to only", []Header{
			{UID: 1, MessageID: "a@x", Date: day(1)},
			{UID: 2, MessageID: "b@x", InReplyTo: []string{"a@x"}, Date: day(2)},
		}, [][]imap.UID{{1, 2}}},
		{"two threads", []Header{
			{UID: 1, MessageID: "a@x", Date: day(1)},
			{UID: 2, MessageID: "z@x", Date: day(2)},
			{UID: 3, MessageID: "b@x", References: []string{"a@x"}, Date: day(3)},
			{UID: 4, MessageID: "y@x", References: []string{"z@x"}, Date: day(4)},
		}, [][]imap.UID{{1, 3}, {2, 4}}},
		{"missing parent joins siblings", []Header{
			{UID: 5, MessageID: "b@x", InReplyTo: []string{"gone@x"}, References: []string{"gone@x"}, Date: day(2)},
			{UID: 6, MessageID: "c@x", References: []string{"gone@x"}, Date: day(3)},
			{UID: 7, MessageID: "d@x", Date: day(1)},
		}, [][]imap.UID{{7}, {5, 6}}},
		{"missing middle message", []Header{
			{UID: 1, MessageID: "a@x", Date: day(1)},
			{UID: 3, MessageID: "c@x", References: []string{"a@x", "b@x"}, Date: day(3)},
		}, [][]imap.UID{{1, 3}}},
		{"reply before its parent in the list", []Header{
			{UID: 2, MessageID: "b@x", References: []string{"a@x"}, Date: day(2)},
			{UID: 1, MessageID: "a@x", Date: day(1)},
		}, [][]imap.UID{{1, 2}}},
		{"cycle", []Header{
			{UID: 1, MessageID: "a@x", References: []string{"b@x"}, Date: day(1)},
			{UID: 2, MessageID: "b@x", References: []string{"a@x"}, Date: day(2)},
			{UID: 3, MessageID: "c@x", Date: day(3)},
		}, [][]imap.UID{{1, 2}, {3}}},
		{"self reference", []Header{
			{UID: 1, MessageID: "a@x", References: []string{"a@x"}, InReplyTo: []string{"a@x"}, Date: day(1)},
		}, [][]imap.UID{{1}}},
		{"duplicate message id", []Header{
			{UID: 1, MessageID: "a@x", Date: day(1)},
			{UID: 2, MessageID: "a@x", Date: day(1)},
		}, [][]imap.UID{{1, 2}}},
		{"no ids stand alone", []Header{
			{UID: 1, Date: day(1)},
			{UID: 2, Date: day(1)},
		}, [][]imap.UID{{1}, {2}}},
		{"brackets and spaces normalised", []Header{
			{UID: 1, MessageID: "<a@x>", Date: day(1)},
			{UID: 2, MessageID: "b@x", InReplyTo: []string{" <a@x> "}, Date: day(2)},
		}, [][]imap.UID{{1, 2}}},
		{"ordered by date, not uid", []Header{
			{UID: 9, MessageID: "a@x", Date: day(1)},
			{UID: 3, MessageID: "b@x", References: []string{"a@x"}, Date: day(5)},
			{UID: 4, MessageID: "c@x", References: []string{"a@x"}, Date: day(2)},
		}, [][]imap.UID{{9, 4, 3}}},
		{"equal dates by uid", []Header{
			{UID: 2, MessageID: "b@x", References: []string{"a@x"}, Date: day(1)},
			{UID: 1, MessageID: "a@x", Date: day(1)},
		}, [][]imap.UID{{1, 2}}},
		{"bridge through a later reply", []Header{
			{UID: 1, MessageID: "a@x", Date: day(1)},
			{UID: 2, MessageID: "b@x", Date: day(2)},
			{UID: 3, MessageID: "c@x", References: []string{"a@x", "b@x"}, Date: day(3)},
		}, [][]imap.UID{{1, 2, 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := uidsOf(BuildThreads(tt.in))
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("BuildThreads = %v, want %v", got, tt.want)
			}
			// Any input order gives the same threads.
			r := rand.New(rand.NewSource(1))
			for i := 0; i < 10; i++ {
				shuffled := append([]Header(nil), tt.in...)
				r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
				if got := uidsOf(BuildThreads(shuffled)); !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("shuffled %v: BuildThreads = %v, want %v", shuffled, got, tt.want)
				}
			}
		})
	}
}

func uidsOf(threads [][]Header) [][]imap.UID {
	out := [][]imap.UID{}
	for _, th := range threads {
		var u []imap.UID
		for _, h := range th {
			u = append(u, h.UID)
		}
		out = append(out, u)
	}
	return out
}

func TestBuildThreadsLarge(t *testing.T) {
	// A long chain and many separate messages stay fast (union-find).
	var hs []Header
	for i := 0; i < 20000; i++ {
		h := Header{UID: imap.UID(i + 1), MessageID: string(rune('a'+i%26)) + time.Duration(i).String() + "@x"}
		if i > 0 && i%2 == 0 {
			h.References = []string{hs[i-2].MessageID}
		}
		hs = append(hs, h)
	}
	start := time.Now()
	threads := BuildThreads(hs)
	if len(threads) != 10001 {
		t.Fatalf("%d threads", len(threads))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestMissingAncestors(t *testing.T) {
	thread := []Header{
		{UID: 5, MessageID: "c@x", InReplyTo: []string{"b@x"}, References: []string{"root@x", "a@x", "b@x"}},
	}
	headers := append([]Header{{UID: 1, MessageID: "a@x"}}, thread...)
	got := missingAncestors(thread, headers, 20)
	if want := []string{"b@x", "root@x"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("missingAncestors = %v, want %v", got, want)
	}
	if got := missingAncestors(thread, headers, 1); len(got) != 1 {
		t.Fatalf("limit ignored: %v", got)
	}
}
