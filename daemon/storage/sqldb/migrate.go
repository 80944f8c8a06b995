package sqldb

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// migrationFS holds the schema, one directory per dialect. Files are named
// NNNN_name.sql, numbered from 0001 without gaps, and are append-only: a
// released file is never edited, a change is a new file (in both directories,
// with the same number).
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFS embed.FS

// ErrSchemaTooNew is returned by Migrate when the database was migrated by a
// newer inboxd than this one: running on it could corrupt data, so start-up stops.
var ErrSchemaTooNew = errors.New("sqldb: database schema is newer than this binary")

// migrateLockID is the pg_advisory_xact_lock key that serialises migrations
// of one PostgreSQL database across processes ("inboxd" + 1 as bytes).
const migrateLockID int64 = 0x696e626f78640001

type migration struct {
	version int
	name    string // file name, for errors
	sql     string
}

// migrations returns the dialect's migrations ordered by version, checking
// that they are numbered 1..n without gaps or duplicates.
func migrations(d Dialect) ([]migration, error) {
	dir := "migrations/" + d.String()
	entries, err := fs.ReadDir(migrationFS, dir)
	if err != nil {
		return nil, fmt.Errorf("sqldb: read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("sqldb: migration file %s/%s is not named NNNN_name.sql", dir, name)
		}
		body, err := fs.ReadFile(migrationFS, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("sqldb: read migration %s: %w", name, err)
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("sqldb: %s migrations: %s should be number %d (gap or duplicate)", d, m.name, i+1)
		}
	}
	return ms, nil
}

// LatestVersion is the schema version this binary migrates to.
func (db *DB) LatestVersion() (int, error) {
	ms, err := migrations(db.Dialect)
	if err != nil {
		return 0, err
	}
	return len(ms), nil
}

// Migrate brings the schema up to LatestVersion. Each migration runs in its
// own transaction together with its schema_migrations row, so a failure leaves
// the database at the last good version. It is safe to run again and from
// several processes at once: on PostgreSQL each transaction first takes a
// transaction-scoped advisory lock; on SQLite every transaction is BEGIN
// IMMEDIATE, which holds the write lock from the start. A database whose
// version is above LatestVersion is refused with ErrSchemaTooNew.
func (db *DB) Migrate(ctx context.Context) error {
	ms, err := migrations(db.Dialect)
	if err != nil {
		return err
	}
	for {
		done, err := db.migrateStep(ctx, ms)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// migrateStep applies the next missing migration in one transaction, or
// reports done when the schema is current.
func (db *DB) migrateStep(ctx context.Context, ms []migration) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("sqldb: migrate: begin: %w", err)
	}
	defer func() {
		if err != nil || done {
			_ = tx.Rollback() // after a failure, or nothing to commit
		}
	}()
	if db.Dialect == Postgres {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockID); err != nil {
			return false, fmt.Errorf("sqldb: migrate: lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, createMigrationsTable(db.Dialect)); err != nil {
		return false, fmt.Errorf("sqldb: migrate: create schema_migrations: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&current); err != nil {
		return false, fmt.Errorf("sqldb: migrate: read version: %w", err)
	}
	switch {
	case current > len(ms):
		return false, fmt.Errorf("%w (database at version %d, binary knows %d)", ErrSchemaTooNew, current, len(ms))
	case current == len(ms):
		return true, nil
	}
	m := ms[current]
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return false, fmt.Errorf("sqldb: migrate to %d (%s): %w", m.version, m.name, err)
	}
	if _, err := tx.ExecContext(ctx, db.Rebind("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"),
		m.version, time.Now().UTC()); err != nil {
		return false, fmt.Errorf("sqldb: migrate to %d: record version: %w", m.version, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("sqldb: migrate to %d: commit: %w", m.version, err)
	}
	return false, nil
}

func createMigrationsTable(d Dialect) string {
	ts := "TIMESTAMP"
	if d == Postgres {
		ts = "TIMESTAMPTZ"
	}
	return "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at " + ts + " NOT NULL)"
}

// SchemaVersion returns the highest applied migration (0 for an empty database).
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	exists := "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
	if db.Dialect == Postgres {
		exists = "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_migrations'"
	}
	var n int
	if err := db.QueryRowContext(ctx, exists).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqldb: schema version: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	var v sql.NullInt64
	if err := db.QueryRowContext(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("sqldb: schema version: %w", err)
	}
	return int(v.Int64), nil
}
