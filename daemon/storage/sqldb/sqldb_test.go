package sqldb_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// backends returns a URL of a fresh, empty database per call.
var backends = []struct {
	name    string
	dialect sqldb.Dialect
	url     func(tb testing.TB) string
}{
	{"sqlite", sqldb.SQLite, func(tb testing.TB) string { return "sqlite://" + tb.TempDir() + "/inboxd.db" }},
	{"postgres", sqldb.Postgres, testsvc.Postgres},
}

func open(t *testing.T, url string) *sqldb.DB {
	t.Helper()
	db, err := sqldb.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func version(t *testing.T, db *sqldb.DB) int {
	t.Helper()
	v, err := db.SchemaVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func latest(t *testing.T, db *sqldb.DB) int {
	t.Helper()
	v, err := db.LatestVersion()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func count(t *testing.T, db *sqldb.DB, query string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestOpenURLs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	t.Run("absolute path creates its directory 0700 and files 0600", func(t *testing.T) {
		path := filepath.Join(dir, "a", "b", "inboxd.db")
		db := open(t, "sqlite://"+path)
		if db.Dialect != sqldb.SQLite {
			t.Errorf("dialect %v", db.Dialect)
		}
		if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("parent dir: %v, %v; want mode 0700", fi.Mode(), err)
		}
		if err := db.Migrate(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{path, path + "-wal", path + "-shm"} {
			if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v, %v; want mode 0600", filepath.Base(f), fi.Mode(), err)
			}
		}
	})
	t.Run("relative path", func(t *testing.T) {
		t.Chdir(dir)
		open(t, "sqlite://./data/inboxd.db")
		if _, err := os.Stat(filepath.Join(dir, "data", "inboxd.db")); err != nil {
			t.Fatalf("relative database file: %v", err)
		}
	})
	for _, tc := range []struct{ url, wantErr string }{
		{"mysql://u:pw@localhost/db", "unsupported"},
		{"/var/lib/inboxd/inboxd.db", "unsupported"},
		{"sqlite://", "file path"},
		{"sqlite://./x.db?mode=ro", "file path"},
		{"sqlite://:memory:", "in-memory"},
		{"postgres://inboxd:hunter2@127.0.0.1:1/inboxd?connect_timeout=2", "ping postgres"},
	} {
		name := tc.url
		if u, err := url.Parse(tc.url); err == nil && u.User != nil {
			name = u.Redacted() // the name is printed: not the password
		}
		t.Run(name, func(t *testing.T) {
			db, err := sqldb.Open(ctx, tc.url)
			if err == nil {
				db.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error %q: want it to mention %q and never the password", err, tc.wantErr)
			}
		})
	}
}

func TestRebind(t *testing.T) {
	cases := []struct{ in, postgres string }{
		{"SELECT 1", "SELECT 1"},
		{"SELECT a FROM t WHERE id = ? AND b IN (?, ?)", "SELECT a FROM t WHERE id = $1 AND b IN ($2, $3)"},
		{"SELECT '?', \"col?\" FROM t WHERE x = ?", "SELECT '?', \"col?\" FROM t WHERE x = $1"},
		{"SELECT 'it''s ?' WHERE y = ?", "SELECT 'it''s ?' WHERE y = $1"},
	}
	lite, pg := &sqldb.DB{Dialect: sqldb.SQLite}, &sqldb.DB{Dialect: sqldb.Postgres}
	for _, tc := range cases {
		if got := lite.Rebind(tc.in); got != tc.in {
			t.Errorf("sqlite Rebind(%q) = %q, want it unchanged", tc.in, got)
		}
		if got := pg.Rebind(tc.in); got != tc.postgres {
			t.Errorf("postgres Rebind(%q) = %q, want %q", tc.in, got, tc.postgres)
		}
	}
}

func TestDialectsHaveTheSameMigrations(t *testing.T) {
	lite, err := (&sqldb.DB{Dialect: sqldb.SQLite}).LatestVersion()
	if err != nil {
		t.Fatal(err)
	}
	pg, err := (&sqldb.DB{Dialect: sqldb.Postgres}).LatestVersion()
	if err != nil {
		t.Fatal(err)
	}
	if lite != pg || lite < 1 {
		t.Fatalf("sqlite has %d migrations, postgres %d: every migration needs both", lite, pg)
	}
}

func TestMigrate(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Run("twice", func(t *testing.T) {
				db := open(t, b.url(t))
				if db.Dialect != b.dialect {
					t.Fatalf("dialect %v, want %v", db.Dialect, b.dialect)
				}
				if v := version(t, db); v != 0 {
					t.Fatalf("fresh database at version %d", v)
				}
				for range 2 {
					if err := db.Migrate(ctx); err != nil {
						t.Fatal(err)
					}
					if v, want := version(t, db), latest(t, db); v != want {
						t.Fatalf("version %d after Migrate, want %d", v, want)
					}
				}
				if n, want := count(t, db, "SELECT COUNT(*) FROM schema_migrations"), latest(t, db); n != want {
					t.Fatalf("%d schema_migrations rows, want %d", n, want)
				}
				for _, table := range []string{"users", "api_keys", "kv"} {
					count(t, db, "SELECT COUNT(*) FROM "+table)
				}
			})

			// Replicas starting together: goroutines sharing one pool, and
			// separate pools (as separate processes have) on one database.
			for _, handles := range []int{1, 3} {
				t.Run("concurrently on "+map[int]string{1: "one handle", 3: "three handles"}[handles], func(t *testing.T) {
					url := b.url(t)
					dbs := make([]*sqldb.DB, handles)
					for i := range dbs {
						dbs[i] = open(t, url)
					}
					var wg sync.WaitGroup
					errs := make(chan error, 6)
					for i := range 6 {
						db := dbs[i%handles]
						wg.Go(func() { errs <- db.Migrate(ctx) })
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						if err != nil {
							t.Fatal(err)
						}
					}
					if n, want := count(t, dbs[0], "SELECT COUNT(*) FROM schema_migrations"), latest(t, dbs[0]); n != want {
						t.Fatalf("%d schema_migrations rows, want %d", n, want)
					}
				})
			}

			t.Run("refuses a newer schema", func(t *testing.T) {
				url := b.url(t)
				db := open(t, url)
				if err := db.Migrate(ctx); err != nil {
					t.Fatal(err)
				}
				next := latest(t, db) + 1
				if _, err := db.ExecContext(ctx, db.Rebind("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"),
					next, time.Now().UTC()); err != nil {
					t.Fatal(err)
				}
				for _, h := range []*sqldb.DB{db, open(t, url)} {
					if err := h.Migrate(ctx); !errors.Is(err, sqldb.ErrSchemaTooNew) {
						t.Fatalf("Migrate on a version %d database: %v, want ErrSchemaTooNew", next, err)
					}
				}
			})
		})
	}
}

