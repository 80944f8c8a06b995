// Package vectors owns the per-user vector collections of mail threads: one
// collection per user, holding one point per thread (the thread's embedding
// and its payload), searched by similarity for the agent's memory
// (find_similar_threads, semantic search) and sampled for the background
// jobs (a diverse set of threads, the distribution of a payload field).
//
// One interface, Store, with two backends that pass the same contract tests:
//
//   - Embedded (the default): points persisted in the SQL database (the
//     vectors and vector_collections tables of migration 0004, SQLite or
//     PostgreSQL), searched in memory by brute force over a per-user index
//     loaded lazily, kept current on writes, and bounded in total size (least
//     recently used users are evicted first).
//   - Qdrant (qdrant/go-client over gRPC): tenancy "collection" keeps one
//     collection per user, "user-{uuid without dashes}"; tenancy "payload"
//     keeps one collection per embedding model, "inboxd-{model key}", whose
//     points all carry tenant_id (a keyword index marked is_tenant), and
//     every read, count and delete is scoped by the tenant filter added in
//     one function (Qdrant.scope).
//
// Every method takes the user's id and refuses the zero id: there is no
// user-less path. A collection belongs to one embedding model and vector
// size; Upsert creates it on first use, and writing another model's vectors
// into it fails with ErrModelMismatch until Recreate empties it for the new
// model.
//
// Point ids: a Point's ID is the thread id. Qdrant needs UUIDs or integers,
// so there a point is stored under PointID(thread id), the UUIDv5 of the
// thread id in the fixed namespace PointNamespace, as the original did (in
// payload tenancy under TenantPointID, the UUIDv5 in the user's namespace,
// since users share the collection); the embedded store keys rows by the
// thread id itself. Either way the payload field "thread_id" holds the thread
// id (set by the store when absent) and Hit.ID returns it.
package vectors

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/userid"
)

// Point is one thread's vector and payload.
type Point struct {
	ID     string // the thread id
	Vector []float32
	// Payload holds JSON-compatible values. "thread_id" is set to ID (a
	// different value is refused); "tenant_id" is reserved for payload
	// tenancy and refused.
	Payload map[string]any
}

// Hit is a point found by a search, with its cosine similarity to the query
// (1 is identical) and its payload (numbers come back as int64 when
// integral, else float64; lists as []any; objects as map[string]any).
type Hit struct {
	ID      string
	Score   float32
	Payload map[string]any
}

// Filter restricts a search to points whose payload matches every Must
// entry: a string, bool or integer value matches a field equal to it or a
// list field containing it; a []string value matches when the field equals
// or contains any of its strings. Only top-level fields can be filtered.
// The embedded backend sees booleans, numbers, strings up to 1 KiB and lists
// of such strings (nested objects such as "messages" are stored, returned,
// but not filterable).
type Filter struct {
	Must map[string]any
}

// Store is a backend of per-user vector collections. Every method checks
// user first (userid.ErrZero for the zero id).
type Store interface {
	// Upsert writes points (a point with an existing ID is replaced) into the
	// user's collection for model (a catalog key) of dims-sized vectors,
	// creating the collection on first use. It fails with ErrModelMismatch
	// when the collection exists for another model or size.
	Upsert(ctx context.Context, user userid.ID, model string, dims int, points []Point) error
	// Count is the number of points in the user's collection (0 when none).
	Count(ctx context.Context, user userid.ID) (int, error)
	// SearchVector returns up to limit points most similar to vector, best
	// first, leaving out the thread ids in exclude and points not matching
	// filter.
	SearchVector(ctx context.Context, user userid.ID, vector []float32, limit int, exclude []string, filter Filter) ([]Hit, error)
	// FieldDistribution counts the values of a payload field over the user's
	// points (string fields, and each element of []string fields) and returns
	// the limit most frequent (all when limit <= 0).
	FieldDistribution(ctx context.Context, user userid.ID, field string, limit int) (map[string]int, error)
	// DiverseSet returns up to n points matching filter that differ from one
	// another: the 100 (at least n) points nearest a random direction, then
	// greedily the one farthest from the last one picked.
	DiverseSet(ctx context.Context, user userid.ID, filter Filter, n int) ([]Hit, error)
	// Recreate empties the user's collection and sets it to model and dims
	// (used when the user changes embedding model).
	Recreate(ctx context.Context, user userid.ID, model string, dims int) error
	// Info reports the model and vector size of the user's collection, and
	// whether it exists.
	Info(ctx context.Context, user userid.ID) (model string, dims int, exists bool, err error)
}

