package vectors

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
)

// DefaultMaxCacheBytes bounds the in-memory indexes of the embedded store
// when EmbeddedOptions.MaxCacheBytes is 0.
const DefaultMaxCacheBytes = 256 << 20

// maxIndexedString is the longest string value the embedded index keeps for
// filters and distributions (longer ones are stored and returned, not indexed).
const maxIndexedString = 1024

// upsertRows is how many points one INSERT writes (5 parameters each, well
// within SQLite's and PostgreSQL's limits).
const upsertRows = 100

// EmbeddedOptions tune the embedded store; the zero value is ready to use.
type EmbeddedOptions struct {
	// MaxCacheBytes bounds the memory of all users' in-memory indexes
	// together (vectors, ids and indexed payload fields, estimated); beyond
	// it, the least recently used users' indexes are dropped and reloaded on
	// their next search. 0 means DefaultMaxCacheBytes. A single user whose
	// index is larger than the bound is searched but not kept.
	MaxCacheBytes int64
}

// Embedded is the default backend: points in the SQL database (tables
// vectors and vector_collections, migration 0004), searched by brute force
// in memory. Each user's index (unit vectors, thread ids and the payload
// fields that filters can use) is loaded on the user's first search, updated
// in place by this process's writes, and reloaded when another process wrote
// (vector_collections.version moved). Payloads are read from the database
// only for the hits returned. Safe for concurrent use by several goroutines
// and several processes sharing the database.
type Embedded struct {
	db    *sqldb.DB
	cache *indexCache
	dot   func(a, b []float32) float32 // dotKernel's choice for this CPU
}

var _ Store = (*Embedded)(nil)

// NewEmbedded returns the embedded store on db (migrated to at least 0004).
// It does not own db.
func NewEmbedded(db *sqldb.DB, opts EmbeddedOptions) *Embedded {
	max := opts.MaxCacheBytes
	if max <= 0 {
		max = DefaultMaxCacheBytes
	}
	return &Embedded{db: db, cache: newIndexCache(max), dot: dotKernel()}
}

// Close drops the in-memory indexes; the database stays open.
func (s *Embedded) Close() error {
	s.cache.clear()
	return nil
}

// collectionInfo is a vector_collections row.
type collectionInfo struct {
	model   string
	dims    int
	version int64
}

func (s *Embedded) collection(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, user userid.ID, forUpdate bool) (collectionInfo, bool, error) {
	query := "SELECT model, dims, version FROM vector_collections WHERE user_id = ?"
	if forUpdate && s.db.Dialect == sqldb.Postgres {
		query += " FOR UPDATE" // SQLite write transactions are exclusive already
	}
	var c collectionInfo
	err := q.QueryRowContext(ctx, s.db.Rebind(query), user.String()).Scan(&c.model, &c.dims, &c.version)
	if errors.Is(err, sql.ErrNoRows) {
		return collectionInfo{}, false, nil
	}
	if err != nil {
		return collectionInfo{}, false, fmt.Errorf("vectors: read collection: %w", err)
	}
	return c, true, nil
}

// Info implements Store.
func (s *Embedded) Info(ctx context.Context, user userid.ID) (string, int, bool, error) {
	if err := checkUser(user); err != nil {
		return "", 0, false, err
	}
	c, ok, err := s.collection(ctx, s.db, user, false)
	return c.model, c.dims, ok, err
}

// Count implements Store.
func (s *Embedded) Count(ctx context.Context, user userid.ID) (int, error) {
	if err := checkUser(user); err != nil {
		return 0, err
	}
	var n int
	if err := s.db.QueryRowContext(ctx, s.db.Rebind("SELECT COUNT(*) FROM vectors WHERE user_id = ?"), user.String()).Scan(&n); err != nil {
		return 0, fmt.Errorf("vectors: count: %w", err)
	}
	return n, nil
}

