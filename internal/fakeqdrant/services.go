package fakeqdrant

import (
	"context"
	"math"
	"slices"
	"sort"

	"github.com/qdrant/go-client/qdrant"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// collectionsService and pointsService are the two services (one type
// cannot embed both Unimplemented stubs: their method names overlap).
type collectionsService struct {
	qdrant.UnimplementedCollectionsServer
	srv *Server
}

type pointsService struct {
	qdrant.UnimplementedPointsServer
	srv *Server
}

// collection returns a collection or a NotFound status like Qdrant's.
func (s *Server) collection(name string) (*collection, error) {
	c, ok := s.collections[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "Not found: Collection `%s` doesn't exist!", name)
	}
	return c, nil
}

// --- Collections ---

func (s *collectionsService) CollectionExists(_ context.Context, req *qdrant.CollectionExistsRequest) (*qdrant.CollectionExistsResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	_, ok := s.srv.collections[req.GetCollectionName()]
	return &qdrant.CollectionExistsResponse{Result: &qdrant.CollectionExists{Exists: ok}}, nil
}

func (s *collectionsService) Get(_ context.Context, req *qdrant.GetCollectionInfoRequest) (*qdrant.GetCollectionInfoResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	c, err := s.srv.collection(req.GetCollectionName())
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

// validName is Qdrant's rule for collection names, roughly.
func validName(name string) bool {
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

func (s *collectionsService) Create(_ context.Context, req *qdrant.CreateCollection) (*qdrant.CollectionOperationResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	name := req.GetCollectionName()
	if !validName(name) {
		return nil, status.Errorf(codes.InvalidArgument, "Wrong input: bad collection name %q", name)
	}
	if _, ok := s.srv.collections[name]; ok {
		return nil, status.Errorf(codes.InvalidArgument, "Wrong input: Collection `%s` already exists!", name)
	}
	params := req.GetVectorsConfig().GetParams()
	if params == nil || params.GetSize() == 0 || params.GetDistance() != qdrant.Distance_Cosine {
		return nil, status.Errorf(codes.InvalidArgument, "fake: want one unnamed cosine vector config")
	}
	s.srv.collections[name] = &collection{
		create:  proto.Clone(req).(*qdrant.CreateCollection),
		size:    params.GetSize(),
		indexes: map[string]*qdrant.CreateFieldIndexCollection{},
		points:  map[string]*point{},
	}
	return &qdrant.CollectionOperationResponse{Result: true}, nil
}

func (s *collectionsService) Delete(_ context.Context, req *qdrant.DeleteCollection) (*qdrant.CollectionOperationResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	_, ok := s.srv.collections[req.GetCollectionName()]
	delete(s.srv.collections, req.GetCollectionName())
	return &qdrant.CollectionOperationResponse{Result: ok}, nil
}

// --- Points ---

// pointID returns a point id, which must be a canonical lowercase UUID
// (the only kind the backend sends).
func pointID(id *qdrant.PointId) (string, error) {
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

// dimensionError is Qdrant's answer to a vector of the wrong size.
func dimensionError(want uint64, got int) error {
	return status.Errorf(codes.InvalidArgument, "Wrong input: Vector dimension error: expected dim: %d, got %d", want, got)
}

func okResponse() *qdrant.PointsOperationResponse {
	return &qdrant.PointsOperationResponse{Result: &qdrant.UpdateResult{Status: qdrant.UpdateStatus_Completed}}
}

func (s *pointsService) Upsert(_ context.Context, req *qdrant.UpsertPoints) (*qdrant.PointsOperationResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	c, err := s.srv.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	for _, p := range req.GetPoints() {
		id, err := pointID(p.GetId())
		if err != nil {
			return nil, err
		}
		vec := p.GetVectors().GetVector().GetDense().GetData()
		if uint64(len(vec)) != c.size {
			return nil, dimensionError(c.size, len(vec))
		}
		c.points[id] = &point{id: id, vec: append([]float32(nil), vec...), payload: clonePayload(p.GetPayload())}
	}
	return okResponse(), nil
}

func (s *pointsService) Delete(_ context.Context, req *qdrant.DeletePoints) (*qdrant.PointsOperationResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	c, err := s.srv.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	sel := req.GetPoints()
	if f := sel.GetFilter(); f != nil {
		pts, err := c.filtered(f)
		if err != nil {
			return nil, err
		}
		for _, p := range pts {
			delete(c.points, p.id)
		}
		return okResponse(), nil
	}
	for _, pid := range sel.GetPoints().GetIds() {
		id, err := pointID(pid)
		if err != nil {
			return nil, err
		}
		delete(c.points, id)
	}
	return okResponse(), nil
}

func (s *pointsService) CreateFieldIndex(_ context.Context, req *qdrant.CreateFieldIndexCollection) (*qdrant.PointsOperationResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	c, err := s.srv.collection(req.GetCollectionName())
	if err != nil {
		return nil, err
	}
	c.indexes[req.GetFieldName()] = proto.Clone(req).(*qdrant.CreateFieldIndexCollection)
	return okResponse(), nil
}

// selectPoints returns the named collection and its points matching f,
// ordered by id. The caller holds s.mu.
func (s *Server) selectPoints(name string, f *qdrant.Filter) (*collection, []*point, error) {
	c, err := s.collection(name)
	if err != nil {
		return nil, nil, err
	}
	pts, err := c.filtered(f)
	return c, pts, err
}

// limitOf is a request's result limit: Qdrant's default 10 when unset.
func limitOf[T uint32 | uint64](limit *T) int {
	if limit == nil {
		return 10
	}
	return int(*limit)
}

// filtered returns the collection's points matching f, ordered by id.
func (c *collection) filtered(f *qdrant.Filter) ([]*point, error) {
	var out []*point
	for _, p := range c.points {
		ok, err := match(f, p)
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

func (s *pointsService) Count(_ context.Context, req *qdrant.CountPoints) (*qdrant.CountResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	_, pts, err := s.srv.selectPoints(req.GetCollectionName(), req.GetFilter())
	if err != nil {
		return nil, err
	}
	return &qdrant.CountResponse{Result: &qdrant.CountResult{Count: uint64(len(pts))}}, nil
}

func (s *pointsService) Scroll(_ context.Context, req *qdrant.ScrollPoints) (*qdrant.ScrollResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	_, pts, err := s.srv.selectPoints(req.GetCollectionName(), req.GetFilter())
	if err != nil {
		return nil, err
	}
	if off := req.GetOffset(); off != nil {
		from, err := pointID(off)
		if err != nil {
			return nil, err
		}
		i := sort.Search(len(pts), func(i int) bool { return pts[i].id >= from })
		pts = pts[i:]
	}
	limit := limitOf(req.Limit)
	resp := &qdrant.ScrollResponse{}
	if len(pts) > limit {
		resp.NextPageOffset = qdrant.NewID(pts[limit].id)
		pts = pts[:limit]
	}
	for _, p := range pts {
		rp := &qdrant.RetrievedPoint{Id: qdrant.NewID(p.id), Payload: selectPayload(p.payload, req.GetWithPayload())}
		if req.GetWithVectors().GetEnable() {
			rp.Vectors = vectorsOutput(p.vec)
		}
		resp.Result = append(resp.Result, rp)
	}
	return resp, nil
}

func (s *pointsService) Query(_ context.Context, req *qdrant.QueryPoints) (*qdrant.QueryResponse, error) {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	c, pts, err := s.srv.selectPoints(req.GetCollectionName(), req.GetFilter())
	if err != nil {
		return nil, err
	}
	q := req.GetQuery().GetNearest().GetDense().GetData()
	if uint64(len(q)) != c.size {
		return nil, dimensionError(c.size, len(q))
	}
	type scoredPoint struct {
		p     *point
		score float32
	}
	res := make([]scoredPoint, len(pts))
	for i, p := range pts {
		res[i] = scoredPoint{p, cosine(q, p.vec)}
	}
	sort.SliceStable(res, func(i, j int) bool { return res[i].score > res[j].score })
	if limit := limitOf(req.Limit); len(res) > limit {
		res = res[:limit]
	}
	resp := &qdrant.QueryResponse{}
	for _, r := range res {
		sp := &qdrant.ScoredPoint{Id: qdrant.NewID(r.p.id), Score: r.score, Payload: selectPayload(r.p.payload, req.GetWithPayload())}
		if req.GetWithVectors().GetEnable() {
			sp.Vectors = vectorsOutput(r.p.vec)
		}
		resp.Result = append(resp.Result, sp)
	}
	return resp, nil
}

func vectorsOutput(vec []float32) *qdrant.VectorsOutput {
	return &qdrant.VectorsOutput{VectorsOptions: &qdrant.VectorsOutput_Vector{Vector: &qdrant.VectorOutput{
		Vector: &qdrant.VectorOutput_Dense{Dense: &qdrant.DenseVector{Data: append([]float32(nil), vec...)}},
	}}}
}

func cosine(a, b []float32) float32 {
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

func selectPayload(p map[string]*qdrant.Value, sel *qdrant.WithPayloadSelector) map[string]*qdrant.Value {
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
			if !slices.Contains(o.Exclude.GetFields(), k) {
				out[k] = v
			}
		}
	}
	return out
}

// match evaluates a filter on a point (nil matches everything).
func match(f *qdrant.Filter, p *point) (bool, error) {
	if f == nil {
		return true, nil
	}
	for _, c := range f.GetMust() {
		ok, err := cond(c, p)
		if err != nil || !ok {
			return false, err
		}
	}
	for _, c := range f.GetMustNot() {
		ok, err := cond(c, p)
		if err != nil || ok {
			return false, err
		}
	}
	if len(f.GetShould()) > 0 {
		matched := false
		for _, c := range f.GetShould() {
			ok, err := cond(c, p)
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

func cond(c *qdrant.Condition, p *point) (bool, error) {
	switch k := c.GetConditionOneOf().(type) {
	case *qdrant.Condition_Filter:
		return match(k.Filter, p)
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
			hit, err := matchValue(fc.GetMatch(), x)
			if err != nil || hit {
				return hit, err
			}
		}
		return false, nil
	}
	return false, status.Errorf(codes.Unimplemented, "fake: condition %T", c.GetConditionOneOf())
}

func matchValue(m *qdrant.Match, v *qdrant.Value) (bool, error) {
	switch mv := m.GetMatchValue().(type) {
	case *qdrant.Match_Keyword:
		s, ok := v.GetKind().(*qdrant.Value_StringValue)
		return ok && s.StringValue == mv.Keyword, nil
	case *qdrant.Match_Keywords:
		s, ok := v.GetKind().(*qdrant.Value_StringValue)
		return ok && slices.Contains(mv.Keywords.GetStrings(), s.StringValue), nil
	case *qdrant.Match_Integer:
		i, ok := v.GetKind().(*qdrant.Value_IntegerValue)
		return ok && i.IntegerValue == mv.Integer, nil
	case *qdrant.Match_Boolean:
		b, ok := v.GetKind().(*qdrant.Value_BoolValue)
		return ok && b.BoolValue == mv.Boolean, nil
	}
	return false, status.Errorf(codes.Unimplemented, "fake: match %T", m.GetMatchValue())
}
