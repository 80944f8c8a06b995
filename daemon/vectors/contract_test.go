package vectors

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/internal/fakeqdrant"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// openSQL returns a migrated database on a fresh SQLite file or PostgreSQL database.
func openSQL(tb testing.TB, url string) *sqldb.DB {
	tb.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	return db
}

func sqliteURL(tb testing.TB) string { return "sqlite://" + tb.TempDir() + "/vectors.db" }

// addUser inserts a users row (the embedded tables reference users).
func addUser(tb testing.TB, db *sqldb.DB, user userid.ID) {
	tb.Helper()
	_, err := db.ExecContext(context.Background(), db.Rebind("INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)"),
		user.String(), user.String()+"@example.com", time.Now().UTC())
	if err != nil {
		tb.Fatal(err)
	}
}

// backend is a Store under test and how to make a user known to it.
type backend struct {
	store   Store
	addUser func(userid.ID)
}

func embeddedBackend(tb testing.TB, url string) backend {
	db := openSQL(tb, url)
	return backend{store: NewEmbedded(db, EmbeddedOptions{}), addUser: func(u userid.ID) { addUser(tb, db, u) }}
}

func qdrantBackend(tb testing.TB, tenancy Tenancy) backend {
	f := fakeqdrant.New(tb)
	q, err := NewQdrant(QdrantConfig{Host: "127.0.0.1", Port: f.Port(), APIKey: "test-api-key", Tenancy: tenancy})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { q.Close() })
	return backend{store: q, addUser: func(userid.ID) {}}
}

// backends is every Store implementation; each call returns a fresh, empty store.
var backends = []struct {
	name string
	open func(tb testing.TB) backend
}{
	{"embedded-sqlite", func(tb testing.TB) backend { return embeddedBackend(tb, sqliteURL(tb)) }},
	{"embedded-postgres", func(tb testing.TB) backend { return embeddedBackend(tb, testsvc.Postgres(tb)) }},
	{"qdrant-collection", func(tb testing.TB) backend { return qdrantBackend(tb, TenancyCollection) }},
	{"qdrant-payload", func(tb testing.TB) backend { return qdrantBackend(tb, TenancyPayload) }},
}

func TestContract(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			for _, tc := range contractTests {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, b.open(t)) })
			}
		})
	}
}

var contractTests = []struct {
	name string
	run  func(t *testing.T, b backend)
}{
	{"empty and zero user", testEmptyAndZeroUser},
	{"upsert, info, count", testUpsertInfoCount},
	{"user isolation", testUserIsolation},
	{"upsert overwrites", testUpsertOverwrite},
	{"search order, exclude, filter", testSearchExcludeFilter},
	{"field distribution", testFieldDistribution},
	{"diverse set", testDiverseSet},
	{"recreate changes model and size", testRecreate},
	{"payload round trip", testPayloadRoundTrip},
	{"invalid arguments", testInvalid},
	{"semantic search", testSemanticSearch},
}

const testModel = "test-model"

// vec is a unit vector of dims pointing mostly along axis a, tilted towards
// axis b by t (0..1): nearby vectors share a and differ in b and t.
func vec(dims, a, b int, t float64) []float32 {
	v := make([]float32, dims)
	v[a%dims] = float32(math.Cos(t))
	v[b%dims] += float32(math.Sin(t))
	return v
}

func threadPayload(lang string, folders []string, replied bool, count int) map[string]any {
	return map[string]any{
		"language":            lang,
		"folders":             folders,
		"contains_user_reply": replied,
		"message_count":       count,
		"subject":             "subject " + lang,
	}
}

func ids(hits []Hit) []string {
	out := make([]string, len(hits))
	for i, h := range hits {
		out[i] = h.ID
	}
	return out
}

func mustUpsert(t *testing.T, s Store, user userid.ID, dims int, points ...Point) {
	t.Helper()
	if err := s.Upsert(context.Background(), user, testModel, dims, points); err != nil {
		t.Fatalf("Upsert: %v", err)
	}
}