// Errors of every backend (wrapped with details; test with errors.Is).
var (
	// ErrModelMismatch: the user's collection holds another model's or
	// size's vectors; Recreate it first.
	ErrModelMismatch = errors.New("vectors: collection belongs to another embedding model or vector size")
	// ErrInvalid: a malformed argument (vector size, empty id, filter value,
	// reserved payload field ...).
	ErrInvalid = errors.New("vectors: invalid argument")
)

// Limits of one call.
const (
	// MaxLimit bounds SearchVector's limit and DiverseSet's n.
	MaxLimit = 1000
	// diverseCandidates is the pool DiverseSet picks from (at least n).
	diverseCandidates = 100
	// fieldTenant is the payload field of payload tenancy; reserved.
	fieldTenant = "tenant_id"
	// fieldThreadID carries the thread id in every payload.
	fieldThreadID = "thread_id"
)

// Search is semantic search: it embeds query with e (as a query, where the
// provider distinguishes) and returns the limit nearest of the user's
// points, leaving out the exclude thread ids. The embedder must match the
// collection's vector size (and model, when e reports one); an empty or
// missing collection gives no hits.
func Search(ctx context.Context, s Store, e embed.Embedder, user userid.ID, query string, limit int, exclude []string) ([]Hit, error) {
	if err := checkUser(user); err != nil {
		return nil, err
	}
	model, dims, exists, err := s.Info(ctx, user)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, nil
	}
	if dims != e.Dimensions() {
		return nil, fmt.Errorf("%w: the collection holds %d-dimensional vectors of %q, the embedder makes %d", ErrModelMismatch, dims, model, e.Dimensions())
	}
	if m, ok := e.(interface{ Model() embed.Model }); ok && model != "" && m.Model().Key != model {
		return nil, fmt.Errorf("%w: the collection holds %q vectors, the embedder is %q", ErrModelMismatch, model, m.Model().Key)
	}
	vec, err := embed.Query(ctx, e, query)
	if err != nil {
		return nil, fmt.Errorf("vectors: embed query: %w", err)
	}
	return s.SearchVector(ctx, user, vec, limit, exclude, Filter{})
}

// PointNamespace is the UUIDv5 namespace of Qdrant point ids: a point's id
// is UUIDv5(PointNamespace, thread id). Fixed forever: changing it orphans
// every stored point.
const PointNamespace = "127a98c8-56d7-45d8-9c78-ecc1bb76b478"

// PointID is the Qdrant point id of a thread in collection tenancy: the
// name-based (SHA-1, version 5) UUID of threadID in PointNamespace.
func PointID(threadID string) string { return uuid5(PointNamespace, threadID) }

// TenantPointID is the Qdrant point id of a user's thread in payload
// tenancy: the UUIDv5 of threadID in the user's own namespace (the user's
// UUID). Users share collections there, and two users may well hold the same
// thread (one mailed the other): with PointID alone the second upsert would
// overwrite the first user's point.
func TenantPointID(user userid.ID, threadID string) string { return uuid5(user.String(), threadID) }

