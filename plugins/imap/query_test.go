package imap

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

func day(s string) time.Time {
	d, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return d
}

func TestParseQuery(t *testing.T) {
	tests := []struct {
		name  string
		query string
		want  searchQuery
		err   string // substring of the error; "" for success
	}{
		{name: "free word", query: "invoice", want: searchQuery{Text: []string{"invoice"}}},
		{name: "free words are separate terms", query: "late  invoice\tpayment", want: searchQuery{Text: []string{"late", "invoice", "payment"}}},
		{name: "phrase", query: `"late payment" fee`, want: searchQuery{Text: []string{"late payment", "fee"}}},
		{name: "operators", query: "from:alice@example.com to:bob cc:carol subject:kickoff body:monday",
			want: searchQuery{From: []string{"alice@example.com"}, To: []string{"bob"}, Cc: []string{"carol"}, Subject: []string{"kickoff"}, Body: []string{"monday"}}},
		{name: "operator case", query: "FROM:Alice Subject:Hi", want: searchQuery{From: []string{"Alice"}, Subject: []string{"Hi"}}},
		{name: "quoted value", query: `subject:"project kickoff" from:alice`, want: searchQuery{Subject: []string{"project kickoff"}, From: []string{"alice"}}},
		{name: "escapes", query: `subject:"say \"hi\" \\o/"`, want: searchQuery{Subject: []string{`say "hi" \o/`}}},
		{name: "dates", query: "since:2024-01-02 before:2024/02/01", want: searchQuery{Since: day("2024-01-02"), Before: day("2024-02-01")}},
		{name: "after is since", query: "after:2024-01-02 x", want: searchQuery{Since: day("2024-01-02"), Text: []string{"x"}}},
		{name: "dates intersect", query: "since:2024-01-02 since:2024-01-05 before:2024-03-01 before:2024-02-01",
			want: searchQuery{Since: day("2024-01-05"), Before: day("2024-02-01")}},
		{name: "unknown operator is text", query: "re:hello https://example.com/a?b=c", want: searchQuery{Text: []string{"re:hello", "https://example.com/a?b=c"}}},
		{name: "quoted operator is text", query: `"from:alice"`, want: searchQuery{Text: []string{"from:alice"}}},
		{name: "unicode", query: "subject:Grüße from:Zoë", want: searchQuery{Subject: []string{"Grüße"}, From: []string{"Zoë"}}},
		{name: "empty phrase ignored", query: `"" x`, want: searchQuery{Text: []string{"x"}}},
		{name: "line breaks separate terms", query: "a\r\nb", want: searchQuery{Text: []string{"a", "b"}}},

		{name: "empty", query: "   ", err: "query is empty"},
		{name: "missing value", query: "from: alice", err: "from: needs a value"},
		{name: "empty quoted value", query: `subject:""`, err: "subject: needs a value"},
		{name: "bad date", query: "since:yesterday", err: `since: "yesterday" is not a date`},
		{name: "impossible range", query: "since:2024-02-01 before:2024-02-01", err: "no mail can match"},
		{name: "unterminated", query: `subject:"open`, err: "unterminated quote"},
		{name: "control characters", query: "a\x00b", err: "control characters"},
		{name: "invalid UTF-8", query: "a\xffb", err: "not valid UTF-8"},
		{name: "too long", query: strings.Repeat("a", maxQueryLen+1), err: "too long"},
		{name: "too many terms", query: strings.Repeat("a ", maxQueryTerms+1), err: "too many terms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseQuery(tt.query)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseQuery(%q) = %+v, %v; want error containing %q", tt.query, got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseQuery(%q): %v", tt.query, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parseQuery(%q) = %+v, want %+v", tt.query, got, tt.want)
			}
			again, err := parseQuery(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("round trip of %q via %q = %+v, %v", tt.query, got.String(), again, err)
			}
		})
	}
}

func TestQueryCriteria(t *testing.T) {
	q, err := parseQuery(`from:alice to:bob cc:carol subject:"kick off" body:monday since:2024-01-02 before:2024-02-01 invoice`)
	if err != nil {
		t.Fatal(err)
	}
	want := &imap.SearchCriteria{
		SentSince:  day("2024-01-02"),
		SentBefore: day("2024-02-01"),
		Header: []imap.SearchCriteriaHeaderField{
			{Key: "From", Value: "alice"}, {Key: "To", Value: "bob"}, {Key: "Cc", Value: "carol"}, {Key: "Subject", Value: "kick off"},
		},
		Body: []string{"monday"},
		Text: []string{"invoice"},
	}
	if got := q.criteria(); !reflect.DeepEqual(got, want) {
		t.Fatalf("criteria = %+v, want %+v", got, want)
	}
}

// FuzzParseQuery: the parser never panics, accepts only bounded, clean
// queries, and what it accepts survives a round trip through its
// canonical form.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"invoice", `from:alice subject:"a b" since:2024-01-02 before:2024-02-01 "x y"`, `subject:"\"\\"`,
		"from:", `"`, "since:2024/1/2", "re:x http://a:b", "a\tb\nc", "FROM:Zoë", `"" ""`, `to:"a\"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := parseQuery(s)
		if err != nil {
			return
		}
		if q.empty() {
			t.Fatalf("parseQuery(%q) accepted an empty query", s)
		}
		for _, list := range [][]string{q.From, q.To, q.Cc, q.Subject, q.Body, q.Text} {
			for _, v := range list {
				if v == "" || strings.ContainsAny(v, "\r\n\t\x00") {
					t.Fatalf("parseQuery(%q): bad value %q", s, v)
				}
			}
		}
		canon := q.String()
		if len(canon) > maxQueryLen {
			return // quoting can lengthen a query past the limit it was under
		}
		again, err := parseQuery(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, s, err)
		}
		if !reflect.DeepEqual(again, q) {
			t.Fatalf("round trip of %q via %q: %+v != %+v", s, canon, again, q)
		}
		_ = q.criteria()
	})
}
