package users_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

var backends = []struct {
	name string
	url  func(tb testing.TB) string
}{
	{"sqlite", func(tb testing.TB) string { return "sqlite://" + tb.TempDir() + "/inboxd.db" }},
	{"postgres", testsvc.Postgres},
}

// openDB opens and migrates the database at url; each call is a separate
// pool, as a separate process would have.
func openDB(t *testing.T, url string) *sqldb.DB {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return db
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func sameUser(t *testing.T, got, want users.User) {
	t.Helper()
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("CreatedAt %v, want %v", got.CreatedAt, want.CreatedAt)
	}
	got.CreatedAt, want.CreatedAt = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("user %+v, want %+v", got, want)
	}
}

func countRows(t *testing.T, db *sqldb.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), db.Rebind(query), args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// concurrently runs f from n goroutines and returns their results.
func concurrently(n int, f func(i int) (users.User, error)) ([]users.User, []error) {
	us, errs := make([]users.User, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { us[i], errs[i] = f(i) })
	}
	wg.Wait()
	return us, errs
}

func TestStore(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { runStore(t, b.url) })
	}
}

func runStore(t *testing.T, newURL func(testing.TB) string) {
	ctx := context.Background()
	fresh := func(t *testing.T) (*users.Store, *sqldb.DB) {
		db := openDB(t, newURL(t))
		return users.NewStore(db), db
	}

	t.Run("CreateAndFind", func(t *testing.T) {
		s, _ := fresh(t)
		before := time.Now()
		u := must[users.User](t)(s.Create(ctx, users.NewUser{Email: "  Alice@Example.COM ", DisplayName: " Alice ", Admin: true}))
		if u.ID.IsZero() || u.Email != "alice@example.com" || u.DisplayName != "Alice" || !u.Admin || u.Disabled || u.AuthSubject != "" {
			t.Fatalf("created %+v", u)
		}
		if u.CreatedAt.Before(before.Add(-time.Second)) || u.CreatedAt.After(time.Now().Add(time.Second)) {
			t.Errorf("CreatedAt %v, want about now", u.CreatedAt)
		}
		finders := []struct {
			name string
			find func() (users.User, error)
		}{
			{"Get", func() (users.User, error) { return s.Get(ctx, u.ID) }},
			{"ByEmail", func() (users.User, error) { return s.ByEmail(ctx, "ALICE@example.com ") }},
			{"Lookup id", func() (users.User, error) { return s.Lookup(ctx, u.ID.String()) }},
			{"Lookup upper-case id", func() (users.User, error) { return s.Lookup(ctx, strings.ToUpper(u.ID.String())) }},
			{"Lookup email", func() (users.User, error) { return s.Lookup(ctx, "alice@EXAMPLE.com") }},
		}
		for _, f := range finders {
			got, err := f.find()
			if err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
			sameUser(t, got, u)
		}
		misses := []struct {
			name string
			find func() (users.User, error)
		}{
			{"Get", func() (users.User, error) { return s.Get(ctx, userid.New()) }},
			{"ByEmail", func() (users.User, error) { return s.ByEmail(ctx, "bob@example.com") }},
			{"ByEmail empty", func() (users.User, error) { return s.ByEmail(ctx, "") }},
			{"BySubject", func() (users.User, error) { return s.BySubject(ctx, "auth0|nobody") }},
			{"BySubject empty", func() (users.User, error) { return s.BySubject(ctx, "") }},
			{"Lookup id", func() (users.User, error) { return s.Lookup(ctx, userid.New().String()) }},
			{"Lookup email", func() (users.User, error) { return s.Lookup(ctx, "bob@example.com") }},
		}
		for _, m := range misses {
			if _, err := m.find(); !errors.Is(err, users.ErrNotFound) {
				t.Errorf("%s: %v, want ErrNotFound", m.name, err)
			}
		}
		withSub := must[users.User](t)(s.Create(ctx, users.NewUser{Email: "carol@example.com", AuthSubject: "auth0|carol"}))
		sameUser(t, must[users.User](t)(s.BySubject(ctx, "auth0|carol")), withSub)
	})

	t.Run("CreateRefuses", func(t *testing.T) {
		s, _ := fresh(t)
		must[users.User](t)(s.Create(ctx, users.NewUser{Email: "alice@example.com", AuthSubject: "sub-a"}))
		must[users.User](t)(s.Create(ctx, users.NewUser{Email: "nosub1@example.com"}))
		must[users.User](t)(s.Create(ctx, users.NewUser{Email: "nosub2@example.com"})) // many users without subject
		cases := []struct {
			email, subject string
			want           error
		}{
			{"", "", users.ErrInvalidEmail},
			{"alice", "", users.ErrInvalidEmail},
			{"@example.com", "", users.ErrInvalidEmail},
			{"alice@", "", users.ErrInvalidEmail},
			{"al ice@example.com", "", users.ErrInvalidEmail},
			{"ALICE@example.com", "", users.ErrExists},
			{"other@example.com", "sub-a", users.ErrExists},
		}
		for _, tc := range cases {
			if _, err := s.Create(ctx, users.NewUser{Email: tc.email, AuthSubject: tc.subject}); !errors.Is(err, tc.want) {
				t.Errorf("Create(%q, %q) = %v, want %v", tc.email, tc.subject, err, tc.want)
			}
		}
	})

	t.Run("ListAndFlags", func(t *testing.T) {
		s, _ := fresh(t)
		var want []userid.ID
		for _, e := range []string{"c@example.com", "a@example.com", "b@example.com"} {
			want = append(want, must[users.User](t)(s.Create(ctx, users.NewUser{Email: e})).ID)
			time.Sleep(2 * time.Millisecond) // distinct created_at
		}
		list := must[[]users.User](t)(s.List(ctx))
		if len(list) != len(want) {
			t.Fatalf("List has %d users, want %d", len(list), len(want))
		}
		for i, u := range list {
			if u.ID != want[i] {
				t.Errorf("List[%d] = %s, want %s (creation order)", i, u.Email, want[i])
			}
		}
		id := want[1]
		steps := []struct {
			name          string
			set           func() error
			admin, disabl bool
		}{
			{"disable", func() error { return s.SetDisabled(ctx, id, true) }, false, true},
			{"make admin", func() error { return s.SetAdmin(ctx, id, true) }, true, true},
			{"enable", func() error { return s.SetDisabled(ctx, id, false) }, true, false},
			{"revoke admin", func() error { return s.SetAdmin(ctx, id, false) }, false, false},
		}
		for _, st := range steps {
			if err := st.set(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			u := must[users.User](t)(s.Get(ctx, id))
			if u.Admin != st.admin || u.Disabled != st.disabl {
				t.Fatalf("after %s: admin=%v disabled=%v", st.name, u.Admin, u.Disabled)
			}
		}
		if other := must[users.User](t)(s.Get(ctx, want[0])); other.Admin || other.Disabled {
			t.Errorf("flags leaked to another user: %+v", other)
		}
		if err := s.SetDisabled(ctx, userid.New(), true); !errors.Is(err, users.ErrNotFound) {
			t.Errorf("SetDisabled of an unknown user: %v", err)
		}
		if err := s.SetAdmin(ctx, userid.New(), true); !errors.Is(err, users.ErrNotFound) {
			t.Errorf("SetAdmin of an unknown user: %v", err)
		}
	})

	t.Run("ZeroID", func(t *testing.T) {
		s, _ := fresh(t)
		var zero userid.ID
		calls := map[string]func() error{
			"Get":         func() error { _, err := s.Get(ctx, zero); return err },
			"SetDisabled": func() error { return s.SetDisabled(ctx, zero, true) },
			"SetAdmin":    func() error { return s.SetAdmin(ctx, zero, true) },
			"CreateAPIKey": func() error {
				_, err := s.CreateAPIKey(ctx, zero, "k")
				return err
			},
			"ListAPIKeys": func() error { _, err := s.ListAPIKeys(ctx, zero); return err },
		}
		for name, call := range calls {
			if err := call(); !errors.Is(err, userid.ErrZero) {
				t.Errorf("%s(zero id) = %v, want userid.ErrZero", name, err)
			}
		}
	})

	t.Run("EnsureDefault", func(t *testing.T) {
		url := newURL(t)
		// Two pools on one database stand for two processes starting at once.
		stores := []*users.Store{users.NewStore(openDB(t, url)), users.NewStore(openDB(t, url))}
		us, errs := concurrently(20, func(i int) (users.User, error) { return stores[i%2].EnsureDefault(ctx) })
		for i, err := range errs {
			if err != nil {
				t.Fatalf("caller %d: %v", i, err)
			}
			if us[i].ID != userid.Default() || us[i].Email != users.DefaultEmail {
				t.Fatalf("caller %d got %+v", i, us[i])
			}
			sameUser(t, us[i], us[0])
		}
		list := must[[]users.User](t)(stores[0].List(ctx))
		if len(list) != 1 {
			t.Fatalf("%d users after EnsureDefault, want 1", len(list))
		}
		sameUser(t, must[users.User](t)(stores[1].EnsureDefault(ctx)), us[0])
	})

	t.Run("EnsureDefaultEmailTaken", func(t *testing.T) {
		s, _ := fresh(t)
		must[users.User](t)(s.Create(ctx, users.NewUser{Email: users.DefaultEmail}))
		if _, err := s.EnsureDefault(ctx); !errors.Is(err, users.ErrExists) {
			t.Fatalf("EnsureDefault with its email taken: %v, want ErrExists", err)
		}
	})

	t.Run("FindOrCreateBySubject", func(t *testing.T) {
		s, db := fresh(t)
		local := must[users.User](t)(s.Create(ctx, users.NewUser{Email: "taken@example.com"}))
		first := must[users.User](t)(s.FindOrCreateBySubject(ctx, "auth0|dana", "Dana@Example.com"))
		if first.Email != "dana@example.com" || first.AuthSubject != "auth0|dana" {
			t.Fatalf("created %+v", first)
		}
		// Later logins find the user by subject, whatever email the token carries.
		sameUser(t, must[users.User](t)(s.FindOrCreateBySubject(ctx, "auth0|dana", "new@example.com")), first)

		// Another account's email is not taken over: placeholder email instead.
		erin := must[users.User](t)(s.FindOrCreateBySubject(ctx, "auth0|erin", "TAKEN@example.com"))
		if erin.ID == local.ID || !strings.HasSuffix(erin.Email, "@"+users.OIDCPlaceholderDomain) {
			t.Fatalf("subject with a taken email got %+v", erin)
		}
		if got := must[users.User](t)(s.Get(ctx, local.ID)); got.AuthSubject != "" {
			t.Fatalf("local account was linked to a subject: %+v", got)
		}
		// A token without an email gets a placeholder unique to its subject.
		f1 := must[users.User](t)(s.FindOrCreateBySubject(ctx, "auth0|frank", ""))
		f2 := must[users.User](t)(s.FindOrCreateBySubject(ctx, "auth0|Frank", "not-an-email"))
		if f1.ID == f2.ID || f1.Email == f2.Email || !strings.HasSuffix(f2.Email, "@"+users.OIDCPlaceholderDomain) {
			t.Fatalf("placeholder users %+v and %+v", f1, f2)
		}
		if _, err := s.FindOrCreateBySubject(ctx, " ", "x@example.com"); err == nil {
			t.Error("empty subject: no error")
		}

		// Concurrent first logins of one subject: one user, everyone gets it.
		us, errs := concurrently(20, func(int) (users.User, error) {
			return s.FindOrCreateBySubject(ctx, "auth0|gina", "gina@example.com")
		})
		for i, err := range errs {
			if err != nil {
				t.Fatalf("caller %d: %v", i, err)
			}
			sameUser(t, us[i], us[0])
		}
		if n := countRows(t, db, "SELECT COUNT(*) FROM users WHERE auth_subject = ?", "auth0|gina"); n != 1 {
			t.Fatalf("%d rows for the subject, want 1", n)
		}
	})

	t.Run("APIKeys", func(t *testing.T) {
		s, db := fresh(t)
		alice := must[users.User](t)(s.Create(ctx, users.NewUser{Email: "alice@example.com"}))
		bob := must[users.User](t)(s.Create(ctx, users.NewUser{Email: "bob@example.com"}))
		k1 := must[string](t)(s.CreateAPIKey(ctx, alice.ID, " laptop "))
		k2 := must[string](t)(s.CreateAPIKey(ctx, alice.ID, "ci"))
		kb := must[string](t)(s.CreateAPIKey(ctx, bob.ID, "bob"))
		for _, k := range []string{k1, k2, kb} {
			if !strings.HasPrefix(k, "inboxd_") || len(k) != len("inboxd_")+43 {
				t.Fatalf("key %q: want inboxd_ + 43 base64url characters", k)
			}
		}
		if k1 == k2 {
			t.Fatal("two keys are equal")
		}
		owners := []struct {
			key  string
			want users.User
		}{{k1, alice}, {k2, alice}, {kb, bob}}
		for _, o := range owners {
			sameUser(t, must[users.User](t)(s.UserByAPIKey(ctx, o.key)), o.want)
		}
		flipped := k1[:len(k1)-1] + "A"
		if k1[len(k1)-1] == 'A' {
			flipped = k1[:len(k1)-1] + "B"
		}
		for _, bad := range []string{flipped, k1 + "x", k1[:len(k1)-1], "", "inboxd_", "Bearer " + k1, strings.ToUpper(k1)} {
			if _, err := s.UserByAPIKey(ctx, bad); !errors.Is(err, users.ErrNotFound) {
				t.Errorf("UserByAPIKey(%q) = %v, want ErrNotFound", bad, err)
			}
		}
		if _, err := s.CreateAPIKey(ctx, userid.New(), "x"); !errors.Is(err, users.ErrNotFound) {
			t.Errorf("CreateAPIKey for an unknown user: %v, want ErrNotFound", err)
		}

		// Only the hash is stored, never the key.
		h := sha256.Sum256([]byte(k1))
		if n := countRows(t, db, "SELECT COUNT(*) FROM api_keys WHERE key_hash = ?", hex.EncodeToString(h[:])); n != 1 {
			t.Fatalf("hex sha256 of the key stored %d times, want 1", n)
		}
		if n := countRows(t, db, "SELECT COUNT(*) FROM api_keys WHERE key_hash = ? OR prefix = ? OR name = ?", k1, k1, k1); n != 0 {
			t.Fatal("the plaintext key is stored")
		}

		keys := must[[]users.APIKey](t)(s.ListAPIKeys(ctx, alice.ID))
		if len(keys) != 2 || keys[0].Name != "laptop" || keys[1].Name != "ci" {
			t.Fatalf("ListAPIKeys = %+v", keys)
		}
		if keys[0].Prefix != k1[:15] || keys[0].ID == "" || keys[0].CreatedAt.IsZero() || keys[0].LastUsedAt.IsZero() {
			t.Errorf("key listed as %+v (used once, prefix %q)", keys[0], k1[:15])
		}
		js, _ := json.Marshal(keys)
		if strings.Contains(string(js), hex.EncodeToString(h[:])) || strings.Contains(string(js), k1) {
			t.Errorf("listing leaks the key or its hash: %s", js)
		}
		if bobs := must[[]users.APIKey](t)(s.ListAPIKeys(ctx, bob.ID)); len(bobs) != 1 || bobs[0].Name != "bob" {
			t.Errorf("bob's keys: %+v", bobs)
		}
		if none := must[[]users.APIKey](t)(s.ListAPIKeys(ctx, userid.New())); len(none) != 0 {
			t.Errorf("keys of an unknown user: %+v", none)
		}

		// A disabled user's key still identifies them; the auth layer refuses them.
		if err := s.SetDisabled(ctx, bob.ID, true); err != nil {
			t.Fatal(err)
		}
		if u := must[users.User](t)(s.UserByAPIKey(ctx, kb)); !u.Disabled {
			t.Error("UserByAPIKey hides that the user is disabled")
		}
	})
}
