package sqldb

// A full disk under the SQLite file: SQLite refuses the write with
// SQLITE_FULL ("database or disk is full"), rolls the transaction back and
// leaves the database intact; writes succeed again once there is room. The
// SQLite connections are wrapped so that every store's error then says
// which file cannot grow and what to do, whatever query hit it.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrDiskFull is wrapped by the error of a write refused because the disk
// (volume) holding the SQLite database is full.
var ErrDiskFull = errors.New("sqldb: disk full")

// IsDiskFull reports whether err is a write refused for want of disk space,
// on either dialect (SQLite's SQLITE_FULL, PostgreSQL's disk_full).
func IsDiskFull(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrDiskFull) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "53100" // disk_full
	}
	var liteErr *sqlite.Error
	return errors.As(err, &liteErr) && liteErr.Code()&0xff == sqlite3.SQLITE_FULL
}

// diskFullError is SQLITE_FULL with the file named; it unwraps to the
// driver's error.
type diskFullError struct {
	path string
	err  error
}

func (e *diskFullError) Error() string {
	return fmt.Sprintf("sqldb: disk full: cannot write the SQLite database %s (%v); "+
		"free space on its volume: writes succeed again once there is room", e.path, e.err)
}

func (e *diskFullError) Unwrap() error        { return e.err }
func (e *diskFullError) Is(target error) bool { return target == ErrDiskFull }

// MinFreeBytes is the free space under which CheckDiskSpace reports the
// SQLite volume full: SQLite needs room for the WAL and new pages.
const MinFreeBytes = 1 << 20

// CheckDiskSpace reports (wrapping ErrDiskFull) when the volume holding
// the SQLite database has less than MinFreeBytes free for the daemon, so
// that readiness can say why writes fail before one does. It is nil for
// PostgreSQL, whose server reports its own disk. It only reads: unlike a
// failed Ping, a full disk is no reason to restart the daemon, which keeps
// serving reads.
func (db *DB) CheckDiskSpace() error {
	if db.path == "" {
		return nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(db.path), &st); err != nil {
		return fmt.Errorf("sqldb: free space of %s: %w", db.path, err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < MinFreeBytes {
		return fmt.Errorf("%w: the volume holding the SQLite database %s has %d bytes free: writes fail until space is freed",
			ErrDiskFull, db.path, free)
	}
	return nil
}

// sqliteDriver is modernc's registered driver.
var sqliteDriver = sync.OnceValue(func() driver.Driver {
	db, _ := sql.Open("sqlite", "") // connects to nothing
	defer db.Close()
	return db.Driver()
})

// liteConnector opens SQLite connections whose SQLITE_FULL errors name
// the file.
type liteConnector struct {
	dsn, path string
}

func (c *liteConnector) Driver() driver.Driver { return sqliteDriver() }

func (c *liteConnector) Connect(context.Context) (driver.Conn, error) {
	conn, err := sqliteDriver().Open(c.dsn)
	if err != nil {
		return nil, c.wrap(err)
	}
	if lc, ok := conn.(liteDriverConn); ok {
		return &liteConn{liteDriverConn: lc, c: c}, nil
	}
	return conn, nil // another driver version: plain errors
}

// wrap names the file in a SQLITE_FULL error; other errors (and nil) pass
// unchanged, so database/sql still sees driver.ErrBadConn, io.EOF ...
func (c *liteConnector) wrap(err error) error {
	var liteErr *sqlite.Error
	if errors.As(err, &liteErr) && liteErr.Code()&0xff == sqlite3.SQLITE_FULL {
		return &diskFullError{path: c.path, err: err}
	}
	return err
}

// liteDriverConn is what modernc's connections implement and database/sql
// uses.
type liteDriverConn interface {
	driver.Conn
	driver.ConnPrepareContext
	driver.ConnBeginTx
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
}

type liteConn struct {
	liteDriverConn
	c *liteConnector
}

func (x *liteConn) Prepare(query string) (driver.Stmt, error) {
	return x.PrepareContext(context.Background(), query)
}

func (x *liteConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	s, err := x.liteDriverConn.PrepareContext(ctx, query)
	if err != nil {
		return nil, x.c.wrap(err)
	}
	if ls, ok := s.(liteDriverStmt); ok {
		return &liteStmt{liteDriverStmt: ls, c: x.c}, nil
	}
	return s, nil
}

func (x *liteConn) Begin() (driver.Tx, error) {
	return x.BeginTx(context.Background(), driver.TxOptions{})
}

func (x *liteConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	tx, err := x.liteDriverConn.BeginTx(ctx, opts)
	if err != nil {
		return nil, x.c.wrap(err)
	}
	return &liteTx{Tx: tx, c: x.c}, nil
}

func (x *liteConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	r, err := x.liteDriverConn.ExecContext(ctx, query, args)
	return r, x.c.wrap(err)
}

func (x *liteConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	r, err := x.liteDriverConn.QueryContext(ctx, query, args)
	if err != nil {
		return nil, x.c.wrap(err)
	}
	return &liteRows{Rows: r, c: x.c}, nil
}

type liteDriverStmt interface {
	driver.Stmt
	driver.StmtExecContext
	driver.StmtQueryContext
}

type liteStmt struct {
	liteDriverStmt
	c *liteConnector
}

func (s *liteStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	r, err := s.liteDriverStmt.ExecContext(ctx, args)
	return r, s.c.wrap(err)
}

func (s *liteStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	r, err := s.liteDriverStmt.QueryContext(ctx, args)
	if err != nil {
		return nil, s.c.wrap(err)
	}
	return &liteRows{Rows: r, c: s.c}, nil
}

type liteTx struct {
	driver.Tx
	c *liteConnector
}

func (t *liteTx) Commit() error   { return t.c.wrap(t.Tx.Commit()) }
func (t *liteTx) Rollback() error { return t.c.wrap(t.Tx.Rollback()) }

// liteRows wraps the errors of Next: a statement with RETURNING writes
// while its first row is read. The column-type methods are passed on.
type liteRows struct {
	driver.Rows
	c *liteConnector
}

func (r *liteRows) Next(dest []driver.Value) error { return r.c.wrap(r.Rows.Next(dest)) }

func (r *liteRows) ColumnTypeDatabaseTypeName(i int) string {
	if x, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return x.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *liteRows) ColumnTypeLength(i int) (int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return x.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *liteRows) ColumnTypeNullable(i int) (bool, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return x.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *liteRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return x.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *liteRows) ColumnTypeScanType(i int) reflect.Type {
	if x, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return x.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}
