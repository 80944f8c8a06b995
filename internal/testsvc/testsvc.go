// Package testsvc starts real servers (Redis, PostgreSQL, Dovecot) on loopback
// ports for tests, from the Debian packages that `make test` and .ci/run install.
//
// A missing server binary skips the test on a developer machine, but fails it
// when CI=true or INBOXD_REQUIRE_SERVICES=1 (set by `make test`): a test that
// needs a service never silently skips in CI.
package testsvc

import (
	"net"
	"os"
	"os/exec"
	"testing"
)

// Required reports whether missing services must fail tests rather than skip them.
func Required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("INBOXD_REQUIRE_SERVICES") == "1"
}

// NeedBinary returns the path of the first of names found on PATH or as an
// absolute path, or skips/fails the test as Required says.
func NeedBinary(t testing.TB, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if Required() {
		t.Fatalf("testsvc: none of %v installed (run `make test` as root to install, or install the Debian package)", names)
	}
	t.Skipf("testsvc: none of %v installed; `make test` installs it", names)
	return ""
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsvc: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