// Upsert implements Store.
func (s *Embedded) Upsert(ctx context.Context, user userid.ID, model string, dims int, points []Point) (err error) {
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
	rows := make([]storedPoint, len(prepared))
	for i, p := range prepared {
		if rows[i], err = encodePoint(p); err != nil {
			return err
		}
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("vectors: upsert: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if _, err = tx.ExecContext(ctx, s.db.Rebind(
		"INSERT INTO vector_collections (user_id, model, dims, version, created_at) VALUES (?, ?, ?, 0, ?) ON CONFLICT (user_id) DO NOTHING"),
		user.String(), model, dims, time.Now().UTC()); err != nil {
		return fmt.Errorf("vectors: upsert: create collection: %w", err)
	}
	col, _, err := s.collection(ctx, tx, user, true)
	if err != nil {
		return err
	}
	if col.model != model || col.dims != dims {
		return fmt.Errorf("%w: the collection holds %q (%d dimensions), not %q (%d)", ErrModelMismatch, col.model, col.dims, model, dims)
	}
	for start := 0; start < len(rows); start += upsertRows {
		batch := rows[start:min(start+upsertRows, len(rows))]
		var (
			q    strings.Builder
			args = make([]any, 0, 5*len(batch))
		)
		q.WriteString("INSERT INTO vectors (user_id, point_id, vector, payload, fields) VALUES ")
		for i, r := range batch {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?, ?, ?)")
			args = append(args, user.String(), r.id, r.vector, r.payload, r.fields)
		}
		q.WriteString(" ON CONFLICT (user_id, point_id) DO UPDATE SET vector = excluded.vector, payload = excluded.payload, fields = excluded.fields")
		if _, err = tx.ExecContext(ctx, s.db.Rebind(q.String()), args...); err != nil {
			return fmt.Errorf("vectors: upsert: %w", err)
		}
	}
	var version int64
	if err = tx.QueryRowContext(ctx, s.db.Rebind("UPDATE vector_collections SET version = version + 1 WHERE user_id = ? RETURNING version"),
		user.String()).Scan(&version); err != nil {
		return fmt.Errorf("vectors: upsert: bump version: %w", err)
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("vectors: upsert: commit: %w", err)
	}
	s.cache.applyUpsert(user.String(), version, dims, prepared)
	return nil
}

