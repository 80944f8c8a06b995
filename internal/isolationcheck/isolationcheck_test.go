package isolationcheck

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/daemon/userid"
)

// repoRoot is the directory of go.mod above the test's directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test")
		}
		dir = parent
	}
}

// TestIsolationStatic runs every rule over the daemon, the first-party
// plugins and the SDK.
func TestIsolationStatic(t *testing.T) {
	files, err := Load(repoRoot(t), "daemon", "plugins", "sdk")
	if err != nil {
		t.Fatal(err)
	}
	c, err := parse(files)
	if err != nil {
		t.Fatal(err)
	}
	c.run()
	for _, f := range c.findings {
		t.Error(f)
	}
	stale, err := StaleAllowances(files)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stale {
		t.Errorf("isolationcheck's lists are out of date: %s", s)
	}
	// The rules have something to look at: not vacuously true.
	if len(files) < 50 || len(c.methods) < 40 || c.kvCalls < 15 {
		t.Errorf("checked %d files, %d store methods, %d KV writes: the check looks at too little", len(files), len(c.methods), c.kvCalls)
	}
	t.Logf("isolation static check: %d files, %d store methods, %d KV writes", len(files), len(c.methods), c.kvCalls)
}

// TestIsolationStaticRules plants one violation of a rule per case (the
// lines marked "// want") and checks that exactly those lines are reported,
// under that rule; the clean cases must give nothing.
func TestIsolationStaticRules(t *testing.T) {
	const head = `import (
	"context"
	"fmt"

	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
)

var _ = fmt.Sprint
var _ context.Context

type T struct{ kv kv.Store }
`
	cases := []struct {
		name, path, rule, src string
	}{
		{"pointer user id", "daemon/foo/a.go", RuleOptionalUser, `
func Get(ctx context.Context, id *userid.ID) error { return nil } // want`},
		{"variadic user id", "daemon/foo/a.go", RuleOptionalUser, `
func Count(ctx context.Context, ids ...userid.ID) int { return 0 } // want`},
		{"pointer in an interface", "daemon/foo/a.go", RuleOptionalUser, `
type Reader interface {
	Read(ctx context.Context, user *userid.ID) error // want
}`},
		{"pointer in a func literal", "daemon/foo/a.go", RuleOptionalUser, `
var f = func(u *userid.ID) {} // want`},
		{"default-like helper", "daemon/foo/a.go", RuleOptionalUser, `
func UserOrDefault(id userid.ID) userid.ID { return id } // want`},
		{"pointer, aliased import", "daemon/foo/a.go", RuleOptionalUser, `
func Get(u *uid.ID) {} // want`},
		{"pointer inside userid", "daemon/userid/x.go", RuleOptionalUser, `
func Pick(a *ID) ID { return *a } // want`},
		{"store method without user", "daemon/logs/store.go", RuleStoreUser, `
type Store struct{}
func (s *Store) Get(ctx context.Context, user userid.ID, id string) error { return nil }
func (s *Store) All(ctx context.Context) error { return nil } // want
func (s *Store) helper(ctx context.Context) error { return nil }`},
		{"value receiver", "daemon/settings/x.go", RuleStoreUser, `
type Store struct{}
func (s Store) Dump() map[string]string { return nil } // want`},
		{"store interface", "daemon/vectors/x.go", RuleStoreUser, `
type Store interface {
	Count(ctx context.Context, user userid.ID) (int, error)
	CountAll(ctx context.Context) (int, error) // want
}`},
		{"user: literal", "daemon/foo/a.go", RuleUserLiteral, `
func key(id string) string { return "user:" + id + ":x" } // want`},
		{"user: in a format", "daemon/foo/a.go", RuleUserLiteral, "\n" +
			"func key(id string) string { return fmt.Sprintf(`user:%s:status`, id) } // want"},
		{"literal KV key", "daemon/foo/a.go", RuleKVKey, `
func (t *T) f(ctx context.Context) { _ = t.kv.Set(ctx, "settings", "x", 0) } // want`},
		{"Sprintf KV key", "daemon/foo/a.go", RuleKVKey, `
func (t *T) f(ctx context.Context, id userid.ID) { _ = t.kv.Delete(ctx, fmt.Sprintf("%s:status", id)) } // want`},
		{"literal through a variable", "daemon/foo/a.go", RuleKVKey, `
func (t *T) f(ctx context.Context, name string) {
	key := "global:" + name
	_, _ = t.kv.SetNX(ctx, key, "x", 1) // want
}`},
		{"literal through a helper", "daemon/foo/a.go", RuleKVKey, `
func cacheKey(n string) string { return "cache:" + n }
func f(ctx context.Context, store kv.Store, n string) { _, _ = store.Incr(ctx, cacheKey(n), 1) } // want`},
		{"literal map key", "daemon/foo/a.go", RuleKVKey, `
func (t *T) f(ctx context.Context) { _ = t.kv.SetMany(ctx, map[string]string{"global": "x"}) } // want`},
		{"literal appended to the keys", "daemon/foo/a.go", RuleKVKey, `
func (t *T) f(ctx context.Context, id userid.ID) {
	del := []string{id.Key("a")}
	del = append(del, "orphan")
	_ = t.kv.Delete(ctx, del...) // want
}`},
		{"literal map index", "daemon/foo/a.go", RuleKVKey, `
func (t *T) f(ctx context.Context, id userid.ID) {
	set := map[string]string{id.Key("a"): "1"}
	set["status"] = "2"
	_ = t.kv.SetMany(ctx, set) // want
}`},
		{"literal CAS on a kv.NewSQL", "daemon/foo/a.go", RuleKVKey, `
func f(ctx context.Context) {
	s := kv.NewSQL(nil)
	_, _ = s.CompareAndSwap(ctx, "poll-owner", "a", "b", 1) // want
}`},

		{"clean: keys by id.Key and leases", "daemon/foo/a.go", "", `
func leaseKey(id userid.ID) string { return "lease:poll:" + id.String() }
const replica = "lease:replica:"
func (t *T) f(ctx context.Context, id userid.ID, name string, key string) {
	_ = t.kv.Set(ctx, id.Key("imap_server"), "x", 0)
	_, _ = t.kv.SetNX(ctx, leaseKey(id), "me", 1)
	_ = t.kv.Set(ctx, replica+name, "1", 1)
	_ = t.kv.Delete(ctx, fmt.Sprintf("lease:job:%s:%s", name, id))
	_ = t.kv.Set(ctx, key, "x", 0)
	k := id.Key("plugin:" + name)
	_ = t.kv.SetMany(ctx, map[string]string{k: "1", id.Key("b"): "2"})
	var other struct{ Set func(context.Context, string, string, int) error }
	_ = other.Set(ctx, "not a kv store", "x", 0)
}`},
		{"clean: store methods", "daemon/users/store.go", "", `
type Store struct{}
func (s *Store) Get(ctx context.Context, id userid.ID) error { return nil }
func (s *Store) List(ctx context.Context) error { return nil }
type Other struct{}
func (o *Other) Everything(ctx context.Context) error { return nil }`},
		{"clean: inside userid", "daemon/userid/x.go", "", `
func (id *ID) Set(s string) { *id = ID{} }
func Key(id ID, s string) string { return "user:" + id.s + ":" + s }`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pkgName := filepath.Base(filepath.Dir(tc.path))
			h := head
			switch {
			case pkgName == "userid":
				h = "type ID struct{ s string }\n"
			case strings.Contains(tc.src, "uid."):
				h = "import uid \"github.com/inboxd/inboxd/daemon/userid\"\n"
			}
			src := "package " + pkgName + "\n\n" + h + tc.src + "\n"
			var want []int
			for i, line := range strings.Split(src, "\n") {
				if strings.HasSuffix(line, "// want") {
					want = append(want, i+1)
				}
			}
			findings, err := Check([]File{{Path: tc.path, Src: []byte(src)}})
			if err != nil {
				t.Fatalf("%v\n%s", err, src)
			}
			var got []int
			for _, f := range findings {
				got = append(got, f.Pos.Line)
				if f.Rule != tc.rule || f.Pos.Filename != tc.path {
					t.Errorf("finding %s, want rule %q in %s", f, tc.rule, tc.path)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("findings on lines %v, want %v: %v\n%s", got, want, findings, src)
			}
		})
	}
}

func TestKeyProblem(t *testing.T) {
	known := userid.New()
	exists := func(id userid.ID) bool { return id == known }
	for key, ok := range map[string]bool{
		known.Key("imap_server"):                         true,
		known.Key("plugin:x:k"):                          true,
		"lease:poll:" + known.String():                   true,
		"lease:job:tone_of_voice:" + known.String():      true,
		"lease:replica:host-1/123":                       true,
		"user:" + userid.New().String() + ":x":           false, // no such user
		"user:" + strings.ToUpper(known.String()) + ":x": false, // not canonical
		"user:" + known.String():                         false, // no suffix separator
		"imap_server":                                    false,
		"schema_version":                                 false,
		"lease:poll:" + userid.New().String():            false,
		"lease:job:x":                                    false,
	} {
		if problem := KeyProblem(key, exists); (problem == "") != ok {
			t.Errorf("KeyProblem(%q) = %q, want ok=%v", key, problem, ok)
		}
	}
}
