package vectors

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/qdrant/go-client/qdrant"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/inboxd/inboxd/daemon/userid"
)

// Tenancy is how the Qdrant backend separates users.
type Tenancy string

const (
	// TenancyCollection keeps one collection per user,
	// "user-{uuid without dashes}", created on first use.
	TenancyCollection Tenancy = "collection"
	// TenancyPayload keeps one collection per embedding model,
	// "inboxd-{model key}", with a tenant_id keyword index marked is_tenant;
	// every point carries tenant_id and every request is filtered by it.
	// Qdrant recommends it beyond about a thousand tenants. Which model a
	// user's points live under is recorded in the collection
	// "inboxd_tenants" (one point per user, filtered by tenant_id as well).
	TenancyPayload Tenancy = "payload"
)

// Names in Qdrant.
const (
	userCollectionPrefix  = "user-"
	modelCollectionPrefix = "inboxd-"
	// registryCollection maps users to their model in payload tenancy. Its
	// "_" keeps it apart from every "inboxd-{model}" name.
	registryCollection = "inboxd_tenants"
	// metaModel and metaUser are collection metadata (Qdrant 1.16+) naming
	// a collection's model and, in collection tenancy, its user. An older
	// server drops them: Info then reports model "" and only the vector
	// size is checked.
	metaModel = "inboxd_model"
	metaUser  = "inboxd_user"
	// scrollPage is the page size of FieldDistribution's scroll.
	scrollPage = 256
	// qdrantUpsertBatch bounds the points of one upsert request, keeping
	// requests of large vectors with thread payloads well under gRPC
	// message limits.
	qdrantUpsertBatch = 64
	// defaultQdrantPort is Qdrant's gRPC port.
	defaultQdrantPort = 6334
)

// QdrantConfig is where and how to reach Qdrant.
type QdrantConfig struct {
	Host    string
	Port    int // 0 means 6334 (gRPC)
	APIKey  string
	UseTLS  bool
	Tenancy Tenancy // "" means TenancyCollection
	// TLSConfig is used with UseTLS; nil means the system roots, TLS 1.3.
	TLSConfig *tls.Config
	// DialOptions are extra gRPC dial options (tests, proxies).
	DialOptions []grpc.DialOption
}

// ParseQdrantURL reads a vectors_url of the form
//
//	qdrant://HOST[:PORT][?api_key=KEY][&tenancy=collection|payload][&tls=true]
//
// PORT is the gRPC port (default 6334). Errors never repeat the URL (it may
// hold the key).
func ParseQdrantURL(raw string) (QdrantConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return QdrantConfig{}, errors.New("vectors: qdrant url does not parse")
	}
	if u.Scheme != "qdrant" {
		return QdrantConfig{}, fmt.Errorf("vectors: qdrant url scheme %q, want qdrant://", u.Scheme)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") {
		return QdrantConfig{}, errors.New("vectors: qdrant url takes no user info or path (the key goes in ?api_key=)")
	}
	cfg := QdrantConfig{Host: u.Hostname(), Tenancy: TenancyCollection}
	if cfg.Host == "" {
		return QdrantConfig{}, errors.New("vectors: qdrant url has no host")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			return QdrantConfig{}, fmt.Errorf("vectors: qdrant url port %q", p)
		}
		cfg.Port = n
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return QdrantConfig{}, errors.New("vectors: qdrant url query does not parse")
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "api_key":
			cfg.APIKey = v
		case "tenancy":
			cfg.Tenancy = Tenancy(v)
		case "tls":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return QdrantConfig{}, fmt.Errorf("vectors: qdrant url tls=%q is not a boolean", v)
			}
			cfg.UseTLS = b
		default:
			return QdrantConfig{}, fmt.Errorf("vectors: qdrant url parameter %q unknown (want api_key, tenancy, tls)", k)
		}
	}
	if cfg.Tenancy != TenancyCollection && cfg.Tenancy != TenancyPayload {
		return QdrantConfig{}, fmt.Errorf("vectors: qdrant tenancy %q, want collection or payload", cfg.Tenancy)
	}
	return cfg, nil
}

