package imap

import (
	"strings"
	"testing"
	"time"
)

func TestRenderMarkdown(t *testing.T) {
	tests := []struct {
		name, md, want string
	}{
		{"paragraph", "Hello Bob,", "<p>Hello Bob,</p>\n"},
		{"paragraphs and line breaks", "Hi,\nthanks.\n\nBest\r\nAlice", "<p>Hi,<br>\nthanks.</p>\n<p>Best<br>\nAlice</p>\n"},
		{"escaping", `a < b & "c" > d <script>x</script>`, "<p>a &lt; b &amp; &#34;c&#34; &gt; d &lt;script&gt;x&lt;/script&gt;</p>\n"},
		{"bold", "**important** and __also__", "<p><strong>important</strong> and <strong>also</strong></p>\n"},
		{"emphasis", "*really* and _truly_", "<p><em>really</em> and <em>truly</em></p>\n"},
		{"nested", "**bold *and em***", "<p><strong>bold <em>and em</em></strong></p>\n"},
		{"snake_case stays", "use my_var_name here", "<p>use my_var_name here</p>\n"},
		{"lone star", "2 * 3 = 6", "<p>2 * 3 = 6</p>\n"},
		{"unclosed", "**not closed", "<p>**not closed</p>\n"},
		{"escaped marker", `\*not em\*`, "<p>*not em*</p>\n"},
		{"code", "run `a<b`", "<p>run <code>a&lt;b</code></p>\n"},
		{"link", "see [the docs](https://example.com/a?b=1&c=2)", `<p>see <a href="https://example.com/a?b=1&amp;c=2">the docs</a></p>` + "\n"},
		{"mailto link", "[mail me](mailto:a@example.com)", `<p><a href="mailto:a@example.com">mail me</a></p>` + "\n"},
		{"unsafe link is text", "[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>\n"},
		{"link with quote is not a link", `[x](https://a.example/"onmouseover=)`, `<p>[x](<a href="https://a.example/">https://a.example/</a>&#34;onmouseover=)</p>` + "\n"},
		{"bare url", "Visit https://example.com/path.", `<p>Visit <a href="https://example.com/path">https://example.com/path</a>.</p>` + "\n"},
		{"no link inside link", "[https://a.example](https://a.example)", `<p><a href="https://a.example">https://a.example</a></p>` + "\n"},
		{"bullets", "Items:\n- one\n- **two**\n* three", "<p>Items:</p>\n<ul>\n<li>one</li>\n<li><strong>two</strong></li>\n<li>three</li>\n</ul>\n"},
		{"numbered", "1. first\n2. second\n\n3. third", "<ol>\n<li>first</li>\n<li>second</li>\n<li>third</li>\n</ol>\n"},
		{"numbered start", "3) c\n4) d", "<ol start=\"3\">\n<li>c</li>\n<li>d</li>\n</ol>\n"},
		{"item continuation", "- one\n  more\n- two", "<ul>\n<li>one<br>\nmore</li>\n<li>two</li>\n</ul>\n"},
		{"heading", "## Plan ##\ntext", "<h2>Plan</h2>\n<p>text</p>\n"},
		{"not a heading", "#hashtag", "<p>#hashtag</p>\n"},
		{"rule", "a\n\n---\n\nb", "<p>a</p>\n<hr>\n<p>b</p>\n"},
		{"signature delimiter is text", "-- \nAlice", "<p>--<br>\nAlice</p>\n"},
		{"quote", "> quoted\n> **text**\n\nreply", "<blockquote>\n<p>quoted<br>\n<strong>text</strong></p>\n</blockquote>\n<p>reply</p>\n"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := renderMarkdown(tt.md); got != tt.want {
				t.Errorf("renderMarkdown(%q)\n got %q\nwant %q", tt.md, got, tt.want)
			}
		})
	}
}

func TestHTMLDocumentSignature(t *testing.T) {
	got := htmlDocument("<p>Hi</p>\n", "Alice <CEO>\nACME & Co")
	for _, want := range []string{"<p>Hi</p>", "-- <br>", "Alice &lt;CEO&gt;<br>\nACME &amp; Co", `<meta charset="utf-8">`} {
		if !strings.Contains(got, want) {
			t.Errorf("document lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(htmlDocument("x", ""), "signature") {
		t.Error("a document without signature has a signature block")
	}
}

// TestRenderMarkdownHostile: inputs built to make a naive renderer slow
// (unclosed markers everywhere, deep quotes) render quickly and never let
// markup through.
func TestRenderMarkdownHostile(t *testing.T) {
	for name, md := range map[string]string{
		"stars":       strings.Repeat("*", maxDraftBody),
		"star words":  strings.Repeat("*a ", maxDraftBody/3),
		"underscores": strings.Repeat("_a", maxDraftBody/2),
		"brackets":    strings.Repeat("[a](", maxDraftBody/4),
		"quotes":      strings.Repeat(">", 5000) + " x",
		"html":        strings.Repeat("<b onclick=x>", 1000),
		"backticks":   strings.Repeat("`", maxDraftBody),
	} {
		start := time.Now()
		out := renderMarkdown(md)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: took %v", name, d)
		} else {
			t.Logf("%s: %v", name, d)
		}
		if strings.Contains(out, "<b ") || strings.Contains(out, "onclick=x>") {
			t.Errorf("%s: markup leaked", name)
		}
	}
}

func FuzzRenderMarkdown(f *testing.F) {
	for _, s := range []string{"**a** *b* [c](https://d) `e`", "- a\n- b\n\n1. c", "> q\n> > r", "<script>", "_a_b_", "[x](javascript:y)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, md string) {
		out := renderMarkdown(md)
		// Every tag in the output is one the renderer makes.
		for rest := out; ; {
			i := strings.IndexByte(rest, '<')
			if i < 0 {
				break
			}
			rest = rest[i+1:]
			ok := false
			for _, tag := range []string{"p>", "/p>", "br>", "strong>", "/strong>", "em>", "/em>", "code>", "/code>",
				`a href="`, "/a>", "ul>", "/ul>", "ol>", "ol start=", "/ol>", "li>", "/li>", "hr>", "blockquote>", "/blockquote>",
				"h1>", "h2>", "h3>", "h4>", "h5>", "h6>", "/h1>", "/h2>", "/h3>", "/h4>", "/h5>", "/h6>"} {
				if strings.HasPrefix(rest, tag) {
					ok = true
					break
				}
			}
			if !ok {
				t.Fatalf("renderMarkdown(%q) made an unexpected tag: %q", md, clip(rest, 20))
			}
		}
	})
}