func testEmptyAndZeroUser(t *testing.T, b backend) {
	ctx := context.Background()
	s := b.store
	u := userid.New()
	b.addUser(u)
	if model, dims, exists, err := s.Info(ctx, u); err != nil || exists || model != "" || dims != 0 {
		t.Errorf("Info of a new user = %q %d %v %v", model, dims, exists, err)
	}
	if n, err := s.Count(ctx, u); err != nil || n != 0 {
		t.Errorf("Count = %d, %v", n, err)
	}
	if hits, err := s.SearchVector(ctx, u, vec(4, 0, 1, 0), 5, nil, Filter{}); err != nil || len(hits) != 0 {
		t.Errorf("SearchVector = %v, %v", hits, err)
	}
	if d, err := s.FieldDistribution(ctx, u, "language", 10); err != nil || len(d) != 0 {
		t.Errorf("FieldDistribution = %v, %v", d, err)
	}
	if hits, err := s.DiverseSet(ctx, u, Filter{}, 3); err != nil || len(hits) != 0 {
		t.Errorf("DiverseSet = %v, %v", hits, err)
	}

	var zero userid.ID
	checks := map[string]error{}
	checks["Upsert"] = s.Upsert(ctx, zero, testModel, 4, []Point{{ID: "t", Vector: vec(4, 0, 1, 0)}})
	_, checks["Count"] = s.Count(ctx, zero)
	_, checks["SearchVector"] = s.SearchVector(ctx, zero, vec(4, 0, 1, 0), 5, nil, Filter{})
	_, checks["FieldDistribution"] = s.FieldDistribution(ctx, zero, "language", 5)
	_, checks["DiverseSet"] = s.DiverseSet(ctx, zero, Filter{}, 3)
	checks["Recreate"] = s.Recreate(ctx, zero, testModel, 4)
	_, _, _, checks["Info"] = s.Info(ctx, zero)
	for name, err := range checks {
		if !errors.Is(err, userid.ErrZero) {
			t.Errorf("%s with the zero user: %v, want userid.ErrZero", name, err)
		}
	}
}

func testUpsertInfoCount(t *testing.T, b backend) {
	ctx := context.Background()
	u := userid.New()
	b.addUser(u)
	mustUpsert(t, b.store, u, 8,
		Point{ID: "t1", Vector: vec(8, 0, 1, 0.1)},
		Point{ID: "t2", Vector: vec(8, 2, 3, 0.1)},
		Point{ID: "t1", Vector: vec(8, 4, 5, 0.1)}, // same id twice: the last wins
	)
	model, dims, exists, err := b.store.Info(ctx, u)
	if err != nil || !exists || model != testModel || dims != 8 {
		t.Fatalf("Info = %q %d %v %v", model, dims, exists, err)
	}
	if n, err := b.store.Count(ctx, u); err != nil || n != 2 {
		t.Fatalf("Count = %d, %v", n, err)
	}
	hits, err := b.store.SearchVector(ctx, u, vec(8, 4, 5, 0.1), 1, nil, Filter{})
	if err != nil || len(hits) != 1 || hits[0].ID != "t1" || hits[0].Score < 0.999 {
		t.Fatalf("the last of a repeated id should be stored: %+v, %v", hits, err)
	}
	// An empty upsert is fine; another model or size is refused.
	mustUpsert(t, b.store, u, 8)
	if err := b.store.Upsert(ctx, u, "other-model", 8, []Point{{ID: "t3", Vector: vec(8, 0, 1, 0)}}); !errors.Is(err, ErrModelMismatch) {
		t.Errorf("Upsert of another model: %v, want ErrModelMismatch", err)
	}
	if err := b.store.Upsert(ctx, u, testModel, 16, []Point{{ID: "t3", Vector: vec(16, 0, 1, 0)}}); !errors.Is(err, ErrModelMismatch) {
		t.Errorf("Upsert of another size: %v, want ErrModelMismatch", err)
	}
	if n, _ := b.store.Count(ctx, u); n != 2 {
		t.Errorf("refused upserts changed the count: %d", n)
	}
}

