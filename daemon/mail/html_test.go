package mail

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestHTMLToText(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "Hello world", "Hello world"},
		{"paragraphs", "<p>One</p><p>Two</p>", "One\n\nTwo"},
		{"br", "a<br>b<br/>c<br><br>d", "a\nb\nc\n\nd"},
		{"whitespace collapsed", "  a \n\t b   <b> c </b>d ", "a b c d"},
		{"entities", "Fish &amp; chips &lt;3 &eacute;t&#233; &nbsp;x", "Fish & chips <3 été x"},
		{"link", `See <a href="https://example.com/x">the docs</a>.`, "See the docs (https://example.com/x)."},
		{"link same as text", `<a href="https://example.com">https://example.com</a>`, "https://example.com"},
		{"link without scheme text", `<a href="https://example.com/">example.com</a>`, "example.com"},
		{"mailto same", `<a href="mailto:bob@example.com">bob@example.com</a>`, "bob@example.com"},
		{"mailto other", `<a href="mailto:bob@example.com">Bob</a>`, "Bob (mailto:bob@example.com)"},
		{"anchor and js links", `<a href="#top">Top</a> <a href="javascript:void(0)">Click</a>`, "Top Click"},
		{"image link no text", `<a href="https://t.example/p"><img src="x.gif"></a>Hi`, "Hi"},
		{"image alt", `<img alt="Company logo" src="x">Text`, "[image: Company logo] Text"},
		{"script and style", `<style>p{color:red}</style><script>alert("x<p>")</script><p>Visible</p>`, "Visible"},
		{"head title", `<html><head><title>Newsletter</title><meta charset="utf-8"></head><body>Body</body></html>`, "Body"},
		{"comment", `a<!-- hidden <p>x</p> -->b`, "ab"},
		{"conditional comment", `<!--[if mso]><table><tr><td>MSO</td></tr></table><![endif]-->Text`, "Text"},
		{"hidden preheader", `<div style="display: none; max-height:0">Preheader text</div><p>Main</p>`, "Main"},
		{"hidden nested", `<div style="display:none"><div>a</div><div>b</div></div>c`, "c"},
		{"unordered list", `<ul><li>One</li><li>Two</li></ul>`, "- One\n- Two"},
		{"ordered list", `<ol><li>One</li><li>Two</li></ol>`, "1. One\n2. Two"},
		{"ordered list start", `<ol start="3"><li>Three</li></ol>`, "3. Three"},
		{"nested list", `<ul><li>A<ul><li>A1</li></ul></li><li>B</li></ul>`, "- A\n  - A1\n- B"},
		{"heading", `<h1>Title</h1><p>Text</p><h3>Sub</h3>`, "# Title\n\nText\n\n### Sub"},
		{"blockquote", `<p>Reply</p><blockquote><p>Quoted one</p><p>Quoted two</p></blockquote>`, "Reply\n\n> Quoted one\n>\n> Quoted two"},
		{"nested blockquote", `<blockquote>a<blockquote>b</blockquote></blockquote>`, "> a\n>\n> > b"},
		{"table", `<table><tr><th>Item</th><th>Price</th></tr><tr><td>Tea</td><td>3</td></tr></table>`, "Item | Price\nTea | 3"},
		{"pre", "<pre>line 1\n  indented\n\nlast</pre>after", "line 1\n  indented\n\nlast\n\nafter"},
		{"hr", "a<hr>b", "a\n\n---\n\nb"},
		{"gmail divs", `<div dir="ltr">Hi Bob,<div><br></div><div>Thanks!</div></div>`, "Hi Bob,\n\nThanks!"},
		{"invisible padding", "Hi\u200c\u00a0\u034f there\u00ad", "Hi there"},
		{"stray lt", "a < b and c<d", "a < b and c<d"},
		{"unterminated tag", "text <a href=", "text <a href="},
		{"unterminated quote", `a <a href="x>b</a> c`, "a b c"},
		{"uppercase tags", `<P>One</P><BR><SCRIPT>x</SCRIPT>Two`, "One\n\nTwo"},
		{"unclosed script", `a<script>var x = 1;`, "a"},
		{"unclosed iframe", `a<iframe src="x">b`, "ab"},
		{"cdata", `a<![CDATA[b]]>c`, "abc"},
		{"empty", "", ""},
		{"invalid utf8", "a\xffb", "a\uFFFDb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := HTMLToText(tt.in)
			if got != tt.want {
				t.Errorf("HTMLToText(%q)\n got: %q\nwant: %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestHTMLToTextDeepNestingIsLinear(t *testing.T) {
	// 50,000 nested lists and quotes: the indent and quote prefixes are
	// capped, so the output stays small.
	in := strings.Repeat("<ul><li><blockquote>x", 50000)
	out := HTMLToText(in)
	if len(out) > 50000*64 {
		t.Fatalf("output of %d bytes for %d bytes of input", len(out), len(in))
	}
	if !strings.Contains(out, "x") {
		t.Fatalf("text lost")
	}
}

// FuzzHTMLToText's seed corpus is testdata/fuzz/FuzzHTMLToText (Gmail,
// Outlook and newsletter markup, broken markup) plus the inputs below.
func FuzzHTMLToText(f *testing.F) {
	for _, s := range []string{
		"<p>Hello <b>world</b></p>",
		`<a href="https://example.com">x</a><ul><li>a<ol><li>b</ol></ul>`,
		"<blockquote><pre>x\n y</pre></blockquote><table><tr><td>1<td>2</table>",
		"<!-- x --><script>y</script><div style=display:none>z</div>&amp;&#x1F600;",
		"<a href='\x00'>\xff</a><img alt=\"\">",
		"<",
		"<!--",
		"<a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := HTMLToText(s)
		if !utf8.ValidString(out) {
			t.Fatalf("invalid UTF-8 output for %q", s)
		}
		// Output is bounded by a small multiple of the input: prefixes are
		// capped and every written token comes from the input.
		if len(out) > 64*len(s)+64 {
			t.Fatalf("output %d bytes for %d input bytes", len(out), len(s))
		}
		// Markup never leaks as text: without entities or CDATA in the input,
		// a "<script" in the output can only be an unterminated tag at the
		// very end (no '>' after it), which is text.
		lower := strings.ToLower(out)
		if i := strings.Index(lower, "<script"); i >= 0 && !strings.ContainsAny(s, "&") &&
			!strings.Contains(strings.ToLower(s), "cdata") && strings.Contains(lower[i:], ">") {
			t.Fatalf("script tag leaked: %q -> %q", s, out)
		}
	})
}
