package sqldb_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
)

// TestSQLiteFullErrors: a write SQLite refuses with SQLITE_FULL comes back,
// whichever way it was sent (a plain statement, a prepared one, a RETURNING
// row, a transaction), as an error that says the disk is full and names
// the file, wraps ErrDiskFull and still unwraps to the driver's error; the
// database stays intact and takes writes again once there is room. SQLite
// answers SQLITE_FULL when the disk is full or when max_page_count is
// reached: the latter needs no root (the tmpfs test is TestDiskFullSQLite,
// e2e_diskfull_test.go, against the daemon).
func TestSQLiteFullErrors(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "inboxd.db")
	db := open(t, "sqlite://"+path)
	if _, err := db.ExecContext(ctx, "CREATE TABLE blobs (id INTEGER PRIMARY KEY, name TEXT UNIQUE, v BLOB)"); err != nil {
		t.Fatal(err)
	}
	// One connection, so that the page limit (per connection) applies.
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustExec := func(q string, args ...any) {
		t.Helper()
		if _, err := conn.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	mustExec("INSERT INTO blobs (name, v) VALUES ('before', zeroblob(1000))")
	var pages int
	if err := conn.QueryRowContext(ctx, "PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	mustExec(fmt.Sprintf("PRAGMA max_page_count = %d", pages+2))

	big := make([]byte, 1<<20)
	cases := []struct {
		name  string
		write func() error
	}{
		{"statement", func() error {
			_, err := conn.ExecContext(ctx, "INSERT INTO blobs (name, v) VALUES ('a', zeroblob(1048576))")
			return err
		}},
		{"prepared statement", func() error {
			st, err := conn.PrepareContext(ctx, "INSERT INTO blobs (name, v) VALUES (?, ?)")
			if err != nil {
				return err
			}
			defer st.Close()
			_, err = st.ExecContext(ctx, "b", big)
			return err
		}},
		{"RETURNING row", func() error {
			var id int64
			return conn.QueryRowContext(ctx, "INSERT INTO blobs (name, v) VALUES ('c', ?) RETURNING id", big).Scan(&id)
		}},
		{"transaction", func() error {
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "INSERT INTO blobs (name, v) VALUES ('d', ?)", big); err != nil {
				return err
			}
			return tx.Commit()
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.write()
			if !errors.Is(err, sqldb.ErrDiskFull) || !sqldb.IsDiskFull(err) {
				t.Fatalf("error %v (%T), want ErrDiskFull", err, err)
			}
			want := "sqldb: disk full: cannot write the SQLite database " + path + " (database or disk is full"
			if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "free space on its volume") {
				t.Errorf("error %q\nwant it to start %q", err, want)
			}
		})
	}

	// Other errors pass unchanged: a unique violation is still one, a
	// syntax error says what it said.
	_, err = conn.ExecContext(ctx, "INSERT INTO blobs (name) VALUES ('before')")
	if !sqldb.IsUniqueViolation(err) || sqldb.IsDiskFull(err) {
		t.Errorf("unique violation through the wrapper: %v", err)
	}
	_, err = conn.ExecContext(ctx, "INSERT INTO nowhere VALUES (1)")
	if err == nil || sqldb.IsDiskFull(err) || strings.Contains(err.Error(), "sqldb:") {
		t.Errorf("other error: %v", err)
	}

	var check string
	if err := conn.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check: %q %v", check, err)
	}
	mustExec("PRAGMA max_page_count = 1073741823") // room again
	for _, tc := range cases {
		if err := tc.write(); err != nil {
			t.Errorf("%s with room: %v", tc.name, err)
		}
	}
	var names string
	if err := db.QueryRowContext(ctx, "SELECT group_concat(name, ',') FROM (SELECT name FROM blobs ORDER BY id)").Scan(&names); err != nil || names != "before,a,b,c,d" {
		t.Errorf("rows %q %v", names, err)
	}
}

func TestIsDiskFull(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"other", errors.New("boom"), false},
		{"no rows", sql.ErrNoRows, false},
		{"wrapped ErrDiskFull", fmt.Errorf("kv: set: %w", sqldb.ErrDiskFull), true},
		{"postgres disk_full", fmt.Errorf("logs: insert: %w", &pgconn.PgError{Code: "53100", Message: "could not extend file"}), true},
		{"postgres unique_violation", &pgconn.PgError{Code: "23505"}, false},
	} {
		if got := sqldb.IsDiskFull(tc.err); got != tc.want {
			t.Errorf("%s: IsDiskFull = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestCheckDiskSpace: a volume with room is fine on either dialect
// (PostgreSQL reports its own disk); the full volume is in
// TestDiskFullSQLite.
func TestCheckDiskSpace(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			if err := open(t, b.url(t)).CheckDiskSpace(); err != nil {
				t.Errorf("CheckDiskSpace: %v", err)
			}
		})
	}
}
