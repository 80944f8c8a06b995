package kv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
)

// SQLStore is the embedded backend: the kv table of the SQL database
// (SQLite by default, PostgreSQL works too). Expiry is a unix-millisecond
// column; expired rows are invisible to every method, removed lazily when a
// read meets them, and in bulk by Sweep.
type SQLStore struct {
	db *sqldb.DB

	// stmts holds the store's statements, prepared on first use: preparing
	// costs SQLite about as much as running a point query, and the poller
	// runs thousands of point queries a second.
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

var _ Store = (*SQLStore)(nil)

// batchSize bounds the number of placeholders in one IN (...) list, well
// under SQLite's and PostgreSQL's parameter limits.
const batchSize = 500

// NewSQL returns the store on db's kv table (created by sqldb migration 0001).
// The store does not own db: Close releases only the store's prepared
// statements; close db yourself, after the store.
func NewSQL(db *sqldb.DB) *SQLStore {
	return &SQLStore{db: db, stmts: map[string]*sql.Stmt{}}
}

// maxCachedIn bounds the IN (...) lists whose statements are kept prepared:
// the short lists of point reads repeat, a long list rarely does.
const maxCachedIn = 16

// stmt returns the prepared statement of query (written with ? placeholders).
func (s *SQLStore) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	s.mu.Lock()
	st, ok := s.stmts[query]
	s.mu.Unlock()
	if ok {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, s.db.Rebind(query))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, ok := s.stmts[query]; ok { // prepared meanwhile by another caller
		_ = st.Close()
		return prev, nil
	}
	s.stmts[query] = st
	return st, nil
}

// exec runs a statement through the cache.
func (s *SQLStore) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// query runs a query through the cache, or unprepared when cache is false.
func (s *SQLStore) query(ctx context.Context, cache bool, query string, args ...any) (*sql.Rows, error) {
	if !cache {
		return s.db.QueryContext(ctx, s.db.Rebind(query), args...)
	}
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

func nowMS() int64 { return time.Now().UnixMilli() }

// expiresAt converts a ttl to the column value: NULL for 0, else the unix
// millisecond deadline, rounded up so a tiny ttl still expires in the future.
func expiresAt(ttl time.Duration) sql.NullInt64 {
	if ttl <= 0 {
		return sql.NullInt64{}
	}
	ms := (ttl + time.Millisecond - 1) / time.Millisecond
	return sql.NullInt64{Int64: nowMS() + int64(ms), Valid: true}
}

func live(exp sql.NullInt64, now int64) bool { return !exp.Valid || exp.Int64 > now }

// Get returns the value of key, or ErrNotFound.
func (s *SQLStore) Get(ctx context.Context, key string) (string, error) {
	var (
		value string
		exp   sql.NullInt64
	)
	st, err := s.stmt(ctx, selectOne)
	if err == nil {
		err = st.QueryRowContext(ctx, key).Scan(&value, &exp)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("kv: get %q: %w", key, err)
	}
	if now := nowMS(); !live(exp, now) {
		s.dropExpired(ctx, []string{key}, now)
		return "", ErrNotFound
	}
	return value, nil
}

const selectOne = "SELECT value, expires_at FROM kv WHERE key = ?"

// MGet returns the live values among keys.
func (s *SQLStore) MGet(ctx context.Context, keys ...string) (map[string]string, error) {
	out := make(map[string]string, len(keys))
	now := nowMS()
	var expired []string
	for start := 0; start < len(keys); start += batchSize {
		chunk := keys[start:min(start+batchSize, len(keys))]
		q := "SELECT key, value, expires_at FROM kv WHERE key IN (" + placeholders(len(chunk)) + ")"
		rows, err := s.query(ctx, len(chunk) <= maxCachedIn, q, anySlice(chunk)...)
		if err != nil {
			return nil, fmt.Errorf("kv: mget: %w", err)
		}
		expired, err = collect(rows, now, out, expired)
		if err != nil {
			return nil, fmt.Errorf("kv: mget: %w", err)
		}
	}
	s.dropExpired(ctx, expired, now)
	return out, nil
}

// collect reads key, value, expires_at rows into out (live ones) and
// expired (the others), and closes rows.
func collect(rows *sql.Rows, now int64, out map[string]string, expired []string) ([]string, error) {
	defer rows.Close()
	for rows.Next() {
		var (
			k, v string
			exp  sql.NullInt64
		)
		if err := rows.Scan(&k, &v, &exp); err != nil {
			return expired, err
		}
		if live(exp, now) {
			out[k] = v
		} else {
			expired = append(expired, k)
		}
	}
	return expired, rows.Err()
}

// Set stores value under key with expiry ttl (0: none), replacing any earlier
// value and expiry.
func (s *SQLStore) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("kv: set %q: negative ttl %v", key, ttl)
	}
	if _, err := s.exec(ctx, upsert, key, value, expiresAt(ttl)); err != nil {
		return fmt.Errorf("kv: set %q: %w", key, err)
	}
	return nil
}

