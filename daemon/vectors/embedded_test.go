package vectors

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/userid"
)

func TestEmbeddedStorageFormat(t *testing.T) {
	ctx := context.Background()
	db := openSQL(t, sqliteURL(t))
	s := NewEmbedded(db, EmbeddedOptions{})
	u := userid.New()
	addUser(t, db, u)
	mustUpsert(t, s, u, 4, Point{ID: "thread-1", Vector: []float32{1, -2, 0.5, 0}, Payload: map[string]any{"language": "en", "messages": []any{map[string]any{"body": "x"}}}})
	var (
		blob           []byte
		payload, field string
	)
	if err := db.QueryRowContext(ctx, "SELECT vector, payload, fields FROM vectors WHERE user_id = ? AND point_id = ?", u.String(), "thread-1").Scan(&blob, &payload, &field); err != nil {
		t.Fatal(err)
	}
	// Raw values (not normalised), little-endian float32.
	want := []float32{1, -2, 0.5, 0}
	if len(blob) != 16 {
		t.Fatalf("vector blob of %d bytes", len(blob))
	}
	for i, w := range want {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(blob[4*i:])); got != w {
			t.Errorf("value %d = %v, want %v", i, got, w)
		}
	}
	if payload != `{"language":"en","messages":[{"body":"x"}],"thread_id":"thread-1"}` {
		t.Errorf("payload column = %s", payload)
	}
	if field != `{"language":"en","thread_id":"thread-1"}` {
		t.Errorf("fields column = %s (nested objects are not indexed)", field)
	}
	var model string
	var dims int
	var version int64
	if err := db.QueryRowContext(ctx, "SELECT model, dims, version FROM vector_collections WHERE user_id = ?", u.String()).Scan(&model, &dims, &version); err != nil {
		t.Fatal(err)
	}
	if model != testModel || dims != 4 || version != 1 {
		t.Errorf("collection row = %s %d %d", model, dims, version)
	}
	// Deleting the user deletes the collection (foreign keys, cascade).
	if _, err := db.ExecContext(ctx, "DELETE FROM users WHERE id = ?", u.String()); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Count(ctx, u); n != 0 {
		t.Errorf("points survived their user: %d", n)
	}
	if _, _, ok, _ := s.Info(ctx, u); ok {
		t.Error("collection survived its user")
	}
}

// Two stores on one database stand for two processes (replicas).
func TestEmbeddedSeesOtherProcessesWrites(t *testing.T) {
	ctx := context.Background()
	db := openSQL(t, sqliteURL(t))
	s1, s2 := NewEmbedded(db, EmbeddedOptions{}), NewEmbedded(db, EmbeddedOptions{})
	u := userid.New()
	addUser(t, db, u)
	mustUpsert(t, s1, u, 4, Point{ID: "a", Vector: vec(4, 0, 1, 0)})
	if hits, _ := s1.SearchVector(ctx, u, vec(4, 2, 1, 0), 5, nil, Filter{}); len(hits) != 1 {
		t.Fatalf("s1 warm-up: %v", hits)
	}
	mustUpsert(t, s2, u, 4, Point{ID: "b", Vector: vec(4, 2, 1, 0)})
	hits, err := s1.SearchVector(ctx, u, vec(4, 2, 1, 0), 5, nil, Filter{})
	if err != nil || len(hits) != 2 || hits[0].ID != "b" {
		t.Fatalf("s1 after s2's write = %v, %v", ids(hits), err)
	}
	if err := s2.Recreate(ctx, u, testModel, 4); err != nil {
		t.Fatal(err)
	}
	if hits, _ := s1.SearchVector(ctx, u, vec(4, 2, 1, 0), 5, nil, Filter{}); len(hits) != 0 {
		t.Errorf("s1 after s2's recreate = %v", ids(hits))
	}
	// A store opened later reads what is persisted.
	mustUpsert(t, s1, u, 4, Point{ID: "c", Vector: vec(4, 3, 1, 0)})
	s3 := NewEmbedded(db, EmbeddedOptions{})
	if hits, _ := s3.SearchVector(ctx, u, vec(4, 3, 1, 0), 5, nil, Filter{}); len(hits) != 1 || hits[0].ID != "c" {
		t.Errorf("a fresh store = %v", ids(hits))
	}
}

