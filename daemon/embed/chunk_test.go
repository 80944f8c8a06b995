package embed

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// squash drops whitespace, to compare texts modulo the trimming at cuts.
func squash(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, s)
}

func checkSplit(t testing.TB, text string, limit int) []string {
	t.Helper()
	got := splitText(text, limit)
	if len(got) == 0 {
		t.Fatalf("splitText(%q, %d) returned no pieces", text, limit)
	}
	for i, p := range got {
		if limit > 0 && utf8.RuneCountInString(p) > limit {
			t.Fatalf("piece %d has %d runes > limit %d: %q", i, utf8.RuneCountInString(p), limit, p)
		}
	}
	if squash(strings.Join(got, "")) != squash(text) {
		t.Fatalf("splitText lost or changed text:\n in: %q\nout: %q", text, got)
	}
	return got
}

func TestSplitText(t *testing.T) {
	if got := splitText("short  text\n", 100); len(got) != 1 || got[0] != "short  text\n" {
		t.Errorf("a fitting text must come back unchanged, got %q", got)
	}
	if got := splitText(strings.Repeat("x", 5000), 0); len(got) != 1 {
		t.Errorf("limit 0 means no limit, got %d pieces", len(got))
	}

	para := func(word string, n int) string { return strings.TrimSpace(strings.Repeat(word+" ", n)) + "." }
	text := para("alpha", 10) + "\n\n" + para("beta", 10) + "\n\n" + para("gamma", 10)
	got := checkSplit(t, text, 70)
	if len(got) != 3 || !strings.HasPrefix(got[1], "beta") || strings.Contains(got[1], "alpha") {
		t.Errorf("paragraphs should be the cut points: %q", got)
	}

	// Two short paragraphs are packed into one piece.
	got = checkSplit(t, "one.\n\ntwo.\n\n"+strings.Repeat("z", 30), 20)
	if got[0] != "one.\n\ntwo." {
		t.Errorf("short paragraphs not packed: %q", got)
	}

	// One paragraph of sentences is cut between sentences.
	sent := "The meeting moved to Thursday. Please confirm you can attend! Is the room booked? Thanks."
	got = checkSplit(t, sent, 40)
	for _, p := range got[:len(got)-1] {
		if last := p[len(p)-1]; last != '.' && last != '!' && last != '?' {
			t.Errorf("piece %q does not end at a sentence boundary", p)
		}
	}

	// A run-on text is cut between words, never inside one.
	words := strings.Repeat("lorem ipsum dolor ", 20)
	for _, p := range checkSplit(t, words, 25) {
		for _, w := range strings.Fields(p) {
			if w != "lorem" && w != "ipsum" && w != "dolor" {
				t.Fatalf("word cut: %q in %q", w, p)
			}
		}
	}

	// No boundaries at all: hard cut, multi-byte runes intact.
	got = checkSplit(t, strings.Repeat("日本語", 20), 7)
	if len(got) != 9 || !utf8.ValidString(strings.Join(got, "")) {
		t.Errorf("hard cut of CJK text: %d pieces %q", len(got), got)
	}
	// Full-width sentence ends are boundaries without a following space.
	got = checkSplit(t, "今日は晴れです。明日は雨です。", 9)
	if len(got) != 2 || got[0] != "今日は晴れです。" {
		t.Errorf("CJK sentences: %q", got)
	}
}

func TestModelChunks(t *testing.T) {
	m := Model{MaxInputChars: 50}
	long := strings.Repeat("a sentence of words. ", 20) // 420 chars
	if n := m.Chunks(long); n < 9 || n != len(m.Split(long)) {
		t.Errorf("Chunks = %d", n)
	}
	if n := m.Chunks("fits"); n != 1 {
		t.Errorf("Chunks(short) = %d", n)
	}
	if l := (Model{MaxInputTokens: 100}).InputLimit(); l != 200 {
		t.Errorf("InputLimit from tokens = %d, want 200", l)
	}
	if l := (Model{MaxInputTokens: 100, MaxInputChars: 500}).InputLimit(); l != 200 {
		t.Errorf("InputLimit takes the smaller: %d", l)
	}
}

func FuzzSplitText(f *testing.F) {
	f.Add("Hello world. This is a test.\n\nNew paragraph!", 10)
	f.Add(strings.Repeat("ab ", 50), 4)
	f.Add("日本語。テキスト", 2)
	f.Add("\n\n\n   \t", 1)
	f.Fuzz(func(t *testing.T, text string, limit int) {
		if !utf8.ValidString(text) || strings.TrimSpace(text) == "" || limit <= 0 || limit > 1000 {
			t.Skip()
		}
		got := splitText(text, limit)
		if utf8.RuneCountInString(text) <= limit {
			if len(got) != 1 || got[0] != text {
				t.Fatalf("fitting text changed: %q", got)
			}
			return
		}
		checkSplit(t, text, limit)
	})
}