const upsert = "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) " +
	"ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"

// SetMany stores all pairs without expiry in one transaction.
func (s *SQLStore) SetMany(ctx context.Context, pairs map[string]string) (err error) {
	if len(pairs) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("kv: set many: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	shared, err := s.stmt(ctx, upsert)
	if err != nil {
		return fmt.Errorf("kv: set many: %w", err)
	}
	stmt := tx.StmtContext(ctx, shared)
	defer stmt.Close()
	for k, v := range pairs {
		if _, err := stmt.ExecContext(ctx, k, v, sql.NullInt64{}); err != nil {
			return fmt.Errorf("kv: set many: %q: %w", k, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("kv: set many: commit: %w", err)
	}
	return nil
}

// Delete removes keys; missing keys are ignored.
func (s *SQLStore) Delete(ctx context.Context, keys ...string) error {
	for start := 0; start < len(keys); start += batchSize {
		chunk := keys[start:min(start+batchSize, len(keys))]
		q := s.db.Rebind("DELETE FROM kv WHERE key IN (" + placeholders(len(chunk)) + ")")
		if _, err := s.db.ExecContext(ctx, q, anySlice(chunk)...); err != nil {
			return fmt.Errorf("kv: delete: %w", err)
		}
	}
	return nil
}

// SetNX stores value with expiry ttl only if key is absent or expired, in one
// atomic statement: the upsert's update branch fires only over an expired row.
func (s *SQLStore) SetNX(ctx context.Context, key, value string, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("kv: setnx %q: ttl must be positive, got %v", key, ttl)
	}
	exp := expiresAt(ttl)
	res, err := s.exec(ctx,
		"INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) "+
			"ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at "+
			"WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?",
		key, value, exp, nowMS())
	if err != nil {
		return false, fmt.Errorf("kv: setnx %q: %w", key, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("kv: setnx %q: %w", key, err)
	}
	return n == 1, nil
}

// CompareAndSwap replaces a live value equal to old, in one statement.
func (s *SQLStore) CompareAndSwap(ctx context.Context, key, old, value string, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("kv: compare-and-swap %q: ttl must be positive, got %v", key, ttl)
	}
	res, err := s.exec(ctx,
		"UPDATE kv SET value = ?, expires_at = ? WHERE key = ? AND value = ? AND (expires_at IS NULL OR expires_at > ?)",
		value, expiresAt(ttl), key, old, nowMS())
	if err != nil {
		return false, fmt.Errorf("kv: compare-and-swap %q: %w", key, err)
	}
	return affectedOne(res, "compare-and-swap", key)
}

// CompareAndDelete deletes a live value equal to old, in one statement.
func (s *SQLStore) CompareAndDelete(ctx context.Context, key, old string) (bool, error) {
	res, err := s.exec(ctx,
		"DELETE FROM kv WHERE key = ? AND value = ? AND (expires_at IS NULL OR expires_at > ?)",
		key, old, nowMS())
	if err != nil {
		return false, fmt.Errorf("kv: compare-and-delete %q: %w", key, err)
	}
	return affectedOne(res, "compare-and-delete", key)
}

func affectedOne(res sql.Result, op, key string) (bool, error) {
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("kv: %s %q: %w", op, key, err)
	}
	return n == 1, nil
}

// Incr adds delta to the integer at key (absent or expired counts as 0) and
// returns the result. A live key keeps its expiry, as in Redis. A value that
// is not a base-10 int64, or a result that overflows, is an error and leaves
// the value unchanged.
func (s *SQLStore) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	if s.db.Dialect == sqldb.Postgres {
		return s.incrPostgres(ctx, key, delta)
	}
	return s.incrTx(ctx, key, delta)
}

// incrPostgres is one atomic upsert; PostgreSQL itself rejects a non-integer
// value (22P02) or an overflow (22003).
func (s *SQLStore) incrPostgres(ctx context.Context, key string, delta int64) (int64, error) {
	const q = "INSERT INTO kv (key, value, expires_at) VALUES ($1, $2, NULL) " +
		"ON CONFLICT (key) DO UPDATE SET " +
		"value = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= $3 THEN excluded.value " +
		"ELSE (CAST(kv.value AS BIGINT) + CAST($4 AS BIGINT))::text END, " +
		"expires_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= $3 THEN NULL ELSE kv.expires_at END " +
		"RETURNING value"
	var v string
	err := s.db.QueryRowContext(ctx, q, key, strconv.FormatInt(delta, 10), nowMS(), delta).Scan(&v)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "22P02" || pgErr.Code == "22003") {
			return 0, fmt.Errorf("kv: incr %q: value is not an integer or the result overflows: %w", key, err)
		}
		return 0, fmt.Errorf("kv: incr %q: %w", key, err)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("kv: incr %q: %w", key, err)
	}
	return n, nil
}

