// Package sqldb owns the connection to the SQL database and its schema: it
// opens SQLite (the embedded default, modernc.org/sqlite, no cgo) or
// PostgreSQL (pgx) from one URL, and applies the versioned migrations embedded
// in the binary. Stores (users, workflows, logs, the embedded KV ...) take a
// *DB and write each query once with `?` placeholders, passed through Rebind.
//
// Conventions for every table and query:
//   - ids are TEXT (canonical UUID strings); user-owned rows carry user_id;
//   - timestamps are passed as UTC time.Time: TIMESTAMPTZ on PostgreSQL,
//     TIMESTAMP on SQLite, stored as sortable text ("2006-01-02 15:04:05.999999999-07:00");
//   - booleans are BOOLEAN (0/1 integers on SQLite);
//   - transactions on SQLite are BEGIN IMMEDIATE, so writers serialise
//     instead of failing with SQLITE_BUSY when a reader upgrades; pass
//     sql.TxOptions{ReadOnly: true} for a read-only transaction that should
//     not take the write lock.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
	"modernc.org/sqlite"               // driver "sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect is the SQL flavour behind a DB.
type Dialect int

const (
	// SQLite is the embedded default (a file under the data directory).
	SQLite Dialect = iota + 1
	// Postgres is PostgreSQL, for several replicas sharing one database.
	Postgres
)

// String returns "sqlite" or "postgres".
func (d Dialect) String() string {
	switch d {
	case SQLite:
		return "sqlite"
	case Postgres:
		return "postgres"
	}
	return "unknown(" + strconv.Itoa(int(d)) + ")"
}

// DB is an open database and its dialect. The embedded *sql.DB is safe for
// concurrent use; Close it once when done.
type DB struct {
	*sql.DB
	Dialect Dialect
	path    string // the SQLite file, absolute; "" for PostgreSQL
}

// sqliteParams are the connection settings of every SQLite connection:
// busy_timeout first (so the others wait rather than fail), WAL for
// concurrent readers, foreign keys enforced, NORMAL sync (safe with WAL),
// immediate write transactions, and sortable text timestamps.
const sqliteParams = "_pragma=busy_timeout(10000)" +
	"&_pragma=journal_mode(WAL)" +
	"&_pragma=foreign_keys(1)" +
	"&_pragma=synchronous(NORMAL)" +
	"&_txlock=immediate" +
	"&_time_format=sqlite"

// sqliteConns is the size of SQLite's fixed connection pool: four per core
// (8 to 32) is enough for concurrent readers under WAL, since SQLite work is
// CPU-bound and writers serialise anyway; every connection keeps its own page
// cache and statements outside the Go heap (~190 KiB each once warm). A
// transaction that asked for a second connection while holding one would
// wait only if all were taken.
func sqliteConns() int { return min(32, max(8, 4*runtime.GOMAXPROCS(0))) }

// Open connects to the database at url and checks that it answers:
//
//	sqlite://PATH                 PATH relative (sqlite://./data/inboxd.db) or absolute
//	                              (sqlite:///var/lib/inboxd/inboxd.db); a missing parent directory
//	                              is created with mode 0700, a missing file with mode 0600
//	postgres://... postgresql://... any URL pgx accepts
//
// Open does not migrate: call Migrate before use.
func Open(ctx context.Context, url string) (*DB, error) {
	var (
		db      *sql.DB
		dialect Dialect
		dbPath  string
		err     error
	)
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		path := strings.TrimPrefix(url, "sqlite://")
		if path == "" || strings.Contains(path, "?") {
			return nil, fmt.Errorf("sqldb: sqlite url needs a file path without '?': %q", url)
		}
		if path == ":memory:" {
			return nil, errors.New("sqldb: in-memory SQLite is not supported (every pooled connection would get its own database); use a file")
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("sqldb: create database directory: %w", err)
		}
		// Create a new database file 0600 ourselves: SQLite would use 0644,
		// and gives its -wal and -shm files the main file's mode.
		f, ferr := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if ferr != nil {
			return nil, fmt.Errorf("sqldb: create database file: %w", ferr)
		}
		_ = f.Close()
		if strings.HasPrefix(path, "file:") {
			path = "./" + path // a plain file name, not an SQLite URI
		}
		dialect = SQLite
		abs, aerr := filepath.Abs(path)
		if aerr != nil {
			return nil, fmt.Errorf("sqldb: database path: %w", aerr)
		}
		// Through a connector whose errors name the file when its disk is
		// full (diskfull.go).
		db = sql.OpenDB(&liteConnector{dsn: path + "?" + sqliteParams, path: abs})
		dbPath = abs
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		dialect = Postgres
		db, err = sql.Open("pgx", url)
	default:
		scheme, _, _ := strings.Cut(url, ":")
		return nil, fmt.Errorf("sqldb: unsupported database url scheme %q (want sqlite:// or postgres://)", scheme)
	}
	if err != nil { // PostgreSQL only: OpenDB cannot fail
		return nil, fmt.Errorf("sqldb: open %s: %w", dialect, err)
	}
	// Keep connections for bursts of concurrent requests instead of the
	// database/sql default of 2 idle ones (each new PostgreSQL connection
	// costs a round trip and a backend).
	db.SetMaxIdleConns(10)
	if dialect == SQLite {
		// A new SQLite connection re-runs the pragmas, re-reads the schema and
		// re-prepares every statement: a pool that closes connections beyond
		// its idle limit after a burst (a thousand lease renewals) spends most
		// of its time opening them again. So SQLite gets a fixed pool: bursts
		// queue for a connection in Go, which is cheaper than SQLite's busy
		// handler, and writers serialise on SQLite's one write lock anyway.
		db.SetMaxOpenConns(sqliteConns())
		db.SetMaxIdleConns(sqliteConns())
	}
	d := &DB{DB: db, Dialect: dialect, path: dbPath}
	if err := d.Ping(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return d, nil
}

// Ping checks that the database answers (readiness).
func (db *DB) Ping(ctx context.Context) error {
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("sqldb: ping %s: %w", db.Dialect, err)
	}
	return nil
}

// Rebind turns the `?` placeholders of query into `$1..$n` for PostgreSQL and
// returns it unchanged for SQLite. A `?` inside a quoted string or identifier
// is left alone.
func (db *DB) Rebind(query string) string {
	if db.Dialect != Postgres {
		return query
	}
	return rebindDollar(query)
}

func rebindDollar(query string) string {
	if !strings.Contains(query, "?") {
		return query
	}
	var (
		b     strings.Builder
		n     int
		quote byte // the open quote character, 0 outside quotes
	)
	b.Grow(len(query) + 8)
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0 // a doubled quote closes and reopens: same result
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// IsUniqueViolation reports whether err (or an error it wraps) is a unique or
// primary-key constraint violation, on either dialect.
func (db *DB) IsUniqueViolation(err error) bool {
	return IsUniqueViolation(err)
}

// IsUniqueViolation is DB.IsUniqueViolation for code that has no *DB at hand.
func IsUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505" // unique_violation
	}
	var liteErr *sqlite.Error
	if errors.As(err, &liteErr) {
		switch liteErr.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return true
		}
	}
	return false
}