func testUserIsolation(t *testing.T, b backend) {
	ctx := context.Background()
	s := b.store
	alice, bob := userid.New(), userid.New()
	b.addUser(alice)
	b.addUser(bob)
	// Both hold the thread "shared" (Alice mailed Bob), with different content.
	mustUpsert(t, s, alice, 8,
		Point{ID: "a1", Vector: vec(8, 0, 1, 0.1), Payload: threadPayload("en", []string{"INBOX"}, true, 2)},
		Point{ID: "a2", Vector: vec(8, 0, 2, 0.2), Payload: threadPayload("en", []string{"Sent"}, true, 3)},
		Point{ID: "shared", Vector: vec(8, 0, 3, 0.05), Payload: map[string]any{"language": "en", "owner": "alice"}},
	)
	mustUpsert(t, s, bob, 8,
		Point{ID: "b1", Vector: vec(8, 0, 1, 0.1), Payload: threadPayload("de", []string{"INBOX"}, true, 1)},
		Point{ID: "shared", Vector: vec(8, 7, 6, 0.05), Payload: map[string]any{"language": "de", "owner": "bob"}},
	)
	for _, c := range []struct {
		user    userid.ID
		count   int
		ids     []string
		owner   string
		langDis map[string]int
	}{
		{alice, 3, []string{"a1", "a2", "shared"}, "alice", map[string]int{"en": 3}},
		{bob, 2, []string{"b1", "shared"}, "bob", map[string]int{"de": 2}},
	} {
		if n, err := s.Count(ctx, c.user); err != nil || n != c.count {
			t.Errorf("Count = %d, %v; want %d", n, err, c.count)
		}
		// A query right at Alice's points: Bob must still see only his own.
		hits, err := s.SearchVector(ctx, c.user, vec(8, 0, 1, 0.1), 10, nil, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		got := ids(hits)
		slices.Sort(got)
		if !slices.Equal(got, c.ids) {
			t.Errorf("SearchVector sees %v, want %v", got, c.ids)
		}
		for _, h := range hits {
			if h.ID == "shared" && h.Payload["owner"] != c.owner {
				t.Errorf("the shared thread shows %v's payload to %v", h.Payload["owner"], c.owner)
			}
		}
		if d, err := s.FieldDistribution(ctx, c.user, "language", 0); err != nil || !reflect.DeepEqual(d, c.langDis) {
			t.Errorf("FieldDistribution = %v, %v; want %v", d, err, c.langDis)
		}
		div, err := s.DiverseSet(ctx, c.user, Filter{}, 10)
		if err != nil {
			t.Fatal(err)
		}
		got = ids(div)
		slices.Sort(got)
		if !slices.Equal(got, c.ids) {
			t.Errorf("DiverseSet sees %v, want %v", got, c.ids)
		}
	}
	// Recreating Bob's collection leaves Alice's alone.
	if err := s.Recreate(ctx, bob, testModel, 8); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Count(ctx, alice); n != 3 {
		t.Errorf("Alice's count after Bob's recreate = %d", n)
	}
	if n, _ := s.Count(ctx, bob); n != 0 {
		t.Errorf("Bob's count after recreate = %d", n)
	}
}

func testUpsertOverwrite(t *testing.T, b backend) {
	ctx := context.Background()
	u := userid.New()
	b.addUser(u)
	mustUpsert(t, b.store, u, 8, Point{ID: "t1", Vector: vec(8, 0, 1, 0), Payload: map[string]any{"language": "en", "v": 1}})
	mustUpsert(t, b.store, u, 8, Point{ID: "t1", Vector: vec(8, 5, 1, 0), Payload: map[string]any{"language": "fr", "v": 2}})
	if n, _ := b.store.Count(ctx, u); n != 1 {
		t.Fatalf("Count after overwrite = %d", n)
	}
	hits, err := b.store.SearchVector(ctx, u, vec(8, 5, 1, 0), 5, nil, Filter{})
	if err != nil || len(hits) != 1 {
		t.Fatalf("SearchVector = %v, %v", hits, err)
	}
	if hits[0].Score < 0.999 || hits[0].Payload["language"] != "fr" || hits[0].Payload["v"] != int64(2) {
		t.Errorf("overwritten point = %+v", hits[0])
	}
	if d, _ := b.store.FieldDistribution(ctx, u, "language", 0); !reflect.DeepEqual(d, map[string]int{"fr": 1}) {
		t.Errorf("distribution after overwrite = %v", d)
	}
}

func testSearchExcludeFilter(t *testing.T, b backend) {
	ctx := context.Background()
	s := b.store
	u := userid.New()
	b.addUser(u)
	// Five points at growing angles from axis 0: p0 nearest, p4 farthest.
	var pts []Point
	for i := range 5 {
		lang := "en"
		if i%2 == 1 {
			lang = "de"
		}
		folders := []string{"INBOX"}
		if i >= 3 {
			folders = []string{"INBOX", "Sent"}
		}
		pts = append(pts, Point{ID: fmt.Sprintf("p%d", i), Vector: vec(16, 0, 1, 0.2*float64(i)), Payload: threadPayload(lang, folders, i%3 == 0, i+1)})
	}
	pts = append(pts, Point{ID: "far", Vector: vec(16, 9, 10, 0), Payload: threadPayload("en", nil, false, 9)})
	mustUpsert(t, s, u, 16, pts...)
	q := vec(16, 0, 1, 0)

	cases := []struct {
		name    string
		limit   int
		exclude []string
		filter  Filter
		want    []string
	}{
		{"nearest first", 3, nil, Filter{}, []string{"p0", "p1", "p2"}},
		{"exclude", 3, []string{"p0", "p2", "nope"}, Filter{}, []string{"p1", "p3", "p4"}},
		{"string filter", 10, nil, Filter{Must: map[string]any{"language": "de"}}, []string{"p1", "p3"}},
		{"list contains", 10, nil, Filter{Must: map[string]any{"folders": "Sent"}}, []string{"p3", "p4"}},
		{"bool filter", 10, nil, Filter{Must: map[string]any{"contains_user_reply": true}}, []string{"p0", "p3"}},
		{"int filter", 10, nil, Filter{Must: map[string]any{"message_count": 3}}, []string{"p2"}},
		{"int64 filter", 10, nil, Filter{Must: map[string]any{"message_count": int64(9)}}, []string{"far"}},
		{"any of", 10, nil, Filter{Must: map[string]any{"language": []string{"de", "xx"}}}, []string{"p1", "p3"}},
		{"two conditions", 10, nil, Filter{Must: map[string]any{"language": "en", "folders": "Sent"}}, []string{"p4"}},
		{"filter and exclude", 10, []string{"p3"}, Filter{Must: map[string]any{"folders": "Sent"}}, []string{"p4"}},
		{"no match", 10, nil, Filter{Must: map[string]any{"language": "ja"}}, []string{}},
		{"missing field", 10, nil, Filter{Must: map[string]any{"nope": "x"}}, []string{}},
	}
	for _, tc := range cases {
		hits, err := s.SearchVector(ctx, u, q, tc.limit, tc.exclude, tc.filter)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := ids(hits); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
		for i := 1; i < len(hits); i++ {
			if hits[i].Score > hits[i-1].Score {
				t.Errorf("%s: not best first: %v", tc.name, hits)
			}
		}
	}
	hits, _ := s.SearchVector(ctx, u, q, 1, nil, Filter{})
	if len(hits) != 1 || math.Abs(float64(hits[0].Score)-1) > 1e-4 {
		t.Errorf("identical vector scores %v, want 1 (cosine)", hits)
	}
	// Scores are cosines: a scaled query gives the same scores.
	scaled := make([]float32, 16)
	for i, x := range vec(16, 0, 1, 0.2) {
		scaled[i] = 7 * x
	}
	hits, _ = s.SearchVector(ctx, u, scaled, 1, nil, Filter{})
	if len(hits) != 1 || hits[0].ID != "p1" || math.Abs(float64(hits[0].Score)-1) > 1e-4 {
		t.Errorf("scaled query: %v", hits)
	}
}

func testFieldDistribution(t *testing.T, b backend) {
	ctx := context.Background()
	u := userid.New()
	b.addUser(u)
	langs := []string{"en", "en", "en", "de", "de", "fr"}
	var pts []Point
	for i, l := range langs {
		folders := []string{"INBOX"}
		if i < 2 {
			folders = append(folders, "Sent")
		}
		pts = append(pts, Point{ID: fmt.Sprintf("t%d", i), Vector: vec(8, i, i+1, 0.3), Payload: threadPayload(l, folders, false, 1)})
	}
	pts = append(pts, Point{ID: "nolang", Vector: vec(8, 1, 2, 0.3), Payload: map[string]any{"subject": "x"}})
	mustUpsert(t, b.store, u, 8, pts...)
	cases := []struct {
		field string
		limit int
		want  map[string]int
	}{
		{"language", 0, map[string]int{"en": 3, "de": 2, "fr": 1}},
		{"language", 2, map[string]int{"en": 3, "de": 2}},
		{"folders", 0, map[string]int{"INBOX": 6, "Sent": 2}},
		{"nope", 0, map[string]int{}},
	}
	for _, tc := range cases {
		got, err := b.store.FieldDistribution(ctx, u, tc.field, tc.limit)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("FieldDistribution(%q, %d) = %v, %v; want %v", tc.field, tc.limit, got, err, tc.want)
		}
	}
}