// Recreate implements Store.
func (s *Embedded) Recreate(ctx context.Context, user userid.ID, model string, dims int) (err error) {
	if err := checkUser(user); err != nil {
		return err
	}
	if err := checkCollectionArgs(model, dims); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("vectors: recreate: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	// The version keeps growing across recreations, so that no process
	// mistakes its index of the old collection for the new one.
	if _, err = tx.ExecContext(ctx, s.db.Rebind(
		"INSERT INTO vector_collections (user_id, model, dims, version, created_at) VALUES (?, ?, ?, 0, ?) "+
			"ON CONFLICT (user_id) DO UPDATE SET model = excluded.model, dims = excluded.dims, "+
			"version = vector_collections.version + 1, created_at = excluded.created_at"),
		user.String(), model, dims, time.Now().UTC()); err != nil {
		return fmt.Errorf("vectors: recreate: %w", err)
	}
	if _, err = tx.ExecContext(ctx, s.db.Rebind("DELETE FROM vectors WHERE user_id = ?"), user.String()); err != nil {
		return fmt.Errorf("vectors: recreate: delete points: %w", err)
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("vectors: recreate: commit: %w", err)
	}
	s.cache.drop(user.String())
	return nil
}

// index returns the user's current in-memory index, loading it when absent
// or stale; nil when the user has no collection.
func (s *Embedded) index(ctx context.Context, user userid.ID) (*userIndex, error) {
	col, ok, err := s.collection(ctx, s.db, user, false)
	if err != nil {
		return nil, err
	}
	if !ok {
		s.cache.drop(user.String())
		return nil, nil
	}
	return s.cache.get(user.String(), col, func() (*userIndex, error) { return s.load(ctx, user, col) })
}

// load reads the user's points into a new index. The version was read
// before the points, so the index holds at least that version's points;
// should a write slip in between, the next check sees a newer version and
// reloads.
func (s *Embedded) load(ctx context.Context, user userid.ID, col collectionInfo) (*userIndex, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Rebind("SELECT point_id, vector, fields FROM vectors WHERE user_id = ?"), user.String())
	if err != nil {
		return nil, fmt.Errorf("vectors: load index: %w", err)
	}
	defer rows.Close()
	idx := newUserIndex(col.version, col.model, col.dims, s.dot)
	for rows.Next() {
		var (
			id     string
			blob   []byte
			fields string
		)
		if err := rows.Scan(&id, &blob, &fields); err != nil {
			return nil, fmt.Errorf("vectors: load index: %w", err)
		}
		vec, err := decodeVector(blob, col.dims)
		if err != nil {
			return nil, fmt.Errorf("vectors: load index: point %q: %w", id, err)
		}
		f, err := decodeFields(fields)
		if err != nil {
			return nil, fmt.Errorf("vectors: load index: point %q: %w", id, err)
		}
		idx.put(id, unit(vec), f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("vectors: load index: %w", err)
	}
	return idx, nil
}

// SearchVector implements Store.
func (s *Embedded) SearchVector(ctx context.Context, user userid.ID, vector []float32, limit int, exclude []string, filter Filter) ([]Hit, error) {
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
	idx, err := s.index(ctx, user)
	if err != nil || idx == nil {
		return nil, err
	}
	if err := checkQuery(vector, idx.dims); err != nil {
		return nil, err
	}
	found := idx.search(unit(vector), limit, excludeSet(exclude), conds)
	hits := make([]Hit, len(found))
	for i, f := range found {
		hits[i] = Hit{ID: f.id, Score: f.score}
	}
	return s.withPayloads(ctx, user, hits)
}

// DiverseSet implements Store.
func (s *Embedded) DiverseSet(ctx context.Context, user userid.ID, filter Filter, n int) ([]Hit, error) {
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
	idx, err := s.index(ctx, user)
	if err != nil || idx == nil {
		return nil, err
	}
	found := idx.search(randomUnitVector(idx.dims), max(diverseCandidates, n), nil, conds)
	cands := make([]candidate, len(found))
	for i, f := range found {
		cands[i] = candidate{hit: Hit{ID: f.id, Score: f.score}, vec: f.vec}
	}
	return s.withPayloads(ctx, user, diversify(cands, n))
}

// FieldDistribution implements Store.
func (s *Embedded) FieldDistribution(ctx context.Context, user userid.ID, field string, limit int) (map[string]int, error) {
	if err := checkUser(user); err != nil {
		return nil, err
	}
	if field == "" {
		return nil, fmt.Errorf("%w: empty field name", ErrInvalid)
	}
	idx, err := s.index(ctx, user)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	if idx != nil {
		idx.distribution(field, counts)
	}
	return topValues(counts, limit), nil
}

// withPayloads fills the hits' payloads from the database, keeping their
// order; a hit whose row vanished meanwhile (a concurrent Recreate) is left out.
func (s *Embedded) withPayloads(ctx context.Context, user userid.ID, hits []Hit) ([]Hit, error) {
	if len(hits) == 0 {
		return hits, nil
	}
	payloads := make(map[string]map[string]any, len(hits))
	for start := 0; start < len(hits); start += upsertRows {
		batch := hits[start:min(start+upsertRows, len(hits))]
		args := make([]any, 0, len(batch)+1)
		args = append(args, user.String())
		for _, h := range batch {
			args = append(args, h.ID)
		}
		q := "SELECT point_id, payload FROM vectors WHERE user_id = ? AND point_id IN (?" + strings.Repeat(", ?", len(batch)-1) + ")"
		rows, err := s.db.QueryContext(ctx, s.db.Rebind(q), args...)
		if err != nil {
			return nil, fmt.Errorf("vectors: read payloads: %w", err)
		}
		for rows.Next() {
			var id, data string
			if err := rows.Scan(&id, &data); err != nil {
				rows.Close()
				return nil, fmt.Errorf("vectors: read payloads: %w", err)
			}
			p, err := decodePayload([]byte(data))
			if err != nil {
				rows.Close()
				return nil, err
			}
			payloads[id] = p
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("vectors: read payloads: %w", err)
		}
	}
	out := hits[:0]
	for _, h := range hits {
		if p, ok := payloads[h.ID]; ok {
			h.Payload = p
			out = append(out, h)
		}
	}
	return out, nil
}

func excludeSet(ids []string) map[string]bool {
	if len(ids) == 0 {
		return nil
	}
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// storedPoint is a point encoded for its row.
type storedPoint struct {
	id      string
	vector  []byte // little-endian float32
	payload string // JSON
	fields  string // JSON of the indexed fields
}

func encodePoint(p preparedPoint) (storedPoint, error) {
	payload, err := json.Marshal(p.payload)
	if err != nil {
		return storedPoint{}, fmt.Errorf("%w: payload of %q: %v", ErrInvalid, p.id, err)
	}
	fields, err := json.Marshal(indexFields(p.payload))
	if err != nil {
		return storedPoint{}, fmt.Errorf("%w: payload of %q: %v", ErrInvalid, p.id, err)
	}
	return storedPoint{id: p.id, vector: encodeVector(p.vector), payload: string(payload), fields: string(fields)}, nil
}

func encodeVector(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func decodeVector(b []byte, dims int) ([]float32, error) {
	if len(b) != 4*dims {
		return nil, fmt.Errorf("stored vector of %d bytes, want %d", len(b), 4*dims)
	}
	v := make([]float32, dims)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}

// indexFields is the part of a (normalised) payload the in-memory index
// keeps: top-level booleans, numbers, strings up to maxIndexedString bytes,
// and lists made only of such strings.
func indexFields(payload map[string]any) map[string]any {
	out := make(map[string]any)
	for k, v := range payload {
		switch t := v.(type) {
		case bool, int64, float64:
			out[k] = t
		case string:
			if len(t) <= maxIndexedString {
				out[k] = t
			}
		case []any:
			ss := make([]string, 0, len(t))
			for _, x := range t {
				s, ok := x.(string)
				if !ok || len(s) > maxIndexedString {
					ss = nil
					break
				}
				ss = append(ss, s)
			}
			if ss != nil {
				out[k] = ss
			}
		}
	}
	return out
}

// decodeFields parses a fields column: lists become []string.
func decodeFields(data string) (map[string]any, error) {
	m, err := decodePayload([]byte(data))
	if err != nil {
		return nil, err
	}
	for k, v := range m {
		if list, ok := v.([]any); ok {
			ss := make([]string, 0, len(list))
			for _, x := range list {
				if s, ok := x.(string); ok {
					ss = append(ss, s)
				}
			}
			m[k] = ss
		}
	}
	return m, nil
}
