package embed

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
)

func offlineClient(t *testing.T) *Client {
	t.Helper()
	c, err := LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(c.Offline(), "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	return e.(*Client)
}

func dot(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func TestOfflineDeterministicAndNormalised(t *testing.T) {
	e := offlineClient(t)
	if e.Dimensions() != 384 {
		t.Fatalf("Dimensions = %d", e.Dimensions())
	}
	ctx := context.Background()
	texts := []string{"Quarterly budget meeting on Thursday", "Re: Invoice #4711 overdue", "ÜBER straße — naïve café"}
	a, err := e.Embed(ctx, texts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.Embed(ctx, texts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range texts {
		if len(a[i]) != 384 {
			t.Fatalf("vector %d has %d dims", i, len(a[i]))
		}
		if n := math.Sqrt(dot(a[i], a[i])); math.Abs(n-1) > 1e-5 {
			t.Errorf("vector %d norm %v, want 1", i, n)
		}
		for j := range a[i] {
			if a[i][j] != b[i][j] {
				t.Fatalf("text %d differs between calls at %d", i, j)
			}
		}
	}
	// Case does not matter; a different text gives a different vector.
	up, _ := e.Embed(ctx, []string{strings.ToUpper(texts[0])})
	if dot(up[0], a[0]) < 0.9999 {
		t.Errorf("upper-cased text should embed the same, cosine %v", dot(up[0], a[0]))
	}
	if dot(a[0], a[1]) > 0.5 {
		t.Errorf("unrelated texts too close: %v", dot(a[0], a[1]))
	}
	// Pinned: the algorithm (FNV-1a feature hashing) must not drift, or
	// stored vectors would stop matching new queries.
	v := hashEmbed("hello world", 384)
	var nonzero int
	var sum float64
	for i, x := range v {
		if x != 0 {
			nonzero++
			sum += float64(i) * float64(x)
		}
	}
	if nonzero != pinnedNonzero || math.Abs(sum-pinnedWeightedSum) > 1e-3 {
		t.Errorf("offline embedding of %q changed: %d non-zero coordinates, fingerprint %.4f", "hello world", nonzero, sum)
	}
}

// Fingerprint of hashEmbed("hello world", 384): changing these means every
// stored offline vector must be recomputed.
const (
	pinnedNonzero     = 13
	pinnedWeightedSum = -180.346454
)

func TestOfflineSimilarity(t *testing.T) {
	e := offlineClient(t)
	ctx := context.Background()
	cases := []struct{ text, paraphrase, unrelated string }{
		{
			"Can we move the quarterly budget meeting to Thursday afternoon?",
			"Could the quarterly budget meeting move to Thursday?",
			"The hiking trail near the lake was closed after heavy rain.",
		},
		{
			"Your invoice 2024-118 for the website redesign is attached, payment due in 30 days.",
			"Attached is the invoice for the website redesign; payment is due within 30 days.",
			"Happy birthday! Hope you have a wonderful day with the family.",
		},
		{
			"Wir müssen die Lieferung der Ersatzteile auf nächste Woche verschieben.",
			"Die Lieferung der Ersatzteile wird auf nächste Woche verschoben.",
			"Das Konzert gestern Abend war wirklich großartig.",
		},
	}
	for _, tc := range cases {
		vs, err := e.Embed(ctx, []string{tc.text, tc.paraphrase, tc.unrelated})
		if err != nil {
			t.Fatal(err)
		}
		near, far := dot(vs[0], vs[1]), dot(vs[0], vs[2])
		if near <= far+0.2 {
			t.Errorf("%q: paraphrase cosine %.3f should clearly exceed unrelated %.3f", tc.text, near, far)
		}
	}
	// Morphology through character trigrams: shared stems count.
	vs, _ := e.Embed(ctx, []string{"invoices", "invoice", "holiday"})
	if dot(vs[0], vs[1]) <= dot(vs[0], vs[2]) {
		t.Errorf("invoices~invoice %.3f should exceed invoices~holiday %.3f", dot(vs[0], vs[1]), dot(vs[0], vs[2]))
	}
}

func TestOfflineEdgeCases(t *testing.T) {
	e := offlineClient(t)
	ctx := context.Background()
	if _, err := e.Embed(ctx, []string{"ok", "  \n"}); !errors.Is(err, ErrEmptyInput) {
		t.Errorf("whitespace text: %v, want ErrEmptyInput", err)
	}
	// Punctuation only: no words, the zero vector (not NaN).
	vs, err := e.Embed(ctx, []string{"!!! ---"})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range vs[0] {
		if x != 0 {
			t.Fatal("a text without words should give the zero vector")
		}
	}
	if got, err := e.Embed(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("Embed(nil) = %v, %v", got, err)
	}
	// A long text is chunked (limit 8000 chars) and still one unit vector.
	long := strings.Repeat("The supplier confirmed the revised delivery schedule for spare parts. ", 400)
	es, err := e.EmbedDocuments(ctx, []string{long})
	if err != nil {
		t.Fatal(err)
	}
	if es[0].Chunks != e.Model().Chunks(long) || es[0].Chunks < 3 {
		t.Errorf("Chunks = %d, Model.Chunks = %d", es[0].Chunks, e.Model().Chunks(long))
	}
	short, _ := e.Embed(ctx, []string{"The supplier confirmed the revised delivery schedule for spare parts."})
	if c := dot(es[0].Vector, short[0]); c < 0.95 {
		t.Errorf("chunked repetition should stay close to one sentence, cosine %.3f", c)
	}
	ctxDone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.Embed(ctxDone, []string{"x"}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	// Query embeds like a document for the offline model.
	q, err := Query(ctx, e, "budget meeting")
	if err != nil || len(q) != 384 {
		t.Fatalf("Query: %v", err)
	}
}

func BenchmarkOfflineEmbed(b *testing.B) {
	text := strings.Repeat("Hello Anna, thanks for the quick reply about the quarterly budget meeting. ", 30)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		hashEmbed(text, 384)
	}
}