// Qdrant is the Qdrant backend (gRPC). Safe for concurrent use.
type Qdrant struct {
	client  *qdrant.Client
	tenancy Tenancy
	// registryReady is set once the registry collection (payload tenancy)
	// is known to exist, sparing a round trip per call after that.
	registryReady atomic.Bool
}

var _ Store = (*Qdrant)(nil)

// NewQdrant connects lazily to Qdrant (the first call dials).
func NewQdrant(cfg QdrantConfig) (*Qdrant, error) {
	if cfg.Tenancy == "" {
		cfg.Tenancy = TenancyCollection
	}
	if cfg.Tenancy != TenancyCollection && cfg.Tenancy != TenancyPayload {
		return nil, fmt.Errorf("vectors: qdrant tenancy %q, want collection or payload", cfg.Tenancy)
	}
	if cfg.Host == "" {
		return nil, errors.New("vectors: qdrant host is empty")
	}
	port := cfg.Port
	if port == 0 {
		port = defaultQdrantPort
	}
	c, err := qdrant.NewClient(&qdrant.Config{
		Host:                   cfg.Host,
		Port:                   port,
		APIKey:                 cfg.APIKey,
		UseTLS:                 cfg.UseTLS,
		TLSConfig:              cfg.TLSConfig,
		GrpcOptions:            cfg.DialOptions,
		SkipCompatibilityCheck: true, // no blocking round trip at start-up
	})
	if err != nil {
		return nil, fmt.Errorf("vectors: qdrant client for %s: %w", net.JoinHostPort(cfg.Host, strconv.Itoa(port)), err)
	}
	return &Qdrant{client: c, tenancy: cfg.Tenancy}, nil
}

// Close closes the connections.
func (q *Qdrant) Close() error { return q.client.Close() }

// Tenancy reports the tenancy mode.
func (q *Qdrant) Tenancy() Tenancy { return q.tenancy }

// UserCollection is the collection of user in collection tenancy.
func UserCollection(user userid.ID) string {
	return userCollectionPrefix + strings.ReplaceAll(user.String(), "-", "")
}

