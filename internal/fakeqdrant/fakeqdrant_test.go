package fakeqdrant

import (
	"context"
	"slices"
	"testing"

	"github.com/qdrant/go-client/qdrant"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestServer: through the go-client, the fake stores points, answers
// filtered queries and counts, records each request as sent (with its
// api-key), hands out snapshots that do not alias its state, and refuses
// what it does not implement.
func TestServer(t *testing.T) {
	ctx := context.Background()
	f := New(t)
	c, err := qdrant.NewClient(&qdrant.Config{Host: "127.0.0.1", Port: f.Port(), APIKey: "k", SkipCompatibilityCheck: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateCollection(ctx, &qdrant.CreateCollection{CollectionName: "c",
		VectorsConfig: qdrant.NewVectorsConfig(&qdrant.VectorParams{Size: 2, Distance: qdrant.Distance_Cosine})}); err != nil {
		t.Fatal(err)
	}
	ids := []string{"00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000003"}
	var pts []*qdrant.PointStruct
	for i, tenant := range []string{"a", "b", "a"} {
		pts = append(pts, &qdrant.PointStruct{Id: qdrant.NewID(ids[i]), Vectors: qdrant.NewVectorsDense([]float32{1, float32(i)}),
			Payload: qdrant.NewValueMap(map[string]any{"tenant_id": tenant, "n": int64(i)})})
	}
	if _, err := c.Upsert(ctx, &qdrant.UpsertPoints{CollectionName: "c", Points: pts}); err != nil {
		t.Fatal(err)
	}

	tenantA := &qdrant.Filter{Must: []*qdrant.Condition{qdrant.NewMatchKeyword("tenant_id", "a")}}
	cases := []struct {
		name   string
		filter *qdrant.Filter
		want   []string
		tenant string // what MustKeyword finds in the recorded filter
	}{
		{"no filter", nil, ids, ""},
		{"tenant", tenantA, []string{ids[0], ids[2]}, "a"},
		{"tenant less an id", &qdrant.Filter{Must: tenantA.Must, MustNot: []*qdrant.Condition{qdrant.NewHasID(qdrant.NewID(ids[2]))}}, ids[:1], "a"},
		{"integer", &qdrant.Filter{Must: []*qdrant.Condition{qdrant.NewMatchInt("n", 1)}}, ids[1:2], ""},
		{"should", &qdrant.Filter{Should: []*qdrant.Condition{qdrant.NewMatchInt("n", 0), qdrant.NewMatchInt("n", 2)}}, []string{ids[0], ids[2]}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.Reset()
			hits, err := c.Query(ctx, &qdrant.QueryPoints{CollectionName: "c", Query: qdrant.NewQueryDense([]float32{1, 0}), Filter: tc.filter})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, h := range hits {
				got = append(got, h.GetId().GetUuid())
			}
			if !slices.Equal(got, tc.want) { // best first: the smaller the tilt, the nearer
				t.Errorf("query = %v, want %v", got, tc.want)
			}
			if n, err := c.Count(ctx, &qdrant.CountPoints{CollectionName: "c", Filter: tc.filter}); err != nil || int(n) != len(tc.want) {
				t.Errorf("count = %d, %v", n, err)
			}
			calls := f.Calls("Points/Query")
			if len(calls) != 1 || calls[0].Name() != "Query" || !slices.Equal(calls[0].APIKey, []string{"k"}) {
				t.Fatalf("recorded %+v", calls)
			}
			filter, scoped := calls[0].Filter()
			if got := MustKeyword(filter, "tenant_id"); !scoped || got != tc.tenant {
				t.Errorf("recorded filter %v (scoped %v): tenant %q, want %q", filter, scoped, got, tc.tenant)
			}
		})
	}

	snap, ok := f.Collection("c")
	if !ok || snap.Size != 2 || len(snap.Points) != 3 || snap.Points[0].ID != ids[0] {
		t.Fatalf("snapshot %+v", snap)
	}
	snap.Points[0].Payload["tenant_id"] = qdrant.NewValueString("b")
	if again, _ := f.Collection("c"); again.Points[0].Payload["tenant_id"].GetStringValue() != "a" {
		t.Error("a snapshot aliases the server's points")
	}
	if names := f.CollectionNames(); !slices.Equal(names, []string{"c"}) {
		t.Errorf("collections %v", names)
	}
	_, err = c.GetPointsClient().Recommend(ctx, &qdrant.RecommendPoints{CollectionName: "c"})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("recommend: %v, want Unimplemented", err)
	}
}
