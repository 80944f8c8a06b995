package imap

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
)

// Query limits.
const (
	maxQueryLen   = 1000 // bytes
	maxQueryTerms = 32
)

// searchQuery is a parsed search_emails query. Every list is ANDed: a
// message must match every term.
type searchQuery struct {
	From    []string
	To      []string
	Cc      []string
	Subject []string
	Body    []string
	Text    []string  // free text: header fields or body (IMAP TEXT)
	Since   time.Time // sent on or after this day (UTC midnight); zero: unset
	Before  time.Time // sent before this day; zero: unset
}

// parseQuery parses the search_emails query syntax:
//
//	from:alice to:bob cc:carol subject:"project kickoff" body:invoice
//	since:2024-01-02 before:2024-02-01 free text "an exact phrase"
//
// Operators (case-insensitive) are from, to, cc, subject, body, since
// (alias after) and before; a value may be quoted ("...", with \" and \\
// escapes). since: is inclusive, before: exclusive, both days of the Date
// header (IMAP SENTSINCE / SENTBEFORE). Any other word or quoted phrase is
// free text, matched anywhere in the headers or body (IMAP TEXT); a word
// with an unknown operator ("re:foo", a URL) is free text too. Matching is
// the server's: substrings, usually case-insensitive.
func parseQuery(s string) (searchQuery, error) {
	var q searchQuery
	if len(s) > maxQueryLen {
		return q, fmt.Errorf("query is too long (%d bytes, at most %d)", len(s), maxQueryLen)
	}
	if !utf8.ValidString(s) {
		return q, errors.New("query is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) && !unicode.IsSpace(r) {
			return q, errors.New("query contains control characters")
		}
	}
	// Tabs and line breaks separate terms like spaces, and never reach a
	// value (IMAP would need a literal for them).
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	terms := 0
	p := queryScanner{s: s}
	for {
		p.skipSpace()
		if p.done() {
			break
		}
		if terms++; terms > maxQueryTerms {
			return q, fmt.Errorf("query has too many terms (at most %d)", maxQueryTerms)
		}
		if p.peek() == '"' {
			v, err := p.quoted()
			if err != nil {
				return q, err
			}
			if v = strings.TrimSpace(v); v != "" {
				q.Text = append(q.Text, v)
			}
			continue
		}
		start := p.i
		key, hasKey := p.operator()
		if !hasKey {
			p.i = start
			q.Text = append(q.Text, p.word())
			continue
		}
		var v string
		if !p.done() && p.peek() == '"' {
			var err error
			if v, err = p.quoted(); err != nil {
				return q, err
			}
			v = strings.TrimSpace(v)
		} else {
			v = p.word()
		}
		if v == "" {
			return q, fmt.Errorf("%s: needs a value, e.g. %s", key, operatorExample(key))
		}
		if err := q.add(key, v); err != nil {
			return q, err
		}
	}
	if !q.Since.IsZero() && !q.Before.IsZero() && !q.Since.Before(q.Before) {
		return q, fmt.Errorf("since:%s is not before before:%s: no mail can match", q.Since.Format(time.DateOnly), q.Before.Format(time.DateOnly))
	}
	if q.empty() {
		return q, errors.New("query is empty: give free text or operators such as from:alice subject:invoice since:2024-01-02")
	}
	return q, nil
}

func (q *searchQuery) add(key, v string) error {
	switch key {
	case "from":
		q.From = append(q.From, v)
	case "to":
		q.To = append(q.To, v)
	case "cc":
		q.Cc = append(q.Cc, v)
	case "subject":
		q.Subject = append(q.Subject, v)
	case "body":
		q.Body = append(q.Body, v)
	case "since", "after", "before":
		d, err := parseQueryDate(v)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if key == "before" {
			if q.Before.IsZero() || d.Before(q.Before) {
				q.Before = d
			}
		} else if q.Since.IsZero() || d.After(q.Since) {
			q.Since = d
		}
	}
	return nil
}