// ModelCollection is the collection of a model in payload tenancy:
// "inboxd-" and the model key with characters outside [A-Za-z0-9._-]
// replaced by "_".
func ModelCollection(model string) string {
	var b strings.Builder
	b.WriteString(modelCollectionPrefix)
	for _, r := range model {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// scope returns the filter of every request that reads, counts, scrolls or
// deletes a user's points, extending f. In payload tenancy this is the one
// place the tenant condition (tenant_id = the user's uuid) is added, and
// every such request is built with it. In collection tenancy the collection
// is the user's own and f is returned as is.
func (q *Qdrant) scope(user userid.ID, f *qdrant.Filter) *qdrant.Filter {
	if q.tenancy != TenancyPayload {
		return f
	}
	out := &qdrant.Filter{Must: []*qdrant.Condition{qdrant.NewMatchKeyword(fieldTenant, user.String())}}
	if f != nil {
		out.Must = append(out.Must, f.Must...)
		out.MustNot = f.MustNot
		out.Should = f.Should
		out.MinShould = f.MinShould
	}
	return out
}

// stamp returns the stored payload of a user's point: in payload tenancy
// with tenant_id set.
func (q *Qdrant) stamp(user userid.ID, payload map[string]any) (map[string]*qdrant.Value, error) {
	vm, err := qdrant.TryValueMap(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrInvalid, err)
	}
	if q.tenancy == TenancyPayload {
		vm[fieldTenant] = qdrant.NewValueString(user.String())
	}
	return vm, nil
}

// placement is where a user's points live.
type placement struct {
	collection string
	model      string
	dims       int
	exists     bool
}

// place finds the user's collection: in collection tenancy the user's own
// (its size and model from the collection), in payload tenancy the one of
// the model the registry records for the user.
func (q *Qdrant) place(ctx context.Context, user userid.ID) (placement, error) {
	if q.tenancy == TenancyCollection {
		name := UserCollection(user)
		ok, err := q.client.CollectionExists(ctx, name)
		if err != nil {
			return placement{}, qerr("collection exists", err)
		}
		if !ok {
			return placement{collection: name}, nil
		}
		info, err := q.client.GetCollectionInfo(ctx, name)
		if isNotFound(err) {
			return placement{collection: name}, nil
		}
		if err != nil {
			return placement{}, qerr("collection info", err)
		}
		cfg := info.GetConfig()
		return placement{
			collection: name,
			model:      cfg.GetMetadata()[metaModel].GetStringValue(),
			dims:       int(cfg.GetParams().GetVectorsConfig().GetParams().GetSize()),
			exists:     true,
		}, nil
	}
	if !q.registryReady.Load() {
		ok, err := q.client.CollectionExists(ctx, registryCollection)
		if err != nil {
			return placement{}, qerr("collection exists", err)
		}
		if !ok {
			return placement{}, nil // nobody has points yet
		}
		q.registryReady.Store(true)
	}
	limit := uint32(1)
	pts, err := q.client.Scroll(ctx, &qdrant.ScrollPoints{
		CollectionName: registryCollection,
		Filter:         q.scope(user, nil),
		Limit:          &limit,
		WithPayload:    qdrant.NewWithPayload(true),
	})
	if isNotFound(err) {
		return placement{}, nil
	}
	if err != nil {
		return placement{}, qerr("read tenant registry", err)
	}
	if len(pts) == 0 {
		return placement{}, nil
	}
	p := pts[0].GetPayload()
	model := p["model"].GetStringValue()
	return placement{collection: ModelCollection(model), model: model, dims: int(p["dims"].GetIntegerValue()), exists: true}, nil
}

// register records the user's model and size in the registry (payload tenancy).
func (q *Qdrant) register(ctx context.Context, user userid.ID, model string, dims int) error {
	if !q.registryReady.Load() {
		if err := q.ensureCollection(ctx, registryCollection, "", 1, user); err != nil {
			return err
		}
		q.registryReady.Store(true)
	}
	payload, err := q.stamp(user, map[string]any{"model": model, "dims": int64(dims)})
	if err != nil {
		return err
	}
	wait := true
	_, err = q.client.Upsert(ctx, &qdrant.UpsertPoints{
		CollectionName: registryCollection,
		Wait:           &wait,
		Points: []*qdrant.PointStruct{{
			Id:      qdrant.NewID(user.String()),
			Vectors: qdrant.NewVectorsDense([]float32{1}),
			Payload: payload,
		}},
	})
	return qerr("register tenant", err)
}

// ensureCollection creates a collection of dims-sized cosine vectors unless
// it exists; an existing one must have that size. In payload tenancy it gets
// the tenant index (and per-tenant HNSW graphs); in collection tenancy user
// is recorded in its metadata.
func (q *Qdrant) ensureCollection(ctx context.Context, name, model string, dims int, user userid.ID) error {
	check := func() (bool, error) {
		ok, err := q.client.CollectionExists(ctx, name)
		if err != nil || !ok {
			return false, qerr("collection exists", err)
		}
		info, err := q.client.GetCollectionInfo(ctx, name)
		if err != nil {
			return false, qerr("collection info", err)
		}
		if size := info.GetConfig().GetParams().GetVectorsConfig().GetParams().GetSize(); size != uint64(dims) {
			return true, fmt.Errorf("%w: qdrant collection %s has %d-dimensional vectors, not %d", ErrModelMismatch, name, size, dims)
		}
		return true, nil
	}
	if ok, err := check(); ok || err != nil {
		return err
	}
	meta := map[string]any{}
	if model != "" {
		meta[metaModel] = model
	}
	req := &qdrant.CreateCollection{
		CollectionName: name,
		VectorsConfig:  qdrant.NewVectorsConfig(&qdrant.VectorParams{Size: uint64(dims), Distance: qdrant.Distance_Cosine}),
	}
	if q.tenancy == TenancyPayload {
		// Qdrant's multitenancy advice: per-tenant graphs instead of one
		// global graph, which a tenant's filtered search would not use.
		m, payloadM := uint64(0), uint64(16)
		req.HnswConfig = &qdrant.HnswConfigDiff{M: &m, PayloadM: &payloadM}
	} else {
		meta[metaUser] = user.String()
	}
	req.Metadata = qdrant.NewValueMap(meta)
	if err := q.client.CreateCollection(ctx, req); err != nil {
		// Another process may have created it meanwhile.
		if ok, cerr := check(); ok || cerr != nil {
			return cerr
		}
		return qerr("create collection", err)
	}
	if q.tenancy == TenancyPayload {
		wait, isTenant := true, true
		ft := qdrant.FieldType_FieldTypeKeyword
		if _, err := q.client.CreateFieldIndex(ctx, &qdrant.CreateFieldIndexCollection{
			CollectionName:   name,
			Wait:             &wait,
			FieldName:        fieldTenant,
			FieldType:        &ft,
			FieldIndexParams: qdrant.NewPayloadIndexParamsKeyword(&qdrant.KeywordIndexParams{IsTenant: &isTenant}),
		}); err != nil {
			return qerr("create tenant index", err)
		}
	}
	return nil
}

// Info implements Store.
func (q *Qdrant) Info(ctx context.Context, user userid.ID) (string, int, bool, error) {
	if err := checkUser(user); err != nil {
		return "", 0, false, err
	}
	pl, err := q.place(ctx, user)
	return pl.model, pl.dims, pl.exists, err
}

// Count implements Store.
func (q *Qdrant) Count(ctx context.Context, user userid.ID) (int, error) {
	if err := checkUser(user); err != nil {
		return 0, err
	}
	pl, err := q.place(ctx, user)
	if err != nil || !pl.exists {
		return 0, err
	}
	exact := true
	n, err := q.client.Count(ctx, &qdrant.CountPoints{CollectionName: pl.collection, Filter: q.scope(user, nil), Exact: &exact})
	if isNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, qerr("count", err)
	}
	return int(n), nil
}

