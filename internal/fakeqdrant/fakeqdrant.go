// Package fakeqdrant is a fake Qdrant server for tests only. It is not a
// vector database: it is a wire-level stand-in for one (a Qdrant server
// cannot run where the tests run), imported only from _test.go files of
// other packages (daemon/vectors, daemon/jobs ...).
//
// A Server is a real gRPC server on 127.0.0.1 serving the qdrant/go-client's
// own generated Collections and Points service stubs. It holds collections
// in memory and records every request exactly as it arrived (a copy of the
// protobuf message, with its method and "api-key" metadata), so that tests
// can assert on what a client put on the wire, for example that every read
// of a shared collection carried the caller's tenant filter:
//
//	f := fakeqdrant.New(t)
//	store, _ := vectors.Open(f.URL()+"?tenancy=payload", nil, vectors.Options{})
//	... use store ...
//	for _, c := range f.Calls("Points/Query") {
//		filter, _ := c.Filter()
//		tenant := fakeqdrant.MustKeyword(filter, "tenant_id")
//		...
//	}
//
// It implements what inboxd's Qdrant backend uses: collection
// exists/get/create/delete, upsert, delete (by ids or filter), count,
// scroll, query (exact cosine search) and create field index; filters with
// must/must_not/should, keyword(s), integer and boolean matches, has_id,
// and nested filters. Anything else answers Unimplemented, so a backend
// change that needs more fails loudly instead of passing by accident.
package fakeqdrant

import (
	"context"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/qdrant/go-client/qdrant"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// Server is a running fake. Its methods are safe for concurrent use.
type Server struct {
	addr string

	mu          sync.Mutex
	collections map[string]*collection
	calls       []Call
}

// Call is one recorded request.
type Call struct {
	Method string        // the full gRPC method, e.g. "/qdrant.Points/Query"
	APIKey []string      // the "api-key" metadata values
	Req    proto.Message // a copy of the request
}

// Collection is a snapshot of one collection (copies: changing it changes
// nothing in the server).
type Collection struct {
	Name    string
	Create  *qdrant.CreateCollection // the request that created it
	Size    uint64                   // the vector size
	Indexes map[string]*qdrant.CreateFieldIndexCollection
	Points  []Point // ordered by id
}

// Point is one stored point of a snapshot.
type Point struct {
	ID      string // the canonical UUID
	Vector  []float32
	Payload map[string]*qdrant.Value
}

// collection is the server's state of one collection (guarded by Server.mu).
type collection struct {
	create  *qdrant.CreateCollection
	size    uint64
	indexes map[string]*qdrant.CreateFieldIndexCollection
	points  map[string]*point // by UUID
}

type point struct {
	id      string
	vec     []float32
	payload map[string]*qdrant.Value
}

// New starts a fake on a loopback port, stopped when the test ends. opts
// are extra server options (TLS credentials); they must not set a unary
// interceptor (the fake records with one).
func New(t testing.TB, opts ...grpc.ServerOption) *Server {
	t.Helper()
	s := &Server{collections: map[string]*collection{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakeqdrant: listen: %v", err)
	}
	s.addr = lis.Addr().String()
	srv := grpc.NewServer(append(opts, grpc.UnaryInterceptor(s.record))...)
	qdrant.RegisterCollectionsServer(srv, &collectionsService{srv: s})
	qdrant.RegisterPointsServer(srv, &pointsService{srv: s})
	go srv.Serve(lis) //nolint:errcheck // returns when stopped below
	t.Cleanup(srv.Stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Port is the server's gRPC port.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// URL is a vectors_url for the server without parameters,
// "qdrant://127.0.0.1:PORT"; append "?tenancy=payload" and the like.
func (s *Server) URL() string { return "qdrant://" + s.addr }

// record is the server interceptor that logs each request with its api-key.
func (s *Server) record(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.calls = append(s.calls, Call{Method: info.FullMethod, APIKey: md.Get("api-key"), Req: proto.Clone(req.(proto.Message))})
	s.mu.Unlock()
	return handler(ctx, req)
}

// Calls returns the requests recorded since the start (or the last Reset),
// in arrival order; with a suffix (e.g. "Points/Query") only those of
// methods ending in it.
func (s *Server) Calls(suffix string) []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Call
	for _, c := range s.calls {
		if suffix == "" || strings.HasSuffix(c.Method, suffix) {
			out = append(out, c)
		}
	}
	return out
}

// Reset forgets the recorded requests (the collections stay).
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

// CollectionNames returns the names of the collections, sorted.
func (s *Server) CollectionNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.collections))
	for n := range s.collections {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Collection returns a snapshot of the named collection, and whether it
// exists.
func (s *Server) Collection(name string) (Collection, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.collections[name]
	if !ok {
		return Collection{}, false
	}
	out := Collection{
		Name:    name,
		Create:  proto.Clone(c.create).(*qdrant.CreateCollection),
		Size:    c.size,
		Indexes: make(map[string]*qdrant.CreateFieldIndexCollection, len(c.indexes)),
	}
	for k, v := range c.indexes {
		out.Indexes[k] = proto.Clone(v).(*qdrant.CreateFieldIndexCollection)
	}
	pts, _ := c.filtered(nil)
	for _, p := range pts {
		out.Points = append(out.Points, Point{ID: p.id, Vector: append([]float32(nil), p.vec...), Payload: clonePayload(p.payload)})
	}
	return out, true
}

// Filter returns the filter of a recorded Points request that reads,
// counts or deletes points, and whether the request is of such a kind.
// Kinds inboxd's backend does not send (search, get, facet, batches) are
// reported with a nil filter: a backend that starts sending them must scope
// them too, and a check built on Filter then fails.
func (c Call) Filter() (*qdrant.Filter, bool) {
	switch r := c.Req.(type) {
	case *qdrant.ScrollPoints:
		return r.GetFilter(), true
	case *qdrant.CountPoints:
		return r.GetFilter(), true
	case *qdrant.QueryPoints:
		return r.GetFilter(), true
	case *qdrant.DeletePoints:
		return r.GetPoints().GetFilter(), true
	case *qdrant.SearchPoints, *qdrant.GetPoints, *qdrant.FacetCounts, *qdrant.SearchBatchPoints, *qdrant.QueryBatchPoints:
		return nil, true
	}
	return nil, false
}

// Name is the method's last part, e.g. "Query".
func (c Call) Name() string { return c.Method[strings.LastIndexByte(c.Method, '/')+1:] }

// MustKeyword returns the keyword a filter's top-level must conditions
// require of field key ("" when none does): what scopes a request to one
// tenant in payload tenancy.
func MustKeyword(f *qdrant.Filter, key string) string {
	for _, c := range f.GetMust() {
		if fc := c.GetField(); fc.GetKey() == key {
			if kw := fc.GetMatch().GetKeyword(); kw != "" {
				return kw
			}
		}
	}
	return ""
}

func clonePayload(p map[string]*qdrant.Value) map[string]*qdrant.Value {
	return proto.Clone(&qdrant.Struct{Fields: p}).(*qdrant.Struct).GetFields()
}