// uuid5 is RFC 9562's version 5 UUID of name in namespace ns (a canonical UUID).
func uuid5(ns, name string) string {
	nsBytes, _ := hex.DecodeString(strings.ReplaceAll(ns, "-", ""))
	h := sha1.New()
	h.Write(nsBytes)
	h.Write([]byte(name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = (u[6] & 0x0f) | 0x50 // version 5
	u[8] = (u[8] & 0x3f) | 0x80 // RFC 4122 variant
	s := hex.EncodeToString(u[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

// checkQuery validates a query vector: the collection's size, finite, not zero.
func checkQuery(v []float32, dims int) error {
	if problem := vectorProblem(v, dims); problem != "" {
		return fmt.Errorf("%w: the query vector %s", ErrInvalid, problem)
	}
	for _, x := range v {
		if x != 0 {
			return nil
		}
	}
	return fmt.Errorf("%w: zero query vector", ErrInvalid)
}

// checkLimit validates a result size.
func checkLimit(what string, n int) error {
	if n <= 0 || n > MaxLimit {
		return fmt.Errorf("%w: %s %d not in 1..%d", ErrInvalid, what, n, MaxLimit)
	}
	return nil
}

// checkCollectionArgs validates Upsert's and Recreate's model and dims.
func checkCollectionArgs(model string, dims int) error {
	if strings.TrimSpace(model) == "" {
		return fmt.Errorf("%w: empty model key", ErrInvalid)
	}
	if dims <= 0 || dims > 65536 {
		return fmt.Errorf("%w: vector size %d", ErrInvalid, dims)
	}
	return nil
}

// vectorProblem says what is wrong with a vector for a collection of dims
// ("" when nothing is).
func vectorProblem(v []float32, dims int) string {
	if len(v) != dims {
		return fmt.Sprintf("has %d dimensions, the collection %d", len(v), dims)
	}
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return "has a non-finite value"
		}
	}
	return ""
}

// preparedPoint is a validated point with its normalised payload.
type preparedPoint struct {
	id      string
	vector  []float32
	payload map[string]any // normalised JSON values, thread_id set
}

// preparePoints validates points and normalises their payloads. A thread id
// given twice keeps its last point.
func preparePoints(points []Point, dims int) ([]preparedPoint, error) {
	out := make([]preparedPoint, 0, len(points))
	at := make(map[string]int, len(points))
	for _, p := range points {
		if p.ID == "" {
			return nil, fmt.Errorf("%w: point without an id", ErrInvalid)
		}
		if problem := vectorProblem(p.Vector, dims); problem != "" {
			return nil, fmt.Errorf("%w: the vector of point %q %s", ErrInvalid, p.ID, problem)
		}
		payload, err := normalizePayload(p.ID, p.Payload)
		if err != nil {
			return nil, err
		}
		pp := preparedPoint{id: p.ID, vector: p.Vector, payload: payload}
		if i, ok := at[p.ID]; ok {
			out[i] = pp
			continue
		}
		at[p.ID] = len(out)
		out = append(out, pp)
	}
	return out, nil
}

// normalizePayload round-trips p through JSON so that every backend stores
// and returns the same values (int64 for integral numbers, float64 else,
// []any, map[string]any), refuses the reserved tenant_id, and sets thread_id.
func normalizePayload(threadID string, p map[string]any) (map[string]any, error) {
	if _, ok := p[fieldTenant]; ok {
		return nil, fmt.Errorf("%w: payload field %q is reserved", ErrInvalid, fieldTenant)
	}
	out := map[string]any{}
	if len(p) > 0 {
		data, err := json.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("%w: payload of %q: %v", ErrInvalid, threadID, err)
		}
		out, err = decodePayload(data)
		if err != nil {
			return nil, err
		}
	}
	if v, ok := out[fieldThreadID]; ok && v != threadID {
		return nil, fmt.Errorf("%w: payload thread_id %v differs from the point id %q", ErrInvalid, v, threadID)
	}
	out[fieldThreadID] = threadID
	return out, nil
}

// decodePayload parses a JSON object with normalised values.
func decodePayload(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("vectors: decode payload: %w", err)
	}
	if v == nil {
		v = map[string]any{}
	}
	for k, x := range v {
		v[k] = normalizeJSON(x)
	}
	return v, nil
}

func normalizeJSON(x any) any {
	switch t := x.(type) {
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, _ := t.Float64()
		return f
	case []any:
		for i := range t {
			t[i] = normalizeJSON(t[i])
		}
		return t
	case map[string]any:
		for k := range t {
			t[k] = normalizeJSON(t[k])
		}
		return t
	}
	return x
}

// condKind is the type of a compiled filter condition.
type condKind int

const (
	condString condKind = iota + 1
	condBool
	condInt
	condAnyString
)

// cond is one compiled Filter.Must entry.
type cond struct {
	field string
	kind  condKind
	s     string
	b     bool
	i     int64
	ss    []string
}

// compileFilter validates f and returns its conditions ordered by field.
func compileFilter(f Filter) ([]cond, error) {
	out := make([]cond, 0, len(f.Must))
	for field, v := range f.Must {
		if field == "" || field == fieldTenant {
			return nil, fmt.Errorf("%w: filter on field %q", ErrInvalid, field)
		}
		c := cond{field: field}
		switch t := v.(type) {
		case string:
			c.kind, c.s = condString, t
		case bool:
			c.kind, c.b = condBool, t
		case []string:
			if len(t) == 0 {
				return nil, fmt.Errorf("%w: filter on %q: empty list", ErrInvalid, field)
			}
			c.kind, c.ss = condAnyString, slices.Clone(t)
		default:
			rv := reflect.ValueOf(v)
			switch {
			case rv.CanInt():
				c.kind, c.i = condInt, rv.Int()
			case rv.CanUint() && rv.Uint() <= math.MaxInt64:
				c.kind, c.i = condInt, int64(rv.Uint())
			default:
				return nil, fmt.Errorf("%w: filter on %q: unsupported value type %T (want string, bool, integer or []string)", ErrInvalid, field, v)
			}
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].field < out[j].field })
	return out, nil
}