// Upsert implements Store.
func (q *Qdrant) Upsert(ctx context.Context, user userid.ID, model string, dims int, points []Point) error {
	if err := checkUser(user); err != nil {
		return err
	}
	if err := checkCollectionArgs(model, dims); err != nil {
		return err
	}
	prepared, err := preparePoints(points, dims)
	if err != nil {
		return err
	}
	structs := make([]*qdrant.PointStruct, len(prepared))
	for i, p := range prepared {
		payload, err := q.stamp(user, p.payload)
		if err != nil {
			return err
		}
		structs[i] = &qdrant.PointStruct{Id: qdrant.NewID(q.pointID(user, p.id)), Vectors: qdrant.NewVectorsDense(p.vector), Payload: payload}
	}
	pl, err := q.place(ctx, user)
	if err != nil {
		return err
	}
	switch {
	// Model "": a Qdrant before 1.16 keeps no collection metadata; the size still guards.
	case pl.exists && ((pl.model != "" && pl.model != model) || pl.dims != dims):
		return fmt.Errorf("%w: the collection holds %q (%d dimensions), not %q (%d)", ErrModelMismatch, pl.model, pl.dims, model, dims)
	case !pl.exists && q.tenancy == TenancyCollection:
		if err := q.ensureCollection(ctx, pl.collection, model, dims, user); err != nil {
			return err
		}
	case !pl.exists:
		pl.collection = ModelCollection(model)
		if err := q.ensureCollection(ctx, pl.collection, model, dims, user); err != nil {
			return err
		}
		if err := q.register(ctx, user, model, dims); err != nil {
			return err
		}
	}
	wait := true
	for start := 0; start < len(structs); start += qdrantUpsertBatch {
		batch := structs[start:min(start+qdrantUpsertBatch, len(structs))]
		if _, err := q.client.Upsert(ctx, &qdrant.UpsertPoints{CollectionName: pl.collection, Wait: &wait, Points: batch}); err != nil {
			return qerr("upsert", err)
		}
	}
	return nil
}

