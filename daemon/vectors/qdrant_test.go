package vectors

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qdrant/go-client/qdrant"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/internal/fakeqdrant"
)

func TestPointID(t *testing.T) {
	// RFC 9562's algorithm, checked against Python's uuid.uuid5.
	if got := uuid5("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "python.org"); got != "886313e1-3b8a-5372-9b90-0c9aee199e5d" {
		t.Errorf("uuid5(NAMESPACE_DNS, python.org) = %s", got)
	}
	// Pinned: these ids are in every Qdrant collection; they must never change.
	for thread, want := range map[string]string{
		"thread-1":               "529583ee-ffd6-5eeb-a1a2-688b36865a81",
		"<CAF=x@mail.gmail.com>": "0ed927ba-c0b1-5d3a-a778-ded005f17c58",
	} {
		if got := PointID(thread); got != want {
			t.Errorf("PointID(%q) = %s, want %s", thread, got, want)
		}
	}
	a, b := userid.New(), userid.New()
	if TenantPointID(a, "t") == TenantPointID(b, "t") || TenantPointID(a, "t") == PointID("t") {
		t.Error("TenantPointID must differ between users and from PointID")
	}
	if TenantPointID(a, "t") != uuid5(a.String(), "t") {
		t.Error("TenantPointID is UUIDv5 in the user's namespace")
	}
}