// incrTx reads, adds in Go (with overflow and syntax checks SQLite's CAST
// lacks) and writes in one transaction. On SQLite every transaction is
// BEGIN IMMEDIATE, so concurrent increments serialise on the write lock.
func (s *SQLStore) incrTx(ctx context.Context, key string, delta int64) (n int64, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("kv: incr %q: %w", key, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var (
		cur string
		exp sql.NullInt64
	)
	err = tx.QueryRowContext(ctx, s.db.Rebind("SELECT value, expires_at FROM kv WHERE key = ?"), key).Scan(&cur, &exp)
	switch {
	case errors.Is(err, sql.ErrNoRows) || (err == nil && !live(exp, nowMS())):
		n, exp = delta, sql.NullInt64{}
	case err != nil:
		return 0, fmt.Errorf("kv: incr %q: %w", key, err)
	default:
		old, perr := strconv.ParseInt(cur, 10, 64)
		if perr != nil {
			return 0, fmt.Errorf("kv: incr %q: value is not an integer", key)
		}
		n = old + delta
		if (delta > 0 && n < old) || (delta < 0 && n > old) {
			return 0, fmt.Errorf("kv: incr %q: result overflows int64", key)
		}
	}
	if _, err = tx.ExecContext(ctx, s.db.Rebind(upsert), key, strconv.FormatInt(n, 10), exp); err != nil {
		return 0, fmt.Errorf("kv: incr %q: %w", key, err)
	}
	if err = tx.Commit(); err != nil {
		return 0, fmt.Errorf("kv: incr %q: commit: %w", key, err)
	}
	return n, nil
}

// Scan returns every live key starting with prefix. The prefix is matched
// literally (no LIKE wildcards) as the index range [prefix, successor).
func (s *SQLStore) Scan(ctx context.Context, prefix string) (map[string]string, error) {
	q, args := "SELECT key, value, expires_at FROM kv", []any{}
	if prefix != "" {
		q += " WHERE key >= ?"
		args = append(args, prefix)
		if end, ok := prefixEnd(prefix); ok {
			q += " AND key < ?"
			args = append(args, end)
		}
	}
	now := nowMS()
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("kv: scan %q: %w", prefix, err)
	}
	out := make(map[string]string)
	expired, err := collect(rows, now, out, nil)
	if err != nil {
		return nil, fmt.Errorf("kv: scan %q: %w", prefix, err)
	}
	s.dropExpired(ctx, expired, now)
	return out, nil
}

// prefixEnd returns the smallest string greater than every string starting
// with prefix, in bytewise order (SQLite BINARY, PostgreSQL COLLATE "C"), or
// false if there is none. For valid UTF-8 it increments the last code point
// (skipping surrogates), so the bound stays valid UTF-8 for PostgreSQL.
func prefixEnd(prefix string) (string, bool) {
	if !utf8.ValidString(prefix) {
		b := []byte(prefix)
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] < 0xff {
				b[i]++
				return string(b[:i+1]), true
			}
		}
		return "", false
	}
	r := []rune(prefix)
	for i := len(r) - 1; i >= 0; i-- {
		next := r[i] + 1
		if next == 0xD800 {
			next = 0xE000
		}
		if next <= utf8.MaxRune {
			return string(r[:i]) + string(next), true
		}
	}
	return "", false
}

// Sweep deletes every expired row and reports how many it removed. The
// daemon calls it periodically; correctness never depends on it.
func (s *SQLStore) Sweep(ctx context.Context) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.db.Rebind("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?"), nowMS())
	if err != nil {
		return 0, fmt.Errorf("kv: sweep: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("kv: sweep: %w", err)
	}
	return n, nil
}

// dropExpired deletes keys that a read found expired at now, unless a writer
// has renewed them since. It is best effort: the rows are invisible either
// way and Sweep removes what is left, so a failure here must not fail the read.
func (s *SQLStore) dropExpired(ctx context.Context, keys []string, now int64) {
	for start := 0; start < len(keys); start += batchSize {
		chunk := keys[start:min(start+batchSize, len(keys))]
		q := s.db.Rebind("DELETE FROM kv WHERE key IN (" + placeholders(len(chunk)) + ") AND expires_at IS NOT NULL AND expires_at <= ?")
		if _, err := s.db.ExecContext(ctx, q, append(anySlice(chunk), now)...); err != nil {
			return
		}
	}
}

// Ping checks that the database answers.
func (s *SQLStore) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("kv: ping: %w", err)
	}
	return nil
}

// Close releases the store's prepared statements; the *sqldb.DB belongs to
// the caller, who closes it.
func (s *SQLStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for q, st := range s.stmts {
		errs = append(errs, st.Close())
		delete(s.stmts, q)
	}
	return errors.Join(errs...)
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss), len(ss)+1)
	for i, s := range ss {
		out[i] = s
	}
	return out
}
