package embed

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// splitText cuts text into pieces of at most limit runes (limit <= 0: no
// limit). A text that fits is returned unchanged as the only piece. A longer
// one is cut at the coarsest boundary that works: paragraphs, then lines,
// then sentences, then words, and only as a last resort inside a word;
// neighbouring pieces are packed together up to the limit. Whitespace at the
// cuts is trimmed and whitespace-only pieces are left out; no other text is
// lost.
func splitText(text string, limit int) []string {
	if limit <= 0 || utf8.RuneCountInString(text) <= limit {
		return []string{text}
	}
	var out []string
	packPieces(text, limit, 0, &out)
	return out
}

// splitLevels is the number of boundary kinds splitAt knows.
const splitLevels = 4

// splitAt cuts s at the boundaries of one level, coarsest first: paragraphs,
// lines, sentences, words. The pieces concatenate back to s (separators stay
// with the piece before them).
func splitAt(level int, s string) []string {
	switch level {
	case 0:
		return strings.SplitAfter(s, "\n\n")
	case 1:
		return strings.SplitAfter(s, "\n")
	case 2:
		return splitSentences(s)
	default:
		return splitWords(s)
	}
}

func packPieces(text string, limit, level int, out *[]string) {
	if level == splitLevels {
		hardCut(text, limit, out)
		return
	}
	var (
		cur  strings.Builder
		curN int
	)
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			*out = append(*out, s)
		}
		cur.Reset()
		curN = 0
	}
	for _, p := range splitAt(level, text) {
		n := utf8.RuneCountInString(p)
		if n > limit {
			flush()
			packPieces(p, limit, level+1, out)
			continue
		}
		if curN+n > limit {
			flush()
		}
		cur.WriteString(p)
		curN += n
	}
	flush()
}

// hardCut cuts text every limit runes.
func hardCut(text string, limit int, out *[]string) {
	for len(text) > 0 {
		end, n := 0, 0
		for end < len(text) && n < limit {
			_, size := utf8.DecodeRuneInString(text[end:])
			end += size
			n++
		}
		if s := strings.TrimSpace(text[:end]); s != "" {
			*out = append(*out, s)
		}
		text = text[end:]
	}
}

// splitSentences cuts after sentence-ending punctuation followed by
// whitespace (the whitespace stays with the sentence).
func splitSentences(s string) []string {
	var (
		out   []string
		start int
	)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if !isSentenceEnd(r) {
			continue
		}
		j := i
		for j < len(s) {
			r2, size2 := utf8.DecodeRuneInString(s[j:])
			if !unicode.IsSpace(r2) {
				break
			}
			j += size2
		}
		if j > i || isWideSentenceEnd(r) {
			out = append(out, s[start:j])
			start = j
			i = j
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

func isSentenceEnd(r rune) bool {
	return r == '.' || r == '!' || r == '?' || isWideSentenceEnd(r)
}

// isWideSentenceEnd is CJK full-width punctuation, which ends a sentence
// without a following space.
func isWideSentenceEnd(r rune) bool { return r == '。' || r == '！' || r == '？' }

// splitWords cuts after each run of whitespace.
func splitWords(s string) []string {
	var (
		out   []string
		start int
		inWS  bool
	)
	for i, r := range s {
		ws := unicode.IsSpace(r)
		if inWS && !ws {
			out = append(out, s[start:i])
			start = i
		}
		inWS = ws
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}