func TestEmbeddedWritesUpdateIndexInPlace(t *testing.T) {
	ctx := context.Background()
	db := openSQL(t, sqliteURL(t))
	s := NewEmbedded(db, EmbeddedOptions{})
	u := userid.New()
	addUser(t, db, u)
	mustUpsert(t, s, u, 4, Point{ID: "a", Vector: vec(4, 0, 1, 0), Payload: map[string]any{"language": "en"}})
	if _, err := s.SearchVector(ctx, u, vec(4, 0, 1, 0), 5, nil, Filter{}); err != nil {
		t.Fatal(err)
	}
	entry := func() *userIndex {
		s.cache.mu.Lock()
		defer s.cache.mu.Unlock()
		e := s.cache.byUser[u.String()]
		if e == nil {
			return nil
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.idx
	}
	before := entry()
	if before == nil {
		t.Fatal("no index cached after a search")
	}
	mustUpsert(t, s, u, 4, Point{ID: "b", Vector: vec(4, 2, 1, 0), Payload: map[string]any{"language": "de"}},
		Point{ID: "a", Vector: vec(4, 3, 1, 0), Payload: map[string]any{"language": "fr"}})
	if after := entry(); after != before || after.version != 2 || len(after.ids) != 2 {
		t.Fatalf("index replaced or stale after a local write (same=%v)", after == before)
	}
	hits, _ := s.SearchVector(ctx, u, vec(4, 3, 1, 0), 1, nil, Filter{Must: map[string]any{"language": "fr"}})
	if len(hits) != 1 || hits[0].ID != "a" || hits[0].Score < 0.999 {
		t.Errorf("search on the updated index = %+v", hits)
	}
	if d, _ := s.FieldDistribution(ctx, u, "language", 0); d["en"] != 0 || d["fr"] != 1 || d["de"] != 1 {
		t.Errorf("distribution on the updated index = %v", d)
	}
}

func TestEmbeddedCacheBound(t *testing.T) {
	ctx := context.Background()
	db := openSQL(t, sqliteURL(t))
	const dims, perUser = 64, 50
	pointBytes := int64(4*dims) + pointOverhead
	max := 2*perUser*pointBytes + perUser*pointBytes/2 // room for two and a half users
	s := NewEmbedded(db, EmbeddedOptions{MaxCacheBytes: max})
	users := make([]userid.ID, 4)
	for i := range users {
		users[i] = userid.New()
		addUser(t, db, users[i])
		var pts []Point
		for j := range perUser {
			pts = append(pts, Point{ID: fmt.Sprintf("u%d-%d", i, j), Vector: vec(dims, j, j+1, 0.4)})
		}
		mustUpsert(t, s, users[i], dims, pts...)
	}
	for round := range 3 {
		for i, u := range users {
			hits, err := s.SearchVector(ctx, u, vec(dims, 7, 8, 0.4), 1, nil, Filter{})
			if err != nil || len(hits) != 1 || hits[0].ID != fmt.Sprintf("u%d-7", i) {
				t.Fatalf("round %d user %d: %v, %v", round, i, hits, err)
			}
			used, n := s.cache.usedBytes()
			if used > max || n > 2 {
				t.Fatalf("cache holds %d bytes in %d users, bound %d", used, n, max)
			}
		}
	}
	// The most recently used user is cached.
	s.cache.mu.Lock()
	_, ok := s.cache.byUser[users[3].String()]
	s.cache.mu.Unlock()
	if !ok {
		t.Error("the most recent user was evicted")
	}
	// A user larger than the whole bound is served but not kept.
	tiny := NewEmbedded(db, EmbeddedOptions{MaxCacheBytes: 1024})
	if hits, err := tiny.SearchVector(ctx, users[0], vec(dims, 7, 8, 0.4), 1, nil, Filter{}); err != nil || len(hits) != 1 {
		t.Fatalf("search beyond the bound: %v, %v", hits, err)
	}
	if used, n := tiny.cache.usedBytes(); used != 0 || n != 0 {
		t.Errorf("an oversized index was kept: %d bytes, %d users", used, n)
	}
}

func TestEmbeddedConcurrent(t *testing.T) {
	ctx := context.Background()
	db := openSQL(t, sqliteURL(t))
	s := NewEmbedded(db, EmbeddedOptions{MaxCacheBytes: 64 << 10})
	const users, writes = 4, 20
	ids := make([]userid.ID, users)
	for i := range ids {
		ids[i] = userid.New()
		addUser(t, db, ids[i])
	}
	var wg sync.WaitGroup
	errs := make(chan error, users*writes*3)
	for i, u := range ids {
		wg.Go(func() {
			for j := range writes {
				p := Point{ID: fmt.Sprintf("t%d", j), Vector: vec(16, i+j, j+1, 0.2), Payload: map[string]any{"user": i}}
				if err := s.Upsert(ctx, u, testModel, 16, []Point{p}); err != nil {
					errs <- err
				}
			}
		})
		for range 2 {
			wg.Go(func() {
				for range writes {
					hits, err := s.SearchVector(ctx, u, vec(16, i, 1, 0.2), 5, nil, Filter{})
					if err != nil {
						errs <- err
					}
					for _, h := range hits {
						if h.Payload["user"] != int64(i) {
							errs <- fmt.Errorf("user %d saw %v", i, h.Payload)
						}
					}
					if _, err := s.FieldDistribution(ctx, u, "user", 0); err != nil {
						errs <- err
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, u := range ids {
		if n, _ := s.Count(ctx, u); n != writes {
			t.Errorf("count = %d, want %d", n, writes)
		}
	}
}

func TestDotKernel(t *testing.T) {
	kernel := dotKernel()
	r := rand.New(rand.NewPCG(3, 4))
	for n := range 300 {
		a, b := make([]float32, n), make([]float32, n+5)
		var want float64
		for i := range a {
			a[i], b[i] = float32(r.NormFloat64()), float32(r.NormFloat64())
			want += float64(a[i]) * float64(b[i])
		}
		for _, k := range []func(a, b []float32) float32{kernel, dot} {
			if got := k(a, b); math.Abs(float64(got)-want) > 1e-4*(1+math.Abs(want)) {
				t.Fatalf("n=%d: dot = %v, want %v", n, got, want)
			}
		}
	}
	t.Logf("kernel: avx2+fma=%v", hasFastDot())
}

func TestTopKMatchesSort(t *testing.T) {
	// The heap and the parallel split agree with a full sort.
	const dims = 32
	for _, n := range []int{0, 1, 7, 500, 40000} {
		idx := newUserIndex(1, "m", dims, dotKernel())
		r := rand.New(rand.NewPCG(uint64(n), 1))
		for i := range n {
			v := make([]float32, dims)
			for j := range v {
				v[j] = float32(r.NormFloat64())
			}
			idx.put(fmt.Sprint(i), unit(v), map[string]any{"even": i%2 == 0})
		}
		q := unit(vec(dims, 3, 5, 0.7))
		for _, k := range []int{1, 10, 100} {
			got := idx.search(q, k, nil, nil)
			var all []scored
			for row := range n {
				all = append(all, scored{dot(q, idx.vecs[row*dims:(row+1)*dims]), row})
			}
			slices.SortStableFunc(all, func(a, b scored) int {
				if a.score > b.score {
					return -1
				}
				if a.score < b.score {
					return 1
				}
				return 0
			})
			want := all[:min(k, n)]
			if len(got) != len(want) {
				t.Fatalf("n=%d k=%d: %d results", n, k, len(got))
			}
			for i := range want {
				if got[i].id != idx.ids[want[i].row] && got[i].score != want[i].score {
					t.Fatalf("n=%d k=%d: result %d = %s (%v), want %s (%v)", n, k, i, got[i].id, got[i].score, idx.ids[want[i].row], want[i].score)
				}
			}
			// With a filter: only even rows.
			even := idx.search(q, k, nil, []cond{{field: "even", kind: condBool, b: true}})
			for _, f := range even {
				var i int
				fmt.Sscan(f.id, &i)
				if i%2 != 0 {
					t.Fatalf("filter let %s through", f.id)
				}
			}
		}
	}
}

// BenchmarkEmbeddedSearch measures SearchVector on the embedded store
// (SQLite), index warm: the version check, the brute-force scan, and the
// payload read of the 10 hits. It reports p50 and p99 latencies as well.
func BenchmarkEmbeddedSearch(b *testing.B) {
	for _, c := range []struct{ n, dims int }{{5000, 384}, {1000, 3072}, {10000, 384}, {100000, 384}} {
		b.Run(fmt.Sprintf("%dx%d", c.n, c.dims), func(b *testing.B) {
			if c.n > 10000 && testing.Short() {
				b.Skip("large corpus in -short mode")
			}
			ctx := context.Background()
			db := openSQL(b, sqliteURL(b))
			s := NewEmbedded(db, EmbeddedOptions{MaxCacheBytes: 1 << 30})
			u := userid.New()
			addUser(b, db, u)
			r := rand.New(rand.NewPCG(1, 2))
			randVec := func() []float32 {
				v := make([]float32, c.dims)
				for i := range v {
					v[i] = float32(r.NormFloat64())
				}
				return v
			}
			const batch = 500
			for start := 0; start < c.n; start += batch {
				pts := make([]Point, 0, batch)
				for i := start; i < min(start+batch, c.n); i++ {
					pts = append(pts, Point{ID: fmt.Sprintf("thread-%d", i), Vector: randVec(), Payload: map[string]any{
						"language": []string{"en", "de", "fr"}[i%3], "subject": fmt.Sprintf("Subject of thread %d", i), "contains_user_reply": i%2 == 0,
					}})
				}
				if err := s.Upsert(ctx, u, testModel, c.dims, pts); err != nil {
					b.Fatal(err)
				}
			}
			queries := make([][]float32, 64)
			for i := range queries {
				queries[i] = randVec()
			}
			if _, err := s.SearchVector(ctx, u, queries[0], 10, nil, Filter{}); err != nil { // load the index
				b.Fatal(err)
			}
			var lat []time.Duration
			i := 0
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				hits, err := s.SearchVector(ctx, u, queries[i%len(queries)], 10, nil, Filter{})
				lat = append(lat, time.Since(start))
				if err != nil || len(hits) != 10 {
					b.Fatalf("%d hits, %v", len(hits), err)
				}
				i++
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}