func parseQueryDate(v string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02", "2006/01/02"} {
		if d, err := time.Parse(layout, v); err == nil {
			return d, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date: use YYYY-MM-DD, e.g. 2024-01-02", clip(v, 40))
}

func operatorExample(key string) string {
	switch key {
	case "since", "after", "before":
		return key + ":2024-01-02"
	case "subject":
		return `subject:"quarterly report"`
	}
	return key + ":alice@example.com"
}

func (q searchQuery) empty() bool {
	return len(q.From)+len(q.To)+len(q.Cc)+len(q.Subject)+len(q.Body)+len(q.Text) == 0 &&
		q.Since.IsZero() && q.Before.IsZero()
}

// String is the query in canonical form (operators in a fixed order, every
// value quoted), which parses back to the same query.
func (q searchQuery) String() string {
	var parts []string
	for _, f := range []struct {
		key    string
		values []string
	}{{"from", q.From}, {"to", q.To}, {"cc", q.Cc}, {"subject", q.Subject}, {"body", q.Body}} {
		for _, v := range f.values {
			parts = append(parts, f.key+":"+quoteQueryValue(v))
		}
	}
	if !q.Since.IsZero() {
		parts = append(parts, "since:"+q.Since.Format(time.DateOnly))
	}
	if !q.Before.IsZero() {
		parts = append(parts, "before:"+q.Before.Format(time.DateOnly))
	}
	for _, v := range q.Text {
		parts = append(parts, quoteQueryValue(v))
	}
	return strings.Join(parts, " ")
}

func quoteQueryValue(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(v) + `"`
}

// criteria is the query as an IMAP SEARCH.
func (q searchQuery) criteria() *imap.SearchCriteria {
	c := &imap.SearchCriteria{Body: q.Body, Text: q.Text, SentSince: q.Since, SentBefore: q.Before}
	for _, f := range []struct {
		key    string
		values []string
	}{{"From", q.From}, {"To", q.To}, {"Cc", q.Cc}, {"Subject", q.Subject}} {
		for _, v := range f.values {
			c.Header = append(c.Header, imap.SearchCriteriaHeaderField{Key: f.key, Value: v})
		}
	}
	return c
}

// queryScanner walks a query string.
type queryScanner struct {
	s string
	i int
}

func (p *queryScanner) done() bool { return p.i >= len(p.s) }
func (p *queryScanner) peek() byte { return p.s[p.i] }

func (p *queryScanner) skipSpace() {
	for !p.done() {
		r, n := utf8.DecodeRuneInString(p.s[p.i:])
		if !unicode.IsSpace(r) {
			return
		}
		p.i += n
	}
}

// word reads up to the next space.
func (p *queryScanner) word() string {
	start := p.i
	for !p.done() {
		r, n := utf8.DecodeRuneInString(p.s[p.i:])
		if unicode.IsSpace(r) {
			break
		}
		p.i += n
	}
	return p.s[start:p.i]
}

// operator reads "key:" when the word at the cursor starts with a known
// operator, and reports it lower-cased.
func (p *queryScanner) operator() (string, bool) {
	j := strings.IndexByte(p.s[p.i:], ':')
	if j <= 0 {
		return "", false
	}
	key := strings.ToLower(p.s[p.i : p.i+j])
	switch key {
	case "from", "to", "cc", "subject", "body", "since", "after", "before":
		p.i += j + 1
		return key, true
	}
	return "", false
}

// quoted reads a "..." string with \" and \\ escapes.
func (p *queryScanner) quoted() (string, error) {
	p.i++ // the opening quote
	var b strings.Builder
	for !p.done() {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c == '\\' && p.i+1 < len(p.s) && (p.s[p.i+1] == '"' || p.s[p.i+1] == '\\'):
			b.WriteByte(p.s[p.i+1])
			p.i += 2
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return "", errors.New("query has an unterminated quote")
}
