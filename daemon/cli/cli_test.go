package cli

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) {
	// The daemon re-executes its own binary (here, this test binary) as
	// `plugin serve NAME` for the built-in plugins: serve them.
	if len(os.Args) == 4 && os.Args[1] == "plugin" && os.Args[2] == "serve" {
		os.Exit(Main(context.Background(), Env{Args: os.Args[1:], Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}))
	}
	testsvc.Main(m)
}

// run runs the command line with an environment of vars plus a fresh data dir.
func run(t *testing.T, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := Env{Args: args, Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return vars[k] }}
	code = Main(context.Background(), env)
	return code, out.String(), errb.String()
}

func dataEnv(t *testing.T) map[string]string {
	return map[string]string{"INBOXD_DATA_DIR": t.TempDir(), "INBOXD_LOG_LEVEL": "warn"}
}

func TestUsageErrors(t *testing.T) {
	vars := dataEnv(t)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage: inboxd COMMAND"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"user"}, 2, "missing subcommand"},
		{[]string{"user", "explode"}, 2, `unknown subcommand "explode"`},
		{[]string{"user", "add"}, 2, "needs --email"},
		{[]string{"user", "disable"}, 2, "takes 1 argument"},
		{[]string{"user", "add", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"config"}, 2, "inboxd config check"},
		{[]string{"serve", "extra"}, 2, "takes no arguments"},
		{[]string{"version", "x"}, 2, "no arguments"},
	}
	for _, tc := range cases {
		code, _, stderr := run(t, vars, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("inboxd %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	if code, out, _ := run(t, vars, "version"); code != 0 || !strings.HasPrefix(out, "inboxd ") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestConfigCheck(t *testing.T) {
	vars := dataEnv(t)
	vars["INBOXD_AUTH_MODE"] = "password"
	vars["INBOXD_AUTH_PASSWORD"] = "super-secret-pw"
	vars["INBOXD_KV_URL"] = "redis://:redis-secret@127.0.0.1:6379/0"
	code, out, stderr := run(t, vars, "config", "check")
	if code != 0 || !strings.Contains(out, "configuration ok") {
		t.Fatalf("config check: %d %q %q", code, out, stderr)
	}
	for _, secret := range []string{"super-secret-pw", "redis-secret"} {
		if strings.Contains(out, secret) {
			t.Errorf("config check prints secret %q", secret)
		}
	}
	if !strings.Contains(out, "INBOXD_AUTH_MODE") || !strings.Contains(out, "password") {
		t.Errorf("config check output lacks settings:\n%s", out)
	}
	vars["INBOXD_POLL_WORKERS"] = "-3"
	if code, _, stderr := run(t, vars, "config", "check"); code != 1 || !strings.Contains(stderr, "poll.workers") {
		t.Errorf("bad config: %d %q", code, stderr)
	}
}

func TestUserCommands(t *testing.T) {
	vars := dataEnv(t)
	code, out, stderr := run(t, vars, "user", "add", "--email", "Alice@Example.com", "--admin", "--name", "Alice")
	if code != 0 {
		t.Fatalf("user add: %d %q", code, stderr)
	}
	m := regexp.MustCompile(`user ([0-9a-f-]{36}) created \(alice@example.com\)\napi key: (inboxd_\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("user add output: %q", out)
	}
	if code, _, stderr := run(t, vars, "user", "add", "--email", "alice@example.com"); code != 1 || !strings.Contains(stderr, "exists") {
		t.Errorf("duplicate user add: %d %q", code, stderr)
	}
	code, out, _ = run(t, vars, "user", "list")
	if code != 0 || !strings.Contains(out, m[1]) || !strings.Contains(out, "alice@example.com") || strings.Contains(out, m[2]) {
		t.Errorf("user list: %d %q", code, out)
	}
	code, out, _ = run(t, vars, "user", "api-key", "alice@example.com")
	if code != 0 || !strings.Contains(out, "inboxd_") || strings.Contains(out, m[2]) {
		t.Errorf("user api-key: %d %q", code, out)
	}
	if code, out, _ = run(t, vars, "user", "disable", m[1]); code != 0 || !strings.Contains(out, "disabled") {
		t.Errorf("user disable: %d %q", code, out)
	}
	if code, _, stderr := run(t, vars, "user", "disable", "nobody@example.com"); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("disable unknown: %d %q", code, stderr)
	}
	if _, out, _ = run(t, vars, "user", "list"); !strings.Contains(out, "true") {
		t.Errorf("list after disable: %q", out)
	}
}

// TestServeLifecycle runs serve in-process on embedded defaults: it becomes
// ready, creates its secret key with mode 0600, and stops cleanly when its
// context ends (as on SIGTERM).
func TestServeLifecycle(t *testing.T) {
	vars := dataEnv(t)
	port := testsvc.FreePort(t)
	vars["INBOXD_LISTEN"] = fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, Env{Args: []string{"serve"}, Stdout: &bytes.Buffer{}, Stderr: &errb, Getenv: func(k string) string { return vars[k] }})
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitReady(t, base+"/readyz", done)
	resp, err := http.Get(base + "/api/v1/me")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("me in auth mode none: %v %v", resp, err)
	}
	resp.Body.Close()
	fi, err := os.Stat(filepath.Join(vars["INBOXD_DATA_DIR"], "secret.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret key file: %v %v", fi, err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve exited %d: %s", code, errb.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop after its context ended")
	}
}

func TestServeRefusesBadSecretKeyFile(t *testing.T) {
	vars := dataEnv(t)
	keyFile := filepath.Join(vars["INBOXD_DATA_DIR"], "secret.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("ab", 32)), 0o644); err != nil {
		t.Fatal(err)
	}
	vars["INBOXD_LISTEN"] = fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(t))
	code, _, stderr := run(t, vars, "serve")
	if code != 1 || !strings.Contains(stderr, "0600") {
		t.Errorf("serve with a world-readable key: %d %q", code, stderr)
	}
}

func waitReady(t *testing.T, url string, done <-chan int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case code := <-done:
			t.Fatalf("serve exited early with %d", code)
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never answered 200", url)
}

// TestNoNewKeyOverExistingUsers: with users in the database, a missing secret
// key file is an error, not a fresh key that would orphan their secrets.
func TestNoNewKeyOverExistingUsers(t *testing.T) {
	vars := dataEnv(t)
	if code, _, stderr := run(t, vars, "user", "add", "--email", "alice@example.com"); code != 0 {
		t.Fatalf("user add: %d %s", code, stderr)
	}
	keyFile := filepath.Join(vars["INBOXD_DATA_DIR"], "secret.key")
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, vars, "user", "list")
	if code != 1 || !strings.Contains(stderr, "secret_key_file") || !strings.Contains(stderr, "restore the file") {
		t.Errorf("with users and no key: %d %q", code, stderr)
	}
	if _, err := os.Stat(keyFile); err == nil {
		t.Error("a new key file was created over existing users")
	}
}