// Recreate implements Store.
func (q *Qdrant) Recreate(ctx context.Context, user userid.ID, model string, dims int) error {
	if err := checkUser(user); err != nil {
		return err
	}
	if err := checkCollectionArgs(model, dims); err != nil {
		return err
	}
	if q.tenancy == TenancyCollection {
		name := UserCollection(user)
		ok, err := q.client.CollectionExists(ctx, name)
		if err != nil {
			return qerr("collection exists", err)
		}
		if ok {
			if err := q.client.DeleteCollection(ctx, name); err != nil && !isNotFound(err) {
				return qerr("delete collection", err)
			}
		}
		return q.ensureCollection(ctx, name, model, dims, user)
	}
	pl, err := q.place(ctx, user)
	if err != nil {
		return err
	}
	target := ModelCollection(model)
	if pl.exists && pl.collection != target {
		if err := q.deleteUserPoints(ctx, user, pl.collection); err != nil {
			return err
		}
	}
	if err := q.ensureCollection(ctx, target, model, dims, user); err != nil {
		return err
	}
	// Also empties the target of anything left from an earlier use of this model.
	if err := q.deleteUserPoints(ctx, user, target); err != nil {
		return err
	}
	return q.register(ctx, user, model, dims)
}

// deleteUserPoints deletes every point of user in a shared collection.
func (q *Qdrant) deleteUserPoints(ctx context.Context, user userid.ID, collection string) error {
	wait := true
	_, err := q.client.Delete(ctx, &qdrant.DeletePoints{
		CollectionName: collection,
		Wait:           &wait,
		Points:         qdrant.NewPointsSelectorFilter(q.scope(user, nil)),
	})
	if isNotFound(err) {
		return nil
	}
	return qerr("delete points", err)
}

// pointID is the Qdrant id of a user's thread: PointID in collection
// tenancy, TenantPointID in payload tenancy.
func (q *Qdrant) pointID(user userid.ID, threadID string) string {
	if q.tenancy == TenancyPayload {
		return TenantPointID(user, threadID)
	}
	return PointID(threadID)
}

// buildFilter turns compiled conditions and excluded thread ids into a
// Qdrant filter (nil when empty; scope adds the tenant).
func (q *Qdrant) buildFilter(user userid.ID, conds []cond, exclude []string) *qdrant.Filter {
	if len(conds) == 0 && len(exclude) == 0 {
		return nil
	}
	f := &qdrant.Filter{}
	for _, c := range conds {
		switch c.kind {
		case condString:
			f.Must = append(f.Must, qdrant.NewMatchKeyword(c.field, c.s))
		case condBool:
			f.Must = append(f.Must, qdrant.NewMatchBool(c.field, c.b))
		case condInt:
			f.Must = append(f.Must, qdrant.NewMatchInt(c.field, c.i))
		case condAnyString:
			f.Must = append(f.Must, qdrant.NewMatchKeywords(c.field, c.ss...))
		}
	}
	if len(exclude) > 0 {
		ids := make([]*qdrant.PointId, len(exclude))
		for i, id := range exclude {
			ids[i] = qdrant.NewID(q.pointID(user, id))
		}
		f.MustNot = append(f.MustNot, qdrant.NewHasID(ids...))
	}
	return f
}

// SearchVector implements Store.
func (q *Qdrant) SearchVector(ctx context.Context, user userid.ID, vector []float32, limit int, exclude []string, filter Filter) ([]Hit, error) {
	if err := checkUser(user); err != nil {
		return nil, err
	}
	if err := checkLimit("limit", limit); err != nil {
		return nil, err
	}
	conds, err := compileFilter(filter)
	if err != nil {
		return nil, err
	}
	pl, err := q.place(ctx, user)
	if err != nil || !pl.exists {
		return nil, err
	}
	if err := checkQuery(vector, pl.dims); err != nil {
		return nil, err
	}
	res, err := q.query(ctx, user, pl.collection, vector, limit, q.buildFilter(user, conds, exclude), false)
	if err != nil {
		return nil, err
	}
	hits := make([]Hit, 0, len(res))
	for _, sp := range res {
		hits = append(hits, q.hit(sp.GetPayload(), sp.GetScore()))
	}
	return hits, nil
}

// query runs a nearest-neighbour query scoped to the user.
func (q *Qdrant) query(ctx context.Context, user userid.ID, collection string, vector []float32, limit int, f *qdrant.Filter, withVectors bool) ([]*qdrant.ScoredPoint, error) {
	lim := uint64(limit)
	res, err := q.client.Query(ctx, &qdrant.QueryPoints{
		CollectionName: collection,
		Query:          qdrant.NewQueryDense(vector),
		Filter:         q.scope(user, f),
		Limit:          &lim,
		WithPayload:    qdrant.NewWithPayload(true),
		WithVectors:    qdrant.NewWithVectors(withVectors),
	})
	if isNotFound(err) {
		return nil, nil
	}
	return res, qerr("query", err)
}

