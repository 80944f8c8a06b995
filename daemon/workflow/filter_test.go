package workflow

import "testing"

func TestFilterRulesMatch(t *testing.T) {
	cases := []struct {
		name  string
		rules FilterRules
		from  string
		want  bool
	}{
		{"no rules", FilterRules{}, "ann@example.com", true},
		{"no rules, no sender", FilterRules{}, "", true},
		{"display name form", FilterRules{EmailWhitelist: []string{"ann@example.com"}}, `"Ann B." <Ann@Example.COM>`, true},
		{"email whitelist miss", FilterRules{EmailWhitelist: []string{"ann@example.com"}}, "bob@example.com", false},
		{"email whitelist case-insensitive", FilterRules{EmailWhitelist: []string{"ANN@example.com"}}, "ann@EXAMPLE.com", true},
		{"domain whitelist", FilterRules{DomainWhitelist: []string{"example.com"}}, "Bob <bob@EXAMPLE.com>", true},
		{"domain whitelist miss", FilterRules{DomainWhitelist: []string{"example.com"}}, "bob@example.org", false},
		{"subdomain does not match", FilterRules{DomainWhitelist: []string{"example.com"}}, "bob@mail.example.com", false},
		{"parent domain does not match", FilterRules{DomainWhitelist: []string{"mail.example.com"}}, "bob@example.com", false},
		{"email blacklist", FilterRules{EmailBlacklist: []string{"spam@example.com"}}, "Spam <SPAM@example.com>", false},
		{"domain blacklist", FilterRules{DomainBlacklist: []string{"spam.com"}}, "x@spam.com", false},
		{"blacklist wins over whitelist", FilterRules{EmailWhitelist: []string{"x@spam.com"}, DomainBlacklist: []string{"spam.com"}}, "x@spam.com", false},
		{"both whitelists must match", FilterRules{EmailWhitelist: []string{"ann@a.com"}, DomainWhitelist: []string{"b.com"}}, "ann@a.com", false},
		{"both whitelists match", FilterRules{EmailWhitelist: []string{"ann@a.com", "bob@b.com"}, DomainWhitelist: []string{"b.com"}}, "bob@b.com", true},
		{"blank whitelist entries ignored", FilterRules{EmailWhitelist: []string{"", " "}}, "ann@a.com", true},
		{"unparseable sender with whitelist", FilterRules{DomainWhitelist: []string{"a.com"}}, "undisclosed-recipients:;", false},
		{"unparseable sender without whitelist", FilterRules{DomainBlacklist: []string{"a.com"}}, "garbage", true},
		{"empty sender with whitelist", FilterRules{EmailWhitelist: []string{"a@a.com"}}, "", false},
		{"lenient: unquoted specials in name", FilterRules{EmailWhitelist: []string{"ann@a.com"}}, "Ann, Sales (EU) <ann@a.com>", true},
		{"lenient: bad name, blacklisted", FilterRules{EmailBlacklist: []string{"ann@a.com"}}, "Ann [x] <ANN@a.com>", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.rules.Match(c.from); got != c.want {
				t.Errorf("Match(%q) = %v, want %v (address %q)", c.from, got, c.want, senderAddress(c.from))
			}
		})
	}
}
