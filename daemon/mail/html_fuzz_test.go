package mail

import (
	"regexp"
	"strings"
	"testing"
)

// completeTag is markup that HTMLToText must never let through as text. (A
// '>' in quotes, as in an unterminated `<a title='>'`, does not end a tag:
// such an unterminated tag is text.)
var completeTag = regexp.MustCompile(`(?i)</?[a-z][^<>'"]*>`)

// FuzzHTMLToTextMarkup checks what FuzzHTMLToText does not: the content of
// <script> and <style> never shows, whatever it holds; no tag survives into
// the text; and text without markup comes out as its words.
//
// "No tag" holds for input in which every '<' starts markup that ends: a
// stray '<' ("<<b>b>"), an unterminated tag ("<a" at the end), an entity
// ("&lt;b>") or CDATA is text that may spell a tag, as it does in a browser.
//
// Seed corpus: testdata/fuzz/FuzzHTMLToTextMarkup.
func FuzzHTMLToTextMarkup(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		// HTMLToText drops invisible characters first, so "</scr\x05ipt" ends
		// a script there: the closing-tag check sees what it sees.
		lower := strings.ToLower(stripInvisible(s))
		for _, el := range []string{"script", "style"} {
			if strings.Contains(lower, "</"+el) {
				continue
			}
			if out := HTMLToText("<" + el + ">" + s + "</" + el + ">ok"); out != "ok" {
				t.Fatalf("%s content shown: %q -> %q", el, s, out)
			}
			// Unclosed, it swallows the rest.
			if out := HTMLToText("ok<" + el + " type=x>" + s); out != "ok" {
				t.Fatalf("unclosed %s content shown: %q -> %q", el, s, out)
			}
		}

		out := HTMLToText(s)
		if allMarkup(s) && !strings.Contains(s, "&") && !strings.Contains(lower, "cdata") {
			if tag := completeTag.FindString(out); tag != "" {
				t.Fatalf("tag %q in the text of %q: %q", tag, s, out)
			}
		}
		if !strings.ContainsAny(s, "<&") {
			want := strings.Join(strings.FieldsFunc(stripInvisible(s), isTextSpace), " ")
			if got := strings.Join(strings.FieldsFunc(out, isTextSpace), " "); got != want {
				t.Fatalf("text %q came out as %q", s, out)
			}
		}
	})
}

// allMarkup reports whether every '<' of s starts markup that ends: a tag
// ("<a", "</a"), a comment or declaration ("<!", "<?"), with a '>' before
// the next '<'.
func allMarkup(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '<' {
			continue
		}
		rest := s[i+1:]
		if j := strings.IndexAny(rest, "<>"); j < 0 || rest[j] != '>' {
			return false
		}
		if strings.HasPrefix(rest, "!") || strings.HasPrefix(rest, "?") {
			continue
		}
		rest = strings.TrimPrefix(rest, "/")
		if rest == "" || !isASCIILetter(rest[0]) {
			return false
		}
	}
	return true
}
