package workflow

import (
	"reflect"
	"strings"
	"testing"
)

// fuzzRules reads four rule lists from s: sections separated by "|",
// entries by ",".
func fuzzRules(s string) FilterRules {
	var lists [4][]string
	for i, sec := range strings.SplitN(s, "|", 4) {
		if sec != "" {
			lists[i] = strings.Split(sec, ",")
		}
	}
	return FilterRules{EmailBlacklist: lists[0], DomainBlacklist: lists[1], EmailWhitelist: lists[2], DomainWhitelist: lists[3]}
}

// upperASCII upper-cases ASCII letters only, so that byte offsets and any
// encoded words' charsets stay put.
func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// FuzzFilterRules checks FilterRules.Match against its contract for any
// rules and sender: no rules let everything through; a blacklisted sender
// or domain never matches; whitelisting the sender (and its domain) lets
// it through unless blacklisted; letter case does not matter; and rules
// match the same after normalisation (which is idempotent) as before,
// whenever normalisation accepts them.
//
// Seed corpus: testdata/fuzz/FuzzFilterRules.
func FuzzFilterRules(f *testing.F) {
	f.Fuzz(func(t *testing.T, rulesText, from string) {
		r := fuzzRules(rulesText)
		got := r.Match(from)

		addr := senderAddress(from)
		// (A quoted local part may hold spaces: "a b"@x is "a b@x".)
		if addr != "" && (addr != strings.ToLower(addr) || !strings.Contains(addr, "@") || addr != strings.TrimSpace(addr)) {
			t.Fatalf("sender address %q of %q", addr, from)
		}
		if !(FilterRules{}).Match(from) {
			t.Fatalf("no rules refuse %q", from)
		}
		if r.Match(upperASCII(from)) != got || upperRules(r).Match(from) != got {
			t.Fatalf("case changes the match of %q", from)
		}
		if addr != "" {
			domain := addr[strings.LastIndexByte(addr, '@')+1:]
			black := r
			black.EmailBlacklist = append(append([]string(nil), r.EmailBlacklist...), addr)
			if black.Match(from) {
				t.Fatalf("blacklisted %q matches", addr)
			}
			if domain != "" {
				black = r
				black.DomainBlacklist = append(append([]string(nil), r.DomainBlacklist...), domain)
				if black.Match(from) {
					t.Fatalf("blacklisted domain %q matches", domain)
				}
			}
		}
		if addr != "" && !strings.HasSuffix(addr, "@") {
			domain := addr[strings.LastIndexByte(addr, '@')+1:]
			white := r
			white.EmailWhitelist = append(append([]string(nil), r.EmailWhitelist...), addr)
			white.DomainWhitelist = append(append([]string(nil), r.DomainWhitelist...), domain)
			blacklisted := containsFold(r.EmailBlacklist, addr) || containsFold(r.DomainBlacklist, domain)
			if white.Match(from) == blacklisted {
				t.Fatalf("whitelisted %q: match %v, blacklisted %v", addr, !blacklisted, blacklisted)
			}
		}

		n, err := normalizeRules(r)
		if err != nil {
			if _, ok := err.(*ValidationError); !ok {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		again, err := normalizeRules(n)
		if err != nil || !reflect.DeepEqual(again, n) {
			t.Fatalf("normalisation not idempotent: %+v -> %+v (%v)", n, again, err)
		}
		// A domain rule "@a.com" means "a.com" once normalised; otherwise
		// normalisation only trims, lower-cases and de-duplicates.
		if !strings.Contains(rulesText, "@") || !hasAtDomain(r) {
			if n.Match(from) != got {
				t.Fatalf("normalised rules %+v match %q: %v, before: %v", n, from, !got, got)
			}
		}
	})
}

func upperRules(r FilterRules) FilterRules {
	up := func(l []string) []string {
		var out []string
		for _, v := range l {
			out = append(out, upperASCII(v))
		}
		return out
	}
	return FilterRules{up(r.EmailBlacklist), up(r.DomainBlacklist), up(r.EmailWhitelist), up(r.DomainWhitelist)}
}

func hasAtDomain(r FilterRules) bool {
	for _, v := range append(append([]string(nil), r.DomainBlacklist...), r.DomainWhitelist...) {
		if strings.HasPrefix(strings.TrimSpace(v), "@") {
			return true
		}
	}
	return false
}