func TestParseQdrantURL(t *testing.T) {
	cases := []struct {
		in      string
		want    QdrantConfig
		wantErr string
	}{
		{in: "qdrant://qdrant.internal", want: QdrantConfig{Host: "qdrant.internal", Tenancy: TenancyCollection}},
		{in: "qdrant://10.0.0.5:6334?api_key=k3y&tenancy=payload&tls=true", want: QdrantConfig{Host: "10.0.0.5", Port: 6334, APIKey: "k3y", UseTLS: true, Tenancy: TenancyPayload}},
		{in: "qdrant://[::1]:7000?tenancy=collection&tls=0", want: QdrantConfig{Host: "::1", Port: 7000, Tenancy: TenancyCollection}},
		{in: "qdrant://h?api_key=a%2Fb%3D", want: QdrantConfig{Host: "h", APIKey: "a/b=", Tenancy: TenancyCollection}},
		{in: "http://h:6334", wantErr: "scheme"},
		{in: "qdrant://", wantErr: "no host"},
		{in: "qdrant://h:99999", wantErr: "port"},
		{in: "qdrant://h?tenancy=shared", wantErr: "tenancy"},
		{in: "qdrant://h?tls=maybe", wantErr: "tls"},
		{in: "qdrant://h?apikey=secret-typo", wantErr: "unknown"},
		{in: "qdrant://user:secret-pass@h", wantErr: "user info"},
		{in: "qdrant://h/collection", wantErr: "path"},
	}
	for _, tc := range cases {
		got, err := ParseQdrantURL(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseQdrantURL(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("error repeats a secret: %v", err)
			}
			continue
		}
		if err != nil || got.Host != tc.want.Host || got.Port != tc.want.Port || got.APIKey != tc.want.APIKey || got.UseTLS != tc.want.UseTLS || got.Tenancy != tc.want.Tenancy {
			t.Errorf("ParseQdrantURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestOpen(t *testing.T) {
	db := openSQL(t, sqliteURL(t))
	for _, url := range []string{"", "embedded"} {
		b, err := Open(url, db, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := b.(*Embedded); !ok {
			t.Errorf("Open(%q) = %T", url, b)
		}
		b.Close()
	}
	f := fakeqdrant.New(t)
	b, err := Open(fmt.Sprintf("qdrant://127.0.0.1:%d?tenancy=payload&api_key=k", f.Port()), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if q, ok := b.(*Qdrant); !ok || q.Tenancy() != TenancyPayload {
		t.Errorf("Open(qdrant) = %T", b)
	}
	if _, err := b.Count(context.Background(), userid.New()); err != nil {
		t.Errorf("Count through Open: %v", err)
	}
	for _, bad := range []string{"redis://h:6379", "qdrant://h?tenancy=x"} {
		if _, err := Open(bad, db, Options{}); err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
	if _, err := Open("embedded", nil, Options{}); err == nil {
		t.Error("embedded without a database accepted")
	}
}

// tenantOf returns the tenant a recorded request is scoped to ("" when
// none), and whether it is a request that reads, counts or deletes points.
func tenantOf(c fakeqdrant.Call) (string, bool) {
	f, scoped := c.Filter()
	return fakeqdrant.MustKeyword(f, "tenant_id"), scoped
}

func TestQdrantCollectionTenancyWire(t *testing.T) {
	ctx := context.Background()
	f := fakeqdrant.New(t)
	q, err := NewQdrant(QdrantConfig{Host: "127.0.0.1", Port: f.Port(), APIKey: "secret-key-1", Tenancy: TenancyCollection})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	user := userid.MustParse("0f8fad5b-d9cb-469f-a165-70867728950e")
	const coll = "user-0f8fad5bd9cb469fa16570867728950e"
	if UserCollection(user) != coll {
		t.Fatalf("UserCollection = %s", UserCollection(user))
	}
	err = q.Upsert(ctx, user, "offline-hash-384", 4, []Point{
		{ID: "thread-1", Vector: vec(4, 0, 1, 0), Payload: map[string]any{"language": "en"}},
		{ID: "<CAF=x@mail.gmail.com>", Vector: vec(4, 1, 2, 0)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if names := f.CollectionNames(); !slices.Equal(names, []string{coll}) {
		t.Errorf("collections = %v, want only %s", names, coll)
	}
	creates := f.Calls("Collections/Create")
	if len(creates) != 1 {
		t.Fatalf("%d creates", len(creates))
	}
	cr := creates[0].Req.(*qdrant.CreateCollection)
	if cr.GetCollectionName() != coll || cr.GetVectorsConfig().GetParams().GetSize() != 4 || cr.GetVectorsConfig().GetParams().GetDistance() != qdrant.Distance_Cosine {
		t.Errorf("create = %v", cr)
	}
	if cr.GetMetadata()["inboxd_model"].GetStringValue() != "offline-hash-384" || cr.GetMetadata()["inboxd_user"].GetStringValue() != user.String() {
		t.Errorf("create metadata = %v", cr.GetMetadata())
	}
	ups := f.Calls("Points/Upsert")
	if len(ups) != 1 {
		t.Fatalf("%d upserts", len(ups))
	}
	up := ups[0].Req.(*qdrant.UpsertPoints)
	var gotIDs []string
	for _, p := range up.GetPoints() {
		gotIDs = append(gotIDs, p.GetId().GetUuid())
		if _, ok := p.GetPayload()["tenant_id"]; ok {
			t.Error("collection tenancy stamped tenant_id")
		}
		if p.GetPayload()["thread_id"].GetStringValue() == "" {
			t.Error("point without thread_id")
		}
	}
	if up.GetCollectionName() != coll || !up.GetWait() || !slices.Equal(gotIDs, []string{"529583ee-ffd6-5eeb-a1a2-688b36865a81", "0ed927ba-c0b1-5d3a-a778-ded005f17c58"}) {
		t.Errorf("upsert to %s wait=%v ids %v", up.GetCollectionName(), up.GetWait(), gotIDs)
	}

	f.Reset()
	hits, err := q.SearchVector(ctx, user, vec(4, 0, 1, 0), 5, []string{"<CAF=x@mail.gmail.com>"}, Filter{Must: map[string]any{"language": "en"}})
	if err != nil || len(hits) != 1 || hits[0].ID != "thread-1" {
		t.Fatalf("SearchVector = %v, %v", hits, err)
	}
	qr := f.Calls("Points/Query")[0].Req.(*qdrant.QueryPoints)
	if qr.GetCollectionName() != coll || qr.GetLimit() != 5 || !qr.GetWithPayload().GetEnable() {
		t.Errorf("query = %v", qr)
	}
	if must := qr.GetFilter().GetMust(); len(must) != 1 || must[0].GetField().GetKey() != "language" {
		t.Errorf("query filter must = %v (collection tenancy adds no tenant condition)", must)
	}
	if mn := qr.GetFilter().GetMustNot(); len(mn) != 1 || mn[0].GetHasId().GetHasId()[0].GetUuid() != "0ed927ba-c0b1-5d3a-a778-ded005f17c58" {
		t.Errorf("query must_not = %v, want has_id of the excluded thread's point id", mn)
	}

	// Recreate drops the collection and creates it with the new size.
	f.Reset()
	if err := q.Recreate(ctx, user, "text-embedding-3-small", 6); err != nil {
		t.Fatal(err)
	}
	var methods []string
	for _, c := range f.Calls("") {
		methods = append(methods, c.Name())
	}
	if i, j := slices.Index(methods, "Delete"), slices.Index(methods, "Create"); i < 0 || j < i {
		t.Errorf("recreate calls %v: want Delete then Create", methods)
	}
	if cr := f.Calls("Collections/Create")[0].Req.(*qdrant.CreateCollection); cr.GetVectorsConfig().GetParams().GetSize() != 6 || cr.GetCollectionName() != coll {
		t.Errorf("recreate = %v", cr)
	}
	// Every request carried the API key.
	for _, c := range f.Calls("") {
		if !slices.Equal(c.APIKey, []string{"secret-key-1"}) {
			t.Errorf("%s sent api-key %v", c.Method, c.APIKey)
		}
	}
}

func TestQdrantPayloadTenancyWire(t *testing.T) {
	ctx := context.Background()
	f := fakeqdrant.New(t)
	q, err := NewQdrant(QdrantConfig{Host: "127.0.0.1", Port: f.Port(), APIKey: "secret-key-2", Tenancy: TenancyPayload})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	alice, bob := userid.New(), userid.New()

	// workload runs every Store method for a user.
	workload := func(user userid.ID, n int) {
		t.Helper()
		var pts []Point
		for i := range n {
			lang := []string{"en", "de", "fr"}[i%3]
			pts = append(pts, Point{ID: fmt.Sprintf("thread-%d", i), Vector: vec(8, i, i+1, 0.3), Payload: map[string]any{"language": lang, "contains_user_reply": i%2 == 0}})
		}
		if err := q.Upsert(ctx, user, testModel, 8, pts); err != nil {
			t.Fatal(err)
		}
		if c, err := q.Count(ctx, user); err != nil || c != n {
			t.Fatalf("Count = %d, %v; want %d", c, err, n)
		}
		if _, err := q.SearchVector(ctx, user, vec(8, 0, 1, 0), 5, []string{"thread-0"}, Filter{Must: map[string]any{"language": "en"}}); err != nil {
			t.Fatal(err)
		}
		d, err := q.FieldDistribution(ctx, user, "language", 0)
		if err != nil || d["en"]+d["de"]+d["fr"] != n {
			t.Fatalf("FieldDistribution = %v, %v", d, err)
		}
		if _, err := q.DiverseSet(ctx, user, Filter{Must: map[string]any{"contains_user_reply": true}}, 3); err != nil {
			t.Fatal(err)
		}
		if _, _, ok, err := q.Info(ctx, user); err != nil || !ok {
			t.Fatalf("Info = %v, %v", ok, err)
		}
	}
	// checkScoped asserts that every read/count/scroll/delete since the last
	// reset was scoped to user, and every upserted point stamped with user.
	checkScoped := func(user userid.ID, wantKinds ...string) {
		t.Helper()
		kinds := map[string]bool{}
		for _, c := range f.Calls("") {
			if !slices.Equal(c.APIKey, []string{"secret-key-2"}) {
				t.Errorf("%s sent api-key %v", c.Method, c.APIKey)
			}
			if got, scoped := tenantOf(c); scoped {
				kinds[c.Name()] = true
				if got != user.String() {
					t.Errorf("%s without the tenant filter of %s: %v", c.Method, user, c.Req)
				}
			}
			if up, ok := c.Req.(*qdrant.UpsertPoints); ok {
				for _, p := range up.GetPoints() {
					if got := p.GetPayload()["tenant_id"].GetStringValue(); got != user.String() {
						t.Errorf("upsert to %s of a point with tenant_id %q, want %s", up.GetCollectionName(), got, user)
					}
					if up.GetCollectionName() != registryCollection {
						thread := p.GetPayload()["thread_id"].GetStringValue()
						if p.GetId().GetUuid() != TenantPointID(user, thread) {
							t.Errorf("point id %s of %q, want TenantPointID", p.GetId().GetUuid(), thread)
						}
					}
				}
			}
		}
		for _, k := range wantKinds {
			if !kinds[k] {
				t.Errorf("no %s request seen (the check would prove nothing)", k)
			}
		}
	}

	f.Reset()
	workload(alice, 300) // more than one scroll page
	checkScoped(alice, "Scroll", "Count", "Query")
	if scrolls := f.Calls("Points/Scroll"); len(scrolls) < 3 {
		t.Errorf("%d scrolls: the distribution of 300 points should page", len(scrolls))
	}
	f.Reset()
	workload(bob, 5)
	checkScoped(bob, "Scroll", "Count", "Query")

	if names := f.CollectionNames(); !slices.Equal(names, []string{"inboxd-" + testModel, registryCollection}) {
		t.Errorf("collections = %v", names)
	}
	for _, name := range f.CollectionNames() {
		c, _ := f.Collection(name)
		idx := c.Indexes["tenant_id"]
		if idx == nil || idx.GetFieldType() != qdrant.FieldType_FieldTypeKeyword || !idx.GetFieldIndexParams().GetKeywordIndexParams().GetIsTenant() {
			t.Errorf("%s: tenant_id index = %v, want keyword is_tenant", name, idx)
		}
		if h := c.Create.GetHnswConfig(); h.GetM() != 0 || h.GetPayloadM() != 16 {
			t.Errorf("%s: hnsw = %v, want m 0, payload_m 16", name, h)
		}
	}

	// Recreate for another model deletes Alice's points by the tenant filter
	// only, and moves her to the new model's collection.
	f.Reset()
	if err := q.Recreate(ctx, alice, "model-b", 4); err != nil {
		t.Fatal(err)
	}
	checkScoped(alice, "Delete")
	dels := f.Calls("Points/Delete")
	var from []string
	for _, d := range dels {
		from = append(from, d.Req.(*qdrant.DeletePoints).GetCollectionName())
	}
	if !slices.Contains(from, "inboxd-"+testModel) {
		t.Errorf("recreate deleted from %v, want the old model's collection", from)
	}
	if m, d, ok, _ := q.Info(ctx, alice); m != "model-b" || d != 4 || !ok {
		t.Errorf("Info after recreate = %s %d %v", m, d, ok)
	}
	if n, _ := q.Count(ctx, bob); n != 5 {
		t.Errorf("Bob's points after Alice's recreate: %d", n)
	}
	if n, _ := q.Count(ctx, alice); n != 0 {
		t.Errorf("Alice's points after recreate: %d", n)
	}
	old, ok := f.Collection("inboxd-" + testModel)
	if !ok {
		t.Fatal("the old model's collection is gone")
	}
	for _, p := range old.Points {
		if p.Payload["tenant_id"].GetStringValue() == alice.String() {
			t.Error("one of Alice's points survived in the old collection")
		}
	}
}

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "fake qdrant"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func TestQdrantTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	f := fakeqdrant.New(t, grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	q, err := NewQdrant(QdrantConfig{Host: "127.0.0.1", Port: f.Port(), APIKey: "tls-key", UseTLS: true,
		TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	u := userid.New()
	if err := q.Upsert(ctx, u, testModel, 4, []Point{{ID: "t", Vector: vec(4, 0, 1, 0)}}); err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	if calls := f.Calls(""); len(calls) == 0 || !slices.Equal(calls[0].APIKey, []string{"tls-key"}) {
		t.Errorf("calls over TLS: %v", calls)
	}

	// A client that does not trust the certificate gets nowhere.
	untrusting, err := NewQdrant(QdrantConfig{Host: "127.0.0.1", Port: f.Port(), UseTLS: true,
		TLSConfig: &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer untrusting.Close()
	if _, err := untrusting.Count(ctx, u); err == nil {
		t.Error("an untrusted certificate was accepted")
	}
	// Plaintext against a TLS server fails too.
	plain, _ := NewQdrant(QdrantConfig{Host: "127.0.0.1", Port: f.Port()})
	defer plain.Close()
	if _, err := plain.Count(ctx, u); err == nil {
		t.Error("plaintext against TLS succeeded")
	}
}
