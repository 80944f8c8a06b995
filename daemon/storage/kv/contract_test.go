package kv_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// openSQL returns a migrated database on a fresh SQLite file or PostgreSQL database.
func openSQL(tb testing.TB, url string) *sqldb.DB {
	tb.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	return db
}

func sqliteURL(tb testing.TB) string { return "sqlite://" + tb.TempDir() + "/kv.db" }

// backends is every kv.Store implementation; each call returns a fresh, empty store.
var backends = []struct {
	name string
	open func(tb testing.TB) kv.Store
}{
	{"embedded-sqlite", func(tb testing.TB) kv.Store { return kv.NewSQL(openSQL(tb, sqliteURL(tb))) }},
	{"embedded-postgres", func(tb testing.TB) kv.Store { return kv.NewSQL(openSQL(tb, testsvc.Postgres(tb))) }},
	{"redis", func(tb testing.TB) kv.Store {
		s, err := kv.NewRedis(context.Background(), testsvc.Redis(tb))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Close() })
		return s
	}},
}

func TestContract(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			runContract(t, func(t *testing.T) kv.Store { return b.open(t) })
		})
	}
}

// eventually polls cond every 10ms until it holds, failing after 3s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after 3s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustGet(t *testing.T, s kv.Store, key, want string) {
	t.Helper()
	got, err := s.Get(context.Background(), key)
	if err != nil || got != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", key, got, err, want)
	}
}

func mustMissing(t *testing.T, s kv.Store, key string) {
	t.Helper()
	if got, err := s.Get(context.Background(), key); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, got, err)
	}
}

