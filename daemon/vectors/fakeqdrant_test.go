package vectors

import (
	"context"
	"fmt"
	"math"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/qdrant/go-client/qdrant"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeQdrant is a wire-level stand-in for a Qdrant server (which cannot run
// here): a real gRPC server on 127.0.0.1 serving the go-client's own
// generated Collections and Points service stubs, holding collections in
// memory, and recording every request exactly as it arrived. It implements
// what the Qdrant backend uses: collection exists/get/create/delete, upsert,
// delete (by ids or filter), count, scroll, query (exact cosine search),
// create field index; filters with must/must_not/should, keyword(s),
// integer and boolean matches, has_id, and nested filters. Anything else
// answers Unimplemented, so a backend change that needs more fails loudly.
type fakeQdrant struct {
	addr string

	mu          sync.Mutex
	collections map[string]*fakeCollection
	calls       []fakeCall
}

// fakeCall is one recorded request.
type fakeCall struct {
	Method string        // e.g. "/qdrant.Points/Query"
	APIKey []string      // the "api-key" metadata
	Req    proto.Message // a copy of the request
}

type fakeCollection struct {
	create  *qdrant.CreateCollection
	size    uint64
	indexes map[string]*qdrant.CreateFieldIndexCollection
	points  map[string]*fakePoint // by UUID
}

type fakePoint struct {
	id      string
	vec     []float32
	payload map[string]*qdrant.Value
}

// fakeQdrantCollections and fakeQdrantPoints are the two services (one type
// cannot embed both Unimplemented stubs: their method names overlap).
type fakeQdrantCollections struct {
	qdrant.UnimplementedCollectionsServer
	f *fakeQdrant
}

type fakeQdrantPoints struct {
	qdrant.UnimplementedPointsServer
	f *fakeQdrant
}

// newFakeQdrant starts a fake on a loopback port, stopped at the test's end.
// extra server options (TLS credentials) may be given.
func newFakeQdrant(t testing.TB, opts ...grpc.ServerOption) *fakeQdrant {
	t.Helper()
	f := &fakeQdrant{collections: map[string]*fakeCollection{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	srv := grpc.NewServer(append(opts, grpc.UnaryInterceptor(f.record))...)
	qdrant.RegisterCollectionsServer(srv, &fakeQdrantCollections{f: f})
	qdrant.RegisterPointsServer(srv, &fakeQdrantPoints{f: f})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeQdrant) port() int {
	_, p, _ := net.SplitHostPort(f.addr)
	var n int
	fmt.Sscan(p, &n)
	return n
}

// record is the server interceptor that logs each request with its api-key.
func (f *fakeQdrant) record(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.calls = append(f.calls, fakeCall{Method: info.FullMethod, APIKey: md.Get("api-key"), Req: proto.Clone(req.(proto.Message))})
	f.mu.Unlock()
	return handler(ctx, req)
}

// recorded returns the calls so far, optionally only those of a method
// suffix (e.g. "Points/Query").
func (f *fakeQdrant) recorded(suffix string) []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeCall
	for _, c := range f.calls {
		if suffix == "" || strings.HasSuffix(c.Method, suffix) {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeQdrant) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

func (f *fakeQdrant) collectionNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for n := range f.collections {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// collection returns a collection or a NotFound status like Qdrant's.
func (f *fakeQdrant) collection(name string) (*fakeCollection, error) {
	c, ok := f.collections[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "Not found: Collection `%s` doesn't exist!", name)
	}
	return c, nil
}

// --- Collections ---

func (s *fakeQdrantCollections) CollectionExists(_ context.Context, req *qdrant.CollectionExistsRequest) (*qdrant.CollectionExistsResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	_, ok := s.f.collections[req.GetCollectionName()]
	return &qdrant.CollectionExistsResponse{Result: &qdrant.CollectionExists{Exists: ok}}, nil
}

func (s *fakeQdrantCollections) Get(_ context.Context, req *qdrant.GetCollectionInfoRequest) (*qdrant.GetCollectionInfoResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	c, err := s.f.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	n := uint64(len(c.points))
	return &qdrant.GetCollectionInfoResponse{Result: &qdrant.CollectionInfo{
		Status:      qdrant.CollectionStatus_Green,
		PointsCount: &n,
		Config: &qdrant.CollectionConfig{
			Params:   &qdrant.CollectionParams{VectorsConfig: c.create.GetVectorsConfig()},
			Metadata: c.create.GetMetadata(),
		},
	}}, nil
}

// fakeValidName is Qdrant's rule for collection names, roughly.
func fakeValidName(name string) bool {
	if name == "" || len(name) > 255 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func (s *fakeQdrantCollections) Create(_ context.Context, req *qdrant.CreateCollection) (*qdrant.CollectionOperationResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	name := req.GetCollectionName()
	if !fakeValidName(name) {
		return nil, status.Errorf(codes.InvalidArgument, "Wrong input: bad collection name %q", name)
	}
	if _, ok := s.f.collections[name]; ok {
		return nil, status.Errorf(codes.InvalidArgument, "Wrong input: Collection `%s` already exists!", name)
	}
	params := req.GetVectorsConfig().GetParams()
	if params == nil || params.GetSize() == 0 || params.GetDistance() != qdrant.Distance_Cosine {
		return nil, status.Errorf(codes.InvalidArgument, "fake: want one unnamed cosine vector config")
	}
	s.f.collections[name] = &fakeCollection{
		create:  proto.Clone(req).(*qdrant.CreateCollection),
		size:    params.GetSize(),
		indexes: map[string]*qdrant.CreateFieldIndexCollection{},
		points:  map[string]*fakePoint{},
	}
	return &qdrant.CollectionOperationResponse{Result: true}, nil
}

func (s *fakeQdrantCollections) Delete(_ context.Context, req *qdrant.DeleteCollection) (*qdrant.CollectionOperationResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	_, ok := s.f.collections[req.GetCollectionName()]
	delete(s.f.collections, req.GetCollectionName())
	return &qdrant.CollectionOperationResponse{Result: ok}, nil
}

// --- Points ---

// fakePointID returns a point id, which must be a canonical lowercase UUID
// (the only kind the backend sends).
func fakePointID(id *qdrant.PointId) (string, error) {
	u := id.GetUuid()
	canonical := len(u) == 36
	for i := 0; canonical && i < len(u); i++ {
		switch c := u[i]; {
		case i == 8 || i == 13 || i == 18 || i == 23:
			canonical = c == '-'
		default:
			canonical = c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
		}
	}
	if !canonical {
		return "", status.Errorf(codes.InvalidArgument, "fake: point id %v is not a canonical UUID", id)
	}
	return u, nil
}

func okResponse() *qdrant.PointsOperationResponse {
	return &qdrant.PointsOperationResponse{Result: &qdrant.UpdateResult{Status: qdrant.UpdateStatus_Completed}}
}

func (s *fakeQdrantPoints) Upsert(_ context.Context, req *qdrant.UpsertPoints) (*qdrant.PointsOperationResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	c, err := s.f.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	for _, p := range req.GetPoints() {
		id, err := fakePointID(p.GetId())
		if err != nil {
			return nil, err
		}
		vec := p.GetVectors().GetVector().GetDense().GetData()
		if uint64(len(vec)) != c.size {
			return nil, status.Errorf(codes.InvalidArgument, "Wrong input: Vector dimension error: expected dim: %d, got %d", c.size, len(vec))
		}
		c.points[id] = &fakePoint{id: id, vec: append([]float32(nil), vec...), payload: proto.Clone(&qdrant.Struct{Fields: p.GetPayload()}).(*qdrant.Struct).GetFields()}
	}
	return okResponse(), nil
}

func (s *fakeQdrantPoints) Delete(_ context.Context, req *qdrant.DeletePoints) (*qdrant.PointsOperationResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	c, err := s.f.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	sel := req.GetPoints()
	if f := sel.GetFilter(); f != nil {
		for id, p := range c.points {
			ok, err := fakeMatch(f, p)
			if err != nil {
				return nil, err
			}
			if ok {
				delete(c.points, id)
			}
		}
		return okResponse(), nil
	}
	for _, pid := range sel.GetPoints().GetIds() {
		id, err := fakePointID(pid)
		if err != nil {
			return nil, err
		}
		delete(c.points, id)
	}
	return okResponse(), nil
}

func (s *fakeQdrantPoints) CreateFieldIndex(_ context.Context, req *qdrant.CreateFieldIndexCollection) (*qdrant.PointsOperationResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	c, err := s.f.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	c.indexes[req.GetFieldName()] = proto.Clone(req).(*qdrant.CreateFieldIndexCollection)
	return okResponse(), nil
}

// filtered returns the collection's points matching f, ordered by id.
func (c *fakeCollection) filtered(f *qdrant.Filter) ([]*fakePoint, error) {
	var out []*fakePoint
	for _, p := range c.points {
		ok, err := fakeMatch(f, p)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out, nil
}

func (s *fakeQdrantPoints) Count(_ context.Context, req *qdrant.CountPoints) (*qdrant.CountResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	c, err := s.f.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	pts, err := c.filtered(req.GetFilter())
	if err != nil {
		return nil, err
	}
	return &qdrant.CountResponse{Result: &qdrant.CountResult{Count: uint64(len(pts))}}, nil
}

func (s *fakeQdrantPoints) Scroll(_ context.Context, req *qdrant.ScrollPoints) (*qdrant.ScrollResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	c, err := s.f.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	pts, err := c.filtered(req.GetFilter())
	if err != nil {
		return nil, err
	}
	if off := req.GetOffset(); off != nil {
		from, err := fakePointID(off)
		if err != nil {
			return nil, err
		}
		i := sort.Search(len(pts), func(i int) bool { return pts[i].id >= from })
		pts = pts[i:]
	}
	limit := 10
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	resp := &qdrant.ScrollResponse{}
	if len(pts) > limit {
		resp.NextPageOffset = qdrant.NewID(pts[limit].id)
		pts = pts[:limit]
	}
	for _, p := range pts {
		rp := &qdrant.RetrievedPoint{Id: qdrant.NewID(p.id), Payload: fakeSelectPayload(p.payload, req.GetWithPayload())}
		if req.GetWithVectors().GetEnable() {
			rp.Vectors = fakeVectorsOutput(p.vec)
		}
		resp.Result = append(resp.Result, rp)
	}
	return resp, nil
}

func (s *fakeQdrantPoints) Query(_ context.Context, req *qdrant.QueryPoints) (*qdrant.QueryResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	c, err := s.f.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	q := req.GetQuery().GetNearest().GetDense().GetData()
	if uint64(len(q)) != c.size {
		return nil, status.Errorf(codes.InvalidArgument, "Wrong input: Vector dimension error: expected dim: %d, got %d", c.size, len(q))
	}
	pts, err := c.filtered(req.GetFilter())
	if err != nil {
		return nil, err
	}
	type scoredPoint struct {
		p     *fakePoint
		score float32
	}
	res := make([]scoredPoint, len(pts))
	for i, p := range pts {
		res[i] = scoredPoint{p, fakeCosine(q, p.vec)}
	}
	sort.SliceStable(res, func(i, j int) bool { return res[i].score > res[j].score })
	limit := 10
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	if len(res) > limit {
		res = res[:limit]
	}
	resp := &qdrant.QueryResponse{}
	for _, r := range res {
		sp := &qdrant.ScoredPoint{Id: qdrant.NewID(r.p.id), Score: r.score, Payload: fakeSelectPayload(r.p.payload, req.GetWithPayload())}
		if req.GetWithVectors().GetEnable() {
			sp.Vectors = fakeVectorsOutput(r.p.vec)
		}
		resp.Result = append(resp.Result, sp)
	}
	return resp, nil
}

func fakeVectorsOutput(vec []float32) *qdrant.VectorsOutput {
	return &qdrant.VectorsOutput{VectorsOptions: &qdrant.VectorsOutput_Vector{Vector: &qdrant.VectorOutput{
		Vector: &qdrant.VectorOutput_Dense{Dense: &qdrant.DenseVector{Data: append([]float32(nil), vec...)}},
	}}}
}

func fakeCosine(a, b []float32) float32 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	if aa == 0 || bb == 0 {
		return 0
	}
	return float32(ab / math.Sqrt(aa*bb))
}

func fakeSelectPayload(p map[string]*qdrant.Value, sel *qdrant.WithPayloadSelector) map[string]*qdrant.Value {
	if sel == nil {
		return nil
	}
	out := map[string]*qdrant.Value{}
	switch o := sel.GetSelectorOptions().(type) {
	case *qdrant.WithPayloadSelector_Enable:
		if !o.Enable {
			return nil
		}
		for k, v := range p {
			out[k] = v
		}
	case *qdrant.WithPayloadSelector_Include:
		for _, k := range o.Include.GetFields() {
			if v, ok := p[k]; ok {
				out[k] = v
			}
		}
	case *qdrant.WithPayloadSelector_Exclude:
		for k, v := range p {
			if !contains(o.Exclude.GetFields(), k) {
				out[k] = v
			}
		}
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// fakeMatch evaluates a filter on a point (nil matches everything).
func fakeMatch(f *qdrant.Filter, p *fakePoint) (bool, error) {
	if f == nil {
		return true, nil
	}
	for _, c := range f.GetMust() {
		ok, err := fakeCond(c, p)
		if err != nil || !ok {
			return false, err
		}
	}
	for _, c := range f.GetMustNot() {
		ok, err := fakeCond(c, p)
		if err != nil || ok {
			return false, err
		}
	}
	if len(f.GetShould()) > 0 {
		matched := false
		for _, c := range f.GetShould() {
			ok, err := fakeCond(c, p)
			if err != nil {
				return false, err
			}
			matched = matched || ok
		}
		if !matched {
			return false, nil
		}
	}
	if f.MinShould != nil {
		return false, status.Error(codes.Unimplemented, "fake: min_should")
	}
	return true, nil
}

func fakeCond(c *qdrant.Condition, p *fakePoint) (bool, error) {
	switch k := c.GetConditionOneOf().(type) {
	case *qdrant.Condition_Filter:
		return fakeMatch(k.Filter, p)
	case *qdrant.Condition_HasId:
		for _, id := range k.HasId.GetHasId() {
			if id.GetUuid() == p.id {
				return true, nil
			}
		}
		return false, nil
	case *qdrant.Condition_Field:
		fc := k.Field
		if fc.GetMatch() == nil {
			return false, status.Errorf(codes.Unimplemented, "fake: field condition without match on %q", fc.GetKey())
		}
		v, ok := p.payload[fc.GetKey()]
		if !ok {
			return false, nil
		}
		values := []*qdrant.Value{v}
		if l := v.GetListValue(); l != nil {
			values = l.GetValues()
		}
		for _, x := range values {
			hit, err := fakeMatchValue(fc.GetMatch(), x)
			if err != nil || hit {
				return hit, err
			}
		}
		return false, nil
	}
	return false, status.Errorf(codes.Unimplemented, "fake: condition %T", c.GetConditionOneOf())
}

func fakeMatchValue(m *qdrant.Match, v *qdrant.Value) (bool, error) {
	switch mv := m.GetMatchValue().(type) {
	case *qdrant.Match_Keyword:
		s, ok := v.GetKind().(*qdrant.Value_StringValue)
		return ok && s.StringValue == mv.Keyword, nil
	case *qdrant.Match_Keywords:
		s, ok := v.GetKind().(*qdrant.Value_StringValue)
		return ok && contains(mv.Keywords.GetStrings(), s.StringValue), nil
	case *qdrant.Match_Integer:
		i, ok := v.GetKind().(*qdrant.Value_IntegerValue)
		return ok && i.IntegerValue == mv.Integer, nil
	case *qdrant.Match_Boolean:
		b, ok := v.GetKind().(*qdrant.Value_BoolValue)
		return ok && b.BoolValue == mv.Boolean, nil
	}
	return false, status.Errorf(codes.Unimplemented, "fake: match %T", m.GetMatchValue())
}
