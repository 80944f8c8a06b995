package embed

import (
	"context"
	"math"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The offline model is lexical, not semantic: two texts are close when they
// share words, word pairs and word fragments, whatever they mean. It needs no
// network and no key, is deterministic (the same text gives the same vector
// on every machine), and is the fallback when no provider has a key.
//
// Features of the lower-cased text, each with a weight:
//
//	word unigrams             1.0   "budget"
//	word bigrams              0.7   "budget meeting"
//	character 3-grams         0.25  "<bu", "bud", ..., "et>" (the word with boundary marks)
//
// Words are maximal runs of letters and digits. Each feature is hashed with
// 64-bit FNV-1a (kind byte, 0x00, the feature's UTF-8 bytes); the hash modulo
// the dimension picks the coordinate and its top bit the sign (signed feature
// hashing, so collisions cancel out on average instead of piling up). The
// vector is L2-normalised; a text without words gives the zero vector.
const (
	offlineWordWeight    = 1.0
	offlineBigramWeight  = 0.7
	offlineTrigramWeight = 0.25
)

// offlineBackend embeds with feature hashing into dims coordinates.
type offlineBackend struct {
	dims int
}

func (b offlineBackend) embed(ctx context.Context, texts []string, _ string) ([][]float32, error) {
	out := make([][]float32, len(texts))
	for i, t := range texts {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		out[i] = hashEmbed(t, b.dims)
	}
	return out, nil
}

// FNV-1a, 64 bit.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

func fnvRune(h uint64, r rune) uint64 {
	var buf [utf8.UTFMax]byte
	n := utf8.EncodeRune(buf[:], r)
	for _, b := range buf[:n] {
		h ^= uint64(b)
		h *= fnvPrime
	}
	return h
}

func fnvByte(h uint64, b byte) uint64 {
	h ^= uint64(b)
	return h * fnvPrime
}

// hashEmbed is the offline model's embedding of text.
func hashEmbed(text string, dims int) []float32 {
	acc := make([]float64, dims)
	add := func(h uint64, w float64) {
		idx := h % uint64(dims)
		if h>>63 == 1 {
			w = -w
		}
		acc[idx] += w
	}
	words := offlineWords(text)
	var tri [3]rune
	for i, w := range words {
		add(fnvString(fnvByte(fnvByte(fnvOffset, 'w'), 0), w), offlineWordWeight)
		if i > 0 {
			h := fnvString(fnvByte(fnvByte(fnvOffset, 'b'), 0), words[i-1])
			h = fnvString(fnvByte(h, ' '), w)
			add(h, offlineBigramWeight)
		}
		// Character trigrams of "<word>".
		n := 0
		push := func(r rune) {
			tri[0], tri[1], tri[2] = tri[1], tri[2], r
			n++
			if n >= 3 {
				h := fnvByte(fnvByte(fnvOffset, 'c'), 0)
				for _, tr := range tri {
					h = fnvRune(h, tr)
				}
				add(h, offlineTrigramWeight)
			}
		}
		push('<')
		for _, r := range w {
			push(r)
		}
		push('>')
	}
	var norm float64
	for _, v := range acc {
		norm += v * v
	}
	out := make([]float32, dims)
	if norm == 0 {
		return out
	}
	inv := 1 / math.Sqrt(norm)
	for i, v := range acc {
		out[i] = float32(v * inv)
	}
	return out
}

// offlineWords returns the lower-cased runs of letters and digits of text.
func offlineWords(text string) []string {
	return strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}