func gone(s kv.Store, key string) bool {
	_, err := s.Get(context.Background(), key)
	return errors.Is(err, kv.ErrNotFound)
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// runContract is the one behaviour every kv.Store backend must show. newStore
// returns a fresh, empty store for each subtest.
func runContract(t *testing.T, newStore func(t *testing.T) kv.Store) {
	ctx := context.Background()
	const short = 100 * time.Millisecond // TTL of keys meant to expire during a test

	t.Run("GetMissing", func(t *testing.T) {
		s := newStore(t)
		mustMissing(t, s, "user:00000000-0000-0000-0000-000000000001:absent")
		check(t, s.Ping(ctx))
	})

	t.Run("CompareAndSwapDelete", func(t *testing.T) {
		s := newStore(t)
		const lease = "lease:poll:00000000-0000-0000-0000-000000000001"
		ok, err := s.CompareAndSwap(ctx, lease, "a", "b", time.Minute)
		check(t, err)
		if ok {
			t.Fatal("CompareAndSwap on a missing key succeeded")
		}
		won, err := s.SetNX(ctx, lease, "replica-1", short)
		check(t, err)
		if !won {
			t.Fatal("SetNX on a missing key failed")
		}
		if ok, _ := s.CompareAndSwap(ctx, lease, "replica-2", "replica-2", time.Minute); ok {
			t.Fatal("CompareAndSwap with the wrong old value succeeded")
		}
		if ok, _ := s.CompareAndDelete(ctx, lease, "replica-2"); ok {
			t.Fatal("CompareAndDelete with the wrong old value succeeded")
		}
		// Renewal extends the expiry beyond the first ttl.
		if ok, err := s.CompareAndSwap(ctx, lease, "replica-1", "replica-1", time.Minute); err != nil || !ok {
			t.Fatalf("renewal: %v %v", ok, err)
		}
		time.Sleep(2 * short)
		mustGet(t, s, lease, "replica-1")
		if ok, err := s.CompareAndDelete(ctx, lease, "replica-1"); err != nil || !ok {
			t.Fatalf("release: %v %v", ok, err)
		}
		mustMissing(t, s, lease)
		// An expired value cannot be swapped or deleted by its old holder.
		check(t, s.Set(ctx, lease, "replica-1", short))
		time.Sleep(2 * short)
		if ok, _ := s.CompareAndSwap(ctx, lease, "replica-1", "replica-1", time.Minute); ok {
			t.Fatal("CompareAndSwap renewed an expired lease")
		}
		if ok, _ := s.CompareAndDelete(ctx, lease, "replica-1"); ok {
			t.Fatal("CompareAndDelete deleted an expired value")
		}
	})

	t.Run("SetGetOverwrite", func(t *testing.T) {
		s := newStore(t)
		for _, v := range []string{"one", "two", "", "ünïcödé 😀", strings.Repeat("x", 64<<10)} {
			check(t, s.Set(ctx, "k", v, 0))
			mustGet(t, s, "k", v)
		}
	})

	t.Run("OverwriteClearsTTL", func(t *testing.T) {
		s := newStore(t)
		check(t, s.Set(ctx, "k", "v1", short))
		check(t, s.Set(ctx, "k", "v2", 0))
		check(t, s.Set(ctx, "many", "v1", short))
		check(t, s.SetMany(ctx, map[string]string{"many": "v2"}))
		time.Sleep(2 * short)
		mustGet(t, s, "k", "v2")
		mustGet(t, s, "many", "v2")
	})

	t.Run("SetWithTTLExpires", func(t *testing.T) {
		s := newStore(t)
		check(t, s.Set(ctx, "k", "forever", 0))
		check(t, s.Set(ctx, "k", "soon", short)) // a TTL on a key that had none
		eventually(t, "k expired", func() bool { return gone(s, "k") })
		if err := s.Set(ctx, "k", "v", -time.Second); err == nil {
			t.Error("Set with a negative ttl: no error")
		}
	})

	t.Run("MGet", func(t *testing.T) {
		s := newStore(t)
		check(t, s.Set(ctx, "a", "1", 0))
		check(t, s.Set(ctx, "b", "2", time.Hour))
		got, err := s.MGet(ctx, "a", "missing", "b", "also-missing")
		check(t, err)
		if want := map[string]string{"a": "1", "b": "2"}; !maps.Equal(got, want) {
			t.Errorf("MGet = %v, want %v", got, want)
		}
		got, err = s.MGet(ctx)
		if err != nil || got == nil || len(got) != 0 {
			t.Errorf("MGet() = %v, %v; want an empty map", got, err)
		}
		// More keys than one batch.
		pairs := map[string]string{}
		var keys []string
		for i := range 1200 {
			k := fmt.Sprintf("big:%04d", i)
			keys = append(keys, k)
			if i%3 == 0 {
				pairs[k] = strconv.Itoa(i)
			}
		}
		check(t, s.SetMany(ctx, pairs))
		got, err = s.MGet(ctx, keys...)
		check(t, err)
		if !maps.Equal(got, pairs) {
			t.Errorf("MGet of 1200 keys: got %d values, want %d", len(got), len(pairs))
		}
	})

	t.Run("SetMany", func(t *testing.T) {
		s := newStore(t)
		check(t, s.Set(ctx, "user:u:imap_server", "old", 0))
		pairs := map[string]string{"user:u:imap_server": "imap.example.com", "user:u:imap_port": "993", "user:u:timezone": "Europe/Amsterdam"}
		check(t, s.SetMany(ctx, pairs))
		got, err := s.Scan(ctx, "user:u:")
		check(t, err)
		if !maps.Equal(got, pairs) {
			t.Errorf("after SetMany: %v, want %v", got, pairs)
		}
		check(t, s.SetMany(ctx, nil))
	})

	t.Run("Delete", func(t *testing.T) {
		s := newStore(t)
		check(t, s.SetMany(ctx, map[string]string{"a": "1", "b": "2", "c": "3"}))
		check(t, s.Delete(ctx, "a", "missing", "b"))
		mustMissing(t, s, "a")
		mustMissing(t, s, "b")
		mustGet(t, s, "c", "3")
		check(t, s.Delete(ctx))
		check(t, s.Delete(ctx, "missing"))
		mustGet(t, s, "c", "3")
	})

	t.Run("SetNX", func(t *testing.T) {
		cases := []struct {
			name      string
			setup     func(t *testing.T, s kv.Store)
			wantSet   bool
			wantValue string
		}{
			{"absent", func(*testing.T, kv.Store) {}, true, "new"},
			{"present", func(t *testing.T, s kv.Store) { check(t, s.Set(ctx, "lease", "old", 0)) }, false, "old"},
			{"present with ttl", func(t *testing.T, s kv.Store) { check(t, s.Set(ctx, "lease", "old", time.Hour)) }, false, "old"},
			{"expired", func(t *testing.T, s kv.Store) {
				check(t, s.Set(ctx, "lease", "old", 50*time.Millisecond))
				time.Sleep(120 * time.Millisecond) // expired, but not read since
			}, true, "new"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := newStore(t)
				tc.setup(t, s)
				ok, err := s.SetNX(ctx, "lease", "new", time.Minute)
				check(t, err)
				if ok != tc.wantSet {
					t.Errorf("SetNX = %v, want %v", ok, tc.wantSet)
				}
				mustGet(t, s, "lease", tc.wantValue)
			})
		}
		t.Run("ttl applies", func(t *testing.T) {
			s := newStore(t)
			ok, err := s.SetNX(ctx, "lease", "mine", short)
			if err != nil || !ok {
				t.Fatalf("SetNX = %v, %v", ok, err)
			}
			eventually(t, "lease expired", func() bool { return gone(s, "lease") })
			if ok, err := s.SetNX(ctx, "lease", "next", time.Minute); err != nil || !ok {
				t.Fatalf("SetNX after expiry = %v, %v", ok, err)
			}
			if _, err := s.SetNX(ctx, "other", "v", 0); err == nil {
				t.Error("SetNX with ttl 0: no error")
			}
		})
	})

	t.Run("Incr", func(t *testing.T) {
		s := newStore(t)
		steps := []struct {
			delta, want int64
		}{{1, 1}, {41, 42}, {-50, -8}, {0, -8}}
		for _, st := range steps {
			n, err := s.Incr(ctx, "counter", st.delta)
			if err != nil || n != st.want {
				t.Fatalf("Incr(%d) = %d, %v; want %d", st.delta, n, err, st.want)
			}
		}
		mustGet(t, s, "counter", "-8")

		check(t, s.Set(ctx, "text", "abc", 0))
		if _, err := s.Incr(ctx, "text", 1); err == nil {
			t.Error("Incr of a non-integer: no error")
		}
		mustGet(t, s, "text", "abc")

		check(t, s.Set(ctx, "max", strconv.FormatInt(1<<63-1, 10), 0))
		if _, err := s.Incr(ctx, "max", 1); err == nil {
			t.Error("Incr past MaxInt64: no error")
		}

		// An expired counter restarts from 0 and loses its expiry; a live one keeps it.
		check(t, s.Set(ctx, "old", "5", 50*time.Millisecond))
		time.Sleep(120 * time.Millisecond)
		if n, err := s.Incr(ctx, "old", 1); err != nil || n != 1 {
			t.Errorf("Incr of an expired counter = %d, %v; want 1", n, err)
		}
		check(t, s.Set(ctx, "ttl", "5", short))
		if n, err := s.Incr(ctx, "ttl", 1); err != nil || n != 6 {
			t.Errorf("Incr = %d, %v; want 6", n, err)
		}
		eventually(t, "incremented key keeps its ttl", func() bool { return gone(s, "ttl") })
		mustGet(t, s, "old", "1")
	})

	t.Run("ConcurrentIncr", func(t *testing.T) {
		s := newStore(t)
		const workers, each = 20, 10
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for range workers {
			wg.Go(func() {
				for range each {
					if _, err := s.Incr(ctx, "hits", 1); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		mustGet(t, s, "hits", strconv.Itoa(workers*each))
	})

	t.Run("ConcurrentSetNX", func(t *testing.T) {
		s := newStore(t)
		const workers = 20
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []string
		)
		for i := range workers {
			wg.Go(func() {
				me := "replica-" + strconv.Itoa(i)
				ok, err := s.SetNX(ctx, "lease:poll:u", me, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					mu.Lock()
					winners = append(winners, me)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("%d winners (%v), want exactly 1", len(winners), winners)
		}
		mustGet(t, s, "lease:poll:u", winners[0])
	})

	t.Run("ScanPrefix", func(t *testing.T) {
		s := newStore(t)
		fixture := map[string]string{}
		for _, k := range []string{
			"user:1:a", "user:1:b", "user:10:a", "user:2:a", "User:1:c", "user:1",
			// LIKE and glob wildcards must match themselves only.
			"p%_*:1", "p%_*:2", "pX_*:3", "p%Y*:4", "p%_Z:5", "p%_*", "p%_+:6", "P%_*:7",
			`q[a]\?:1`, `qa\?:2`, `q[a]\x:3`, `q[a]\?`,
			// Range bounds around multi-byte and maximal code points.
			"ü:1", "ü;", "ý:1", "ü\U0010FFFF", "\U0010FFFF\U0010FFFF", "\U0010FFFF", "a\x7f", "a\u0080",
		} {
			fixture[k] = "v:" + k
		}
		check(t, s.SetMany(ctx, fixture))
		for _, prefix := range []string{
			"user:1:", "user:1", "User:", "user:", "p%_*:", "p%_*", "p%", "p", `q[a]\?`, `q[a]\`, "q",
			"ü", "ü:", "\U0010FFFF", "a\x7f", "a", "nomatch", "",
		} {
			t.Run(fmt.Sprintf("%q", prefix), func(t *testing.T) {
				want := map[string]string{}
				for k, v := range fixture {
					if strings.HasPrefix(k, prefix) {
						want[k] = v
					}
				}
				got, err := s.Scan(ctx, prefix)
				check(t, err)
				if !maps.Equal(got, want) {
					t.Errorf("Scan(%q) = %q, want %q", prefix, keysOf(got), keysOf(want))
				}
			})
		}
	})

	t.Run("ExpiredInvisible", func(t *testing.T) {
		s := newStore(t)
		start := time.Now()
		for _, k := range []string{"exp:get", "exp:mget", "scanexp:a"} {
			check(t, s.Set(ctx, k, "v", 150*time.Millisecond))
		}
		check(t, s.SetMany(ctx, map[string]string{"exp:live": "v", "scanexp:live": "v"}))
		if time.Since(start) < 100*time.Millisecond { // not on a badly stalled machine
			got, err := s.MGet(ctx, "exp:get", "exp:mget", "scanexp:a")
			check(t, err)
			if len(got) != 3 {
				t.Fatalf("before expiry MGet = %v, want 3 keys", got)
			}
		}
		// Each read is checked on its own key, so no read cleans up for another.
		eventually(t, "Get hides the expired key", func() bool { return gone(s, "exp:get") })
		eventually(t, "MGet hides the expired key", func() bool {
			got, err := s.MGet(ctx, "exp:mget", "exp:live")
			check(t, err)
			return maps.Equal(got, map[string]string{"exp:live": "v"})
		})
		eventually(t, "Scan hides the expired key", func() bool {
			got, err := s.Scan(ctx, "scanexp:")
			check(t, err)
			return maps.Equal(got, map[string]string{"scanexp:live": "v"})
		})
	})
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// TestSQLExpiryCleanup checks what only the embedded backend does: expired
// rows stay until a read meets them (lazy removal) or Sweep runs.
func TestSQLExpiryCleanup(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		url  func(testing.TB) string
	}{{"sqlite", sqliteURL}, {"postgres", testsvc.Postgres}} {
		t.Run(tc.name, func(t *testing.T) {
			db := openSQL(t, tc.url(t))
			s := kv.NewSQL(db)
			rows := func() int {
				var n int
				check(t, db.QueryRowContext(ctx, "SELECT COUNT(*) FROM kv").Scan(&n))
				return n
			}
			check(t, s.Set(ctx, "lazy", "v", 50*time.Millisecond))
			for i := range 3 {
				check(t, s.Set(ctx, "sweep:"+strconv.Itoa(i), "v", 50*time.Millisecond))
			}
			check(t, s.Set(ctx, "keep", "v", 0))
			time.Sleep(120 * time.Millisecond)
			if n := rows(); n != 5 {
				t.Fatalf("%d rows before any read, want 5 (expired rows are removed lazily)", n)
			}
			mustMissing(t, s, "lazy")
			if n := rows(); n != 4 {
				t.Fatalf("%d rows after Get of an expired key, want 4", n)
			}
			n, err := s.Sweep(ctx)
			if err != nil || n != 3 {
				t.Fatalf("Sweep = %d, %v; want 3", n, err)
			}
			if n := rows(); n != 1 {
				t.Fatalf("%d rows after Sweep, want 1", n)
			}
			mustGet(t, s, "keep", "v")
		})
	}
}

// BenchmarkGetMGet measures a single Get and an MGet of 10 keys (a user's
// settings) per backend.
func BenchmarkGetMGet(b *testing.B) {
	ctx := context.Background()
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			pairs := map[string]string{}
			var keys []string
			for i := range 100 {
				k := fmt.Sprintf("user:12345678-1234-5678-9012-123456789012:setting_%02d", i)
				pairs[k], keys = "value "+strconv.Itoa(i), append(keys, k)
			}
			if err := s.SetMany(ctx, pairs); err != nil {
				b.Fatal(err)
			}
			b.Run("Get", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					if _, err := s.Get(ctx, keys[i%len(keys)]); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("MGet10", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					j := (i * 10) % len(keys)
					if m, err := s.MGet(ctx, keys[j:j+10]...); err != nil || len(m) != 10 {
						b.Fatal(len(m), err)
					}
				}
			})
		})
	}
}

// BenchmarkLeaseRenew measures the poller's per-tenant lease renewal (a
// compare-and-swap with a TTL) and a trigger-state write per backend.
func BenchmarkLeaseRenew(b *testing.B) {
	ctx := context.Background()
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			keys := make([]string, 100)
			for i := range keys {
				keys[i] = fmt.Sprintf("lease:poll:12345678-1234-5678-9012-%012d", i)
				if ok, err := s.SetNX(ctx, keys[i], "replica-1", time.Minute); err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
			b.Run("CompareAndSwap", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					if ok, err := s.CompareAndSwap(ctx, keys[i%len(keys)], "replica-1", "replica-1", time.Minute); err != nil || !ok {
						b.Fatal(ok, err)
					}
				}
			})
			b.Run("Set", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					if err := s.Set(ctx, "user:12345678-1234-5678-9012-123456789012:last_email_uid", strconv.Itoa(i), 0); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
