package jobs

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// BenchmarkInitialize runs whole inbox initialisations (Dovecot listing and
// fetching, thread building, offline embedding, embedded store upserts) of
// a seeded mailbox and reports threads stored per second.
func BenchmarkInitialize(b *testing.B) {
	dc := testsvc.Dovecot(b, map[string]string{"alice": "alice-pw"})
	c := seed(b, dc, "alice", "a", "alice@a.example", 150, 30)
	s := newStores(b)
	a := s.newUser(b, "alice@a.example", dc, "alice", nil)
	m, _ := s.manager(b, false, nil)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := m.Reinitialize(ctx, a); err != nil {
			b.Fatal(err)
		}
		if err := m.Wait(ctx, a, Initialize); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if n := s.count(b, a); n != len(c.threads) {
		b.Fatalf("%d points, want %d", n, len(c.threads))
	}
	b.ReportMetric(float64(len(c.threads)*b.N)/elapsed.Seconds(), "threads/s")
}

// BenchmarkEmbedUpsert is the store path alone: batches of 10 threads of
// about 2 KB of markdown embedded with the offline model and upserted into
// the embedded store.
func BenchmarkEmbedUpsert(b *testing.B) {
	s := newStores(b)
	model := s.catalog.Offline()
	e, err := embed.New(model, "", embed.Options{})
	if err != nil {
		b.Fatal(err)
	}
	emb := e.(*embed.Client)
	u, err := s.users.Create(context.Background(), users.NewUser{Email: "bench@x.example"})
	if err != nil {
		b.Fatal(err)
	}
	user := u.ID
	words := append(vocabulary("a"), vocabulary("b")...)
	doc := func(i int) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "# Email Thread\n\n**Messages:** 2\n\n## Message 1\n\n- **From:** c%d@x.example\n- **Subject:** %s\n\n", i, words[i%len(words)])
		for sb.Len() < 2000 {
			fmt.Fprintf(&sb, "We talked about the %s and the %s on day %d. ", words[(i+sb.Len())%len(words)], words[(i*3+sb.Len()/7)%len(words)], i)
		}
		return sb.String()
	}
	ctx := context.Background()
	const batch = 10
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		texts := make([]string, batch)
		for j := range texts {
			texts[j] = doc(i*batch + j)
		}
		embs, err := emb.EmbedDocuments(ctx, texts)
		if err != nil {
			b.Fatal(err)
		}
		points := make([]vectors.Point, batch)
		for j := range points {
			id := fmt.Sprintf("t%d@x.example", i*batch+j)
			points[j] = vectors.Point{ID: id, Vector: embs[j].Vector, Payload: map[string]any{"thread_markdown": texts[j], "language": "en"}}
		}
		if err := s.vectors.Upsert(ctx, user, model.Key, model.Dimensions, points); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(batch*b.N)/time.Since(start).Seconds(), "threads/s")
}