// hit converts a stored payload: the thread id from thread_id, tenant_id dropped.
func (q *Qdrant) hit(payload map[string]*qdrant.Value, score float32) Hit {
	p := make(map[string]any, len(payload))
	for k, v := range payload {
		if k == fieldTenant && q.tenancy == TenancyPayload {
			continue
		}
		p[k] = valueToAny(v)
	}
	id, _ := p[fieldThreadID].(string)
	return Hit{ID: id, Score: score, Payload: p}
}

// DiverseSet implements Store.
func (q *Qdrant) DiverseSet(ctx context.Context, user userid.ID, filter Filter, n int) ([]Hit, error) {
	if err := checkUser(user); err != nil {
		return nil, err
	}
	if err := checkLimit("n", n); err != nil {
		return nil, err
	}
	conds, err := compileFilter(filter)
	if err != nil {
		return nil, err
	}
	pl, err := q.place(ctx, user)
	if err != nil || !pl.exists {
		return nil, err
	}
	res, err := q.query(ctx, user, pl.collection, randomUnitVector(pl.dims), max(diverseCandidates, n), q.buildFilter(user, conds, nil), true)
	if err != nil {
		return nil, err
	}
	cands := make([]candidate, 0, len(res))
	for _, sp := range res {
		vec := sp.GetVectors().GetVector().GetDenseVector().GetData()
		cands = append(cands, candidate{hit: q.hit(sp.GetPayload(), sp.GetScore()), vec: unit(vec)})
	}
	return diversify(cands, n), nil
}

// FieldDistribution implements Store: a scroll over the user's points
// reading only the field (no payload index needed).
func (q *Qdrant) FieldDistribution(ctx context.Context, user userid.ID, field string, limit int) (map[string]int, error) {
	if err := checkUser(user); err != nil {
		return nil, err
	}
	if field == "" {
		return nil, fmt.Errorf("%w: empty field name", ErrInvalid)
	}
	counts := map[string]int{}
	pl, err := q.place(ctx, user)
	if err != nil || !pl.exists {
		return counts, err
	}
	page := uint32(scrollPage)
	var offset *qdrant.PointId
	for {
		pts, next, err := q.client.ScrollAndOffset(ctx, &qdrant.ScrollPoints{
			CollectionName: pl.collection,
			Filter:         q.scope(user, nil),
			Offset:         offset,
			Limit:          &page,
			WithPayload:    qdrant.NewWithPayloadInclude(field),
			WithVectors:    qdrant.NewWithVectors(false),
		})
		if isNotFound(err) {
			break
		}
		if err != nil {
			return nil, qerr("scroll", err)
		}
		for _, p := range pts {
			if v, ok := p.GetPayload()[field]; ok {
				countFieldValue(counts, valueToAny(v))
			}
		}
		if next == nil || len(pts) == 0 {
			break
		}
		offset = next
	}
	return topValues(counts, limit), nil
}

// valueToAny converts a payload value to the normalised Go form.
func valueToAny(v *qdrant.Value) any {
	switch k := v.GetKind().(type) {
	case *qdrant.Value_StringValue:
		return k.StringValue
	case *qdrant.Value_IntegerValue:
		return k.IntegerValue
	case *qdrant.Value_DoubleValue:
		return k.DoubleValue
	case *qdrant.Value_BoolValue:
		return k.BoolValue
	case *qdrant.Value_ListValue:
		out := make([]any, len(k.ListValue.GetValues()))
		for i, x := range k.ListValue.GetValues() {
			out[i] = valueToAny(x)
		}
		return out
	case *qdrant.Value_StructValue:
		out := make(map[string]any, len(k.StructValue.GetFields()))
		for name, x := range k.StructValue.GetFields() {
			out[name] = valueToAny(x)
		}
		return out
	}
	return nil
}

func isNotFound(err error) bool {
	return err != nil && status.Code(err) == codes.NotFound // Code looks through wrapping
}

// qerr wraps a Qdrant error (nil stays nil).
func qerr(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("vectors: qdrant %s: %w", op, err)
}
