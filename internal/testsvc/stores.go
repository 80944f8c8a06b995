package testsvc

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/inboxd/inboxd/daemon/secretbox"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
)

// SQLite returns a migrated SQLite database in a temp dir, closed when the
// test ends: the embedded default, for tests of stores and handlers.
func SQLite(t testing.TB) *sqldb.DB {
	t.Helper()
	return openMigrated(t, "sqlite://"+filepath.Join(t.TempDir(), "inboxd.db"))
}

// PostgresDB returns a migrated fresh PostgreSQL database (see Postgres).
func PostgresDB(t testing.TB) *sqldb.DB {
	t.Helper()
	return openMigrated(t, Postgres(t))
}

func openMigrated(t testing.TB, url string) *sqldb.DB {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, url)
	if err != nil {
		t.Fatalf("testsvc: open %s: %v", url, err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("testsvc: migrate: %v", err)
	}
	return db
}

// SecretBox returns a Box under a fresh key file (mode 0600) in a temp dir.
func SecretBox(t testing.TB) *secretbox.Box {
	t.Helper()
	key, err := secretbox.LoadOrCreateKey(filepath.Join(t.TempDir(), "secret.key"))
	if err != nil {
		t.Fatalf("testsvc: secret key: %v", err)
	}
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatalf("testsvc: secret box: %v", err)
	}
	return box
}