// matches reports whether a stored field value (normalised: string, bool,
// int64, float64, or a list of those) satisfies c.
func (c cond) matches(v any) bool {
	if list, ok := v.([]any); ok {
		for _, x := range list {
			if c.matchScalar(x) {
				return true
			}
		}
		return false
	}
	if list, ok := v.([]string); ok {
		for _, x := range list {
			if c.matchScalar(x) {
				return true
			}
		}
		return false
	}
	return c.matchScalar(v)
}

func (c cond) matchScalar(v any) bool {
	switch c.kind {
	case condString:
		s, ok := v.(string)
		return ok && s == c.s
	case condBool:
		b, ok := v.(bool)
		return ok && b == c.b
	case condInt:
		switch n := v.(type) {
		case int64:
			return n == c.i
		case float64:
			return n == float64(c.i)
		}
		return false
	case condAnyString:
		s, ok := v.(string)
		return ok && slices.Contains(c.ss, s)
	}
	return false
}

// topValues keeps the limit most frequent values (ties: smaller value
// first); limit <= 0 keeps all.
func topValues(counts map[string]int, limit int) map[string]int {
	if limit <= 0 || len(counts) <= limit {
		return counts
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if counts[keys[i]] != counts[keys[j]] {
			return counts[keys[i]] > counts[keys[j]]
		}
		return keys[i] < keys[j]
	})
	out := make(map[string]int, limit)
	for _, k := range keys[:limit] {
		out[k] = counts[k]
	}
	return out
}

// countFieldValue adds a payload field's value to a distribution: a string,
// or each string of a list.
func countFieldValue(counts map[string]int, v any) {
	switch t := v.(type) {
	case string:
		counts[t]++
	case []string:
		for _, s := range t {
			counts[s]++
		}
	case []any:
		for _, x := range t {
			if s, ok := x.(string); ok {
				counts[s]++
			}
		}
	}
}

// randomUnitVector is a direction drawn uniformly on the unit sphere.
func randomUnitVector(dims int) []float32 {
	v := make([]float32, dims)
	var norm float64
	for norm == 0 {
		norm = 0
		for i := range v {
			x := rand.NormFloat64()
			v[i] = float32(x)
			norm += x * x
		}
	}
	inv := float32(1 / math.Sqrt(norm))
	for i := range v {
		v[i] *= inv
	}
	return v
}

// candidate is a hit with its (unit) vector, for diversify.
type candidate struct {
	hit Hit
	vec []float32
}

// diversify picks up to n of cands: the first (nearest the random
// direction), then repeatedly the remaining candidate least similar to the
// one picked last, as the original's get_diverse_set_by_filter did.
func diversify(cands []candidate, n int) []Hit {
	if len(cands) == 0 || n <= 0 {
		return nil
	}
	remaining := slices.Clone(cands)
	last := remaining[0]
	remaining = remaining[1:]
	out := []Hit{last.hit}
	for len(out) < n && len(remaining) > 0 {
		best, bestSim := 0, float32(math.Inf(1))
		for i, c := range remaining {
			if s := cosine(c.vec, last.vec); s < bestSim {
				best, bestSim = i, s
			}
		}
		last = remaining[best]
		remaining = slices.Delete(remaining, best, best+1)
		out = append(out, last.hit)
	}
	return out
}

// cosine is the cosine similarity of a and b (0 when either is zero).
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

// unit returns v scaled to unit length (a copy; the zero vector stays zero).
func unit(v []float32) []float32 {
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	out := make([]float32, len(v))
	if n == 0 {
		return out
	}
	inv := 1 / math.Sqrt(n)
	for i, x := range v {
		out[i] = float32(float64(x) * inv)
	}
	return out
}

// checkUser is the first check of every call: the zero user id is refused
// (errors.Is(err, userid.ErrZero)).
func checkUser(user userid.ID) error {
	if err := user.Check(); err != nil {
		return fmt.Errorf("vectors: %w", err)
	}
	return nil
}