func testDiverseSet(t *testing.T, b backend) {
	ctx := context.Background()
	u := userid.New()
	b.addUser(u)
	// Two tight clusters of replied threads in English plus other threads.
	var pts []Point
	for i := range 6 {
		pts = append(pts, Point{ID: fmt.Sprintf("c1-%d", i), Vector: vec(8, 0, 1, 0.01*float64(i)), Payload: threadPayload("en", nil, true, 1)})
		pts = append(pts, Point{ID: fmt.Sprintf("c2-%d", i), Vector: vec(8, 4, 5, 0.01*float64(i)), Payload: threadPayload("en", nil, true, 1)})
		pts = append(pts, Point{ID: fmt.Sprintf("de-%d", i), Vector: vec(8, 2, 3, 0.01*float64(i)), Payload: threadPayload("de", nil, true, 1)})
	}
	mustUpsert(t, b.store, u, 8, pts...)
	filter := Filter{Must: map[string]any{"language": "en", "contains_user_reply": true}}
	for range 5 { // the start is random: check several draws
		hits, err := b.store.DiverseSet(ctx, u, filter, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(hits) != 2 {
			t.Fatalf("DiverseSet(2) = %v", ids(hits))
		}
		c0, c1 := hits[0].ID[:2], hits[1].ID[:2]
		if c0 == "de" || c1 == "de" || c0 == c1 {
			t.Errorf("DiverseSet(2) = %v: want one of each English cluster", ids(hits))
		}
		if hits[0].Payload["language"] != "en" {
			t.Errorf("payload missing: %+v", hits[0])
		}
	}
	hits, err := b.store.DiverseSet(ctx, u, filter, 50)
	if err != nil || len(hits) != 12 {
		t.Fatalf("DiverseSet(50) = %d hits, %v; want all 12 matching", len(hits), err)
	}
	seen := map[string]bool{}
	for _, h := range hits {
		if seen[h.ID] {
			t.Errorf("duplicate %s", h.ID)
		}
		seen[h.ID] = true
	}
}

func testRecreate(t *testing.T, b backend) {
	ctx := context.Background()
	s := b.store
	u := userid.New()
	b.addUser(u)
	// Recreate works on a user without a collection too.
	if err := s.Recreate(ctx, u, "model-a", 4); err != nil {
		t.Fatal(err)
	}
	if m, d, ok, err := s.Info(ctx, u); err != nil || !ok || m != "model-a" || d != 4 {
		t.Fatalf("Info after first recreate = %q %d %v %v", m, d, ok, err)
	}
	if err := s.Upsert(ctx, u, "model-a", 4, []Point{{ID: "t1", Vector: vec(4, 0, 1, 0)}, {ID: "t2", Vector: vec(4, 1, 2, 0)}}); err != nil {
		t.Fatal(err)
	}
	if hits, _ := s.SearchVector(ctx, u, vec(4, 0, 1, 0), 5, nil, Filter{}); len(hits) != 2 {
		t.Fatalf("warm-up search: %v", hits)
	}
	if err := s.Recreate(ctx, u, "model-b", 6); err != nil {
		t.Fatal(err)
	}
	if m, d, ok, err := s.Info(ctx, u); err != nil || !ok || m != "model-b" || d != 6 {
		t.Fatalf("Info after recreate = %q %d %v %v", m, d, ok, err)
	}
	if n, _ := s.Count(ctx, u); n != 0 {
		t.Errorf("Count after recreate = %d", n)
	}
	if hits, err := s.SearchVector(ctx, u, vec(6, 0, 1, 0), 5, nil, Filter{}); err != nil || len(hits) != 0 {
		t.Errorf("search after recreate = %v, %v", hits, err)
	}
	if _, err := s.SearchVector(ctx, u, vec(4, 0, 1, 0), 5, nil, Filter{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a query of the old size: %v, want ErrInvalid", err)
	}
	if err := s.Upsert(ctx, u, "model-a", 4, []Point{{ID: "t1", Vector: vec(4, 0, 1, 0)}}); !errors.Is(err, ErrModelMismatch) {
		t.Errorf("old model upsert: %v, want ErrModelMismatch", err)
	}
	if err := s.Upsert(ctx, u, "model-b", 6, []Point{{ID: "t1", Vector: vec(6, 0, 1, 0)}}); err != nil {
		t.Fatal(err)
	}
	hits, err := s.SearchVector(ctx, u, vec(6, 0, 1, 0), 5, nil, Filter{})
	if err != nil || len(hits) != 1 || hits[0].ID != "t1" {
		t.Errorf("search in the new collection = %v, %v", hits, err)
	}
	// Back to the first model: nothing of the old points comes back.
	if err := s.Recreate(ctx, u, "model-a", 4); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Count(ctx, u); n != 0 {
		t.Errorf("Count after recreating the first model again = %d", n)
	}
}

func testPayloadRoundTrip(t *testing.T, b backend) {
	ctx := context.Background()
	u := userid.New()
	b.addUser(u)
	payload := map[string]any{
		"thread_id":           "thr-1",
		"subject":             "Quarterly budget",
		"language":            "en",
		"message_count":       3,
		"score":               0.25,
		"contains_user_reply": true,
		"participants":        []string{"a@example.com", "b@example.com"},
		"messages": []map[string]any{
			{"from": "a@example.com", "date": "2025-01-02T03:04:05Z", "body_cleaned": "Hi", "type": "received"},
			{"from": "me@example.com", "date": "2025-01-03T03:04:05Z", "body_cleaned": strings.Repeat("long ", 400), "type": "sent"},
		},
		"nothing": nil,
	}
	mustUpsert(t, b.store, u, 4, Point{ID: "thr-1", Vector: vec(4, 0, 1, 0), Payload: payload},
		Point{ID: "thr-2", Vector: vec(4, 2, 1, 0)}) // no payload at all
	want := map[string]any{
		"thread_id":           "thr-1",
		"subject":             "Quarterly budget",
		"language":            "en",
		"message_count":       int64(3),
		"score":               0.25,
		"contains_user_reply": true,
		"participants":        []any{"a@example.com", "b@example.com"},
		"messages": []any{
			map[string]any{"from": "a@example.com", "date": "2025-01-02T03:04:05Z", "body_cleaned": "Hi", "type": "received"},
			map[string]any{"from": "me@example.com", "date": "2025-01-03T03:04:05Z", "body_cleaned": strings.Repeat("long ", 400), "type": "sent"},
		},
		"nothing": nil,
	}
	hits, err := b.store.SearchVector(ctx, u, vec(4, 0, 1, 0), 2, nil, Filter{})
	if err != nil || len(hits) != 2 {
		t.Fatalf("SearchVector = %v, %v", hits, err)
	}
	if !reflect.DeepEqual(hits[0].Payload, want) {
		t.Errorf("payload round trip:\n got %#v\nwant %#v", hits[0].Payload, want)
	}
	if !reflect.DeepEqual(hits[1].Payload, map[string]any{"thread_id": "thr-2"}) {
		t.Errorf("empty payload = %#v, want only thread_id", hits[1].Payload)
	}
}

func testInvalid(t *testing.T, b backend) {
	ctx := context.Background()
	s := b.store
	u := userid.New()
	b.addUser(u)
	mustUpsert(t, s, u, 4, Point{ID: "ok", Vector: vec(4, 0, 1, 0)})
	cases := map[string]error{
		"wrong vector size":  s.Upsert(ctx, u, testModel, 4, []Point{{ID: "x", Vector: vec(5, 0, 1, 0)}}),
		"NaN":                s.Upsert(ctx, u, testModel, 4, []Point{{ID: "x", Vector: []float32{float32(math.NaN()), 0, 0, 0}}}),
		"empty id":           s.Upsert(ctx, u, testModel, 4, []Point{{ID: "", Vector: vec(4, 0, 1, 0)}}),
		"reserved tenant_id": s.Upsert(ctx, u, testModel, 4, []Point{{ID: "x", Vector: vec(4, 0, 1, 0), Payload: map[string]any{"tenant_id": "someone"}}}),
		"thread_id mismatch": s.Upsert(ctx, u, testModel, 4, []Point{{ID: "x", Vector: vec(4, 0, 1, 0), Payload: map[string]any{"thread_id": "y"}}}),
		"unencodable":        s.Upsert(ctx, u, testModel, 4, []Point{{ID: "x", Vector: vec(4, 0, 1, 0), Payload: map[string]any{"c": make(chan int)}}}),
		"empty model":        s.Upsert(ctx, u, "", 4, nil),
		"zero dims":          s.Recreate(ctx, u, testModel, 0),
	}
	_, cases["limit 0"] = s.SearchVector(ctx, u, vec(4, 0, 1, 0), 0, nil, Filter{})
	_, cases["limit too big"] = s.SearchVector(ctx, u, vec(4, 0, 1, 0), MaxLimit+1, nil, Filter{})
	_, cases["query size"] = s.SearchVector(ctx, u, vec(3, 0, 1, 0), 5, nil, Filter{})
	_, cases["zero query"] = s.SearchVector(ctx, u, make([]float32, 4), 5, nil, Filter{})
	_, cases["float filter"] = s.SearchVector(ctx, u, vec(4, 0, 1, 0), 5, nil, Filter{Must: map[string]any{"score": 0.5}})
	_, cases["empty list filter"] = s.SearchVector(ctx, u, vec(4, 0, 1, 0), 5, nil, Filter{Must: map[string]any{"language": []string{}}})
	_, cases["tenant filter"] = s.SearchVector(ctx, u, vec(4, 0, 1, 0), 5, nil, Filter{Must: map[string]any{"tenant_id": u.String()}})
	_, cases["diverse n 0"] = s.DiverseSet(ctx, u, Filter{}, 0)
	_, cases["empty field"] = s.FieldDistribution(ctx, u, "", 0)
	for name, err := range cases {
		if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "") {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if n, _ := s.Count(ctx, u); n != 1 {
		t.Errorf("refused calls changed the count to %d", n)
	}
}

func testSemanticSearch(t *testing.T, b backend) {
	ctx := context.Background()
	catalog, err := embed.LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	model := catalog.Offline()
	e, err := embed.New(model, "", embed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	threads := map[string]string{
		"budget":  "Can we move the quarterly budget meeting to Thursday afternoon? The finance team needs the numbers.",
		"invoice": "Your invoice 2024-118 for the website redesign is attached, payment due in 30 days.",
		"hiking":  "The hiking trail near the lake was closed after heavy rain last weekend.",
		"dinner":  "Shall we book the Italian restaurant for dinner on Saturday evening?",
	}
	var texts, tids []string
	for id, text := range threads {
		tids = append(tids, id)
		texts = append(texts, text)
	}
	vecs, err := e.Embed(ctx, texts)
	if err != nil {
		t.Fatal(err)
	}
	u, other := userid.New(), userid.New()
	b.addUser(u)
	b.addUser(other)
	var pts []Point
	for i, id := range tids {
		pts = append(pts, Point{ID: id, Vector: vecs[i], Payload: map[string]any{"subject": texts[i][:20]}})
	}
	if err := b.store.Upsert(ctx, u, model.Key, model.Dimensions, pts); err != nil {
		t.Fatal(err)
	}
	// The other user holds a thread closer to the query than any of u's.
	ov, _ := e.Embed(ctx, []string{"quarterly budget meeting Thursday"})
	if err := b.store.Upsert(ctx, other, model.Key, model.Dimensions, []Point{{ID: "others-budget", Vector: ov[0]}}); err != nil {
		t.Fatal(err)
	}
	hits, err := Search(ctx, b.store, e, u, "quarterly budget meeting Thursday", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(hits) != 2 || hits[0].ID != "budget" {
		t.Errorf("Search = %v, want budget first", ids(hits))
	}
	hits, err = Search(ctx, b.store, e, u, "quarterly budget meeting Thursday", 4, []string{"budget"})
	if err != nil || slices.Contains(ids(hits), "budget") || slices.Contains(ids(hits), "others-budget") {
		t.Errorf("Search with exclude = %v, %v", ids(hits), err)
	}
	if hits, err := Search(ctx, b.store, e, userid.New(), "budget", 2, nil); err != nil || len(hits) != 0 {
		t.Errorf("Search of a user without a collection = %v, %v", hits, err)
	}
	// An embedder of another size is refused.
	big, _ := catalog.Lookup("text-embedding-3-small")
	other3, err := embed.New(big, "sk-unused", embed.Options{BaseURL: "http://127.0.0.1:1/v1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Search(ctx, b.store, other3, u, "budget", 2, nil); !errors.Is(err, ErrModelMismatch) {
		t.Errorf("Search with another model's embedder: %v, want ErrModelMismatch", err)
	}
}