func TestConstraints(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			db := open(t, b.url(t))
			if err := db.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			if err := db.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			insertUser := func(id string, email, subject any) error {
				_, err := db.ExecContext(ctx, db.Rebind("INSERT INTO users (id, email, auth_subject, created_at) VALUES (?, ?, ?, ?)"),
					id, email, subject, time.Now().UTC())
				return err
			}
			if err := insertUser("u1", "a@example.com", nil); err != nil {
				t.Fatal(err)
			}
			if err := insertUser("u2", "b@example.com", nil); err != nil {
				t.Fatalf("a second NULL auth_subject: %v", err)
			}
			insertKey := func(userID string) error {
				_, err := db.ExecContext(ctx, db.Rebind("INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)"),
					"k1", userID, "h", "p", time.Now().UTC())
				return err
			}
			cases := []struct {
				name                string
				err                 error
				wantErr, wantUnique bool
			}{
				{"nil", nil, false, false},
				{"other error", errors.New("boom"), true, false},
				{"duplicate email", insertUser("u3", "a@example.com", nil), true, true},
				{"duplicate subject", errors.Join(insertUser("u5", "e@example.com", "sub"), insertUser("u6", "f@example.com", "sub")), true, true},
				{"duplicate primary key", insertUser("u1", "c@example.com", nil), true, true},
				{"not null", insertUser("u4", nil, nil), true, false},
				{"foreign key enforced", insertKey("no-such-user"), true, false},
			}
			for _, tc := range cases {
				if (tc.err != nil) != tc.wantErr {
					t.Errorf("%s: error %v, want error: %v", tc.name, tc.err, tc.wantErr)
				}
				if got := db.IsUniqueViolation(tc.err); got != tc.wantUnique {
					t.Errorf("%s: IsUniqueViolation(%v) = %v, want %v", tc.name, tc.err, got, tc.wantUnique)
				}
			}
			db.Close()
			if err := db.Ping(ctx); err == nil {
				t.Error("Ping on a closed database: no error")
			}
		})
	}
}

// TestSQLiteSettings checks the connection pragmas, and that write
// transactions serialise: read-modify-write from many goroutines neither
// fails with SQLITE_BUSY nor loses an update.
func TestSQLiteSettings(t *testing.T) {
	ctx := context.Background()
	db := open(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	for _, tc := range []struct{ pragma, want string }{
		{"journal_mode", "wal"}, {"foreign_keys", "1"}, {"busy_timeout", "10000"}, {"synchronous", "1"},
	} {
		var got string
		if err := db.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil || got != tc.want {
			t.Errorf("PRAGMA %s = %q, %v; want %q", tc.pragma, got, err, tc.want)
		}
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE counter (n INTEGER NOT NULL); INSERT INTO counter VALUES (0)"); err != nil {
		t.Fatal(err)
	}
	const workers, each = 10, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Go(func() {
			for range each {
				errs <- func() error {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						return err
					}
					defer tx.Rollback()
					var n int
					if err := tx.QueryRowContext(ctx, "SELECT n FROM counter").Scan(&n); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, "UPDATE counter SET n = ?", n+1); err != nil {
						return err
					}
					return tx.Commit()
				}()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, db, "SELECT n FROM counter"); n != workers*each {
		t.Fatalf("counter = %d, want %d", n, workers*each)
	}
}
