package workflow

import (
	"net/mail"
	"strings"
	"unicode"
)

// Match reports whether an email from the sender from (a From header value,
// "Name <a@example.com>" or a bare address) passes the rules:
//
//   - a sender on email_blacklist or whose domain is on domain_blacklist
//     never matches (blacklists win over whitelists);
//   - a non-empty email_whitelist must contain the sender, and a non-empty
//     domain_whitelist must contain its domain (both, when both are set);
//   - addresses and domains compare case-insensitively;
//   - a domain entry matches that exact domain only: "example.com" does not
//     match "mail.example.com" (list subdomains separately).
//
// A sender whose address cannot be read matches only when no whitelist is set.
func (r FilterRules) Match(from string) bool {
	addr := senderAddress(from)
	domain := ""
	if at := strings.LastIndexByte(addr, '@'); at >= 0 {
		domain = addr[at+1:]
	}
	if addr != "" && containsFold(r.EmailBlacklist, addr) {
		return false
	}
	if domain != "" && containsFold(r.DomainBlacklist, domain) {
		return false
	}
	if hasEntries(r.EmailWhitelist) && (addr == "" || !containsFold(r.EmailWhitelist, addr)) {
		return false
	}
	if hasEntries(r.DomainWhitelist) && (domain == "" || !containsFold(r.DomainWhitelist, domain)) {
		return false
	}
	return true
}

// senderAddress extracts the lower-cased address from a From value: by
// net/mail, else leniently (the text between the last '<' and the next '>',
// or the whole value), for headers net/mail refuses (unquoted specials in
// the display name, say). A value without an '@', or with white space in
// the address, has no address.
func senderAddress(from string) string {
	from = strings.TrimSpace(from)
	if from == "" {
		return ""
	}
	if a, err := mail.ParseAddress(from); err == nil {
		addr := strings.ToLower(a.Address)
		if addr != strings.TrimSpace(addr) {
			return "" // a quoted local part of spaces (" "@x): no trimmed rule entry can name it
		}
		return addr
	}
	s := from
	if lt := strings.LastIndexByte(s, '<'); lt >= 0 {
		s = s[lt+1:]
		if gt := strings.IndexByte(s, '>'); gt >= 0 {
			s = s[:gt]
		}
	}
	s = strings.TrimSpace(strings.Trim(strings.TrimSpace(s), `"'`))
	// Any white space left (a form feed, say) would make an address that no
	// rule can name: rule entries are trimmed.
	if strings.IndexFunc(s, unicode.IsSpace) >= 0 || !strings.Contains(s, "@") {
		return ""
	}
	return strings.ToLower(s)
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(strings.TrimSpace(v), s) {
			return true
		}
	}
	return false
}

// hasEntries reports whether list has a non-blank entry (normalised rules
// never hold blank ones; rules built in code might).
func hasEntries(list []string) bool {
	for _, v := range list {
		if strings.TrimSpace(v) != "" {
			return true
		}
	}
	return false
}
