package sdnotify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// listen opens a unixgram socket in a fresh temp dir, the way systemd does,
// and returns it with its path. The directory is short-named: socket paths
// are limited to 108 bytes and t.TempDir paths can be long.
func listen(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdnotify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, path
}

// recv reads one datagram, or fails the test after wait.
func recv(t *testing.T, conn *net.UnixConn, wait time.Duration) string {
	t.Helper()
	msg, ok := tryRecv(t, conn, wait)
	if !ok {
		t.Fatalf("no notification within %v", wait)
	}
	return msg
}

// tryRecv reads one datagram within wait; ok is false on timeout.
func tryRecv(t *testing.T, conn *net.UnixConn, wait time.Duration) (msg string, ok bool) {
	t.Helper()
	buf := make([]byte, 4096)
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", false
		}
		t.Fatalf("read: %v", err)
	}
	return string(buf[:n]), true
}

// env is a fake environment for newFromEnv.
type env map[string]string

func (e env) get(k string) string { return e[k] }

func TestNewReadsEnvironmentAndUnsetsIt(t *testing.T) {
	conn, path := listen(t)
	t.Setenv(envSocket, path)
	t.Setenv(envWatchdogUsec, "30000000")
	t.Setenv(envWatchdogPID, strconv.Itoa(os.Getpid()))

	n := New()
	if n == nil {
		t.Fatal("New returned nil with NOTIFY_SOCKET set")
	}
	for _, k := range []string{envSocket, envWatchdogUsec, envWatchdogPID} {
		if v, ok := os.LookupEnv(k); ok {
			t.Errorf("%s still set to %q: child processes would inherit it", k, v)
		}
	}
	if got, ok := n.WatchdogInterval(); !ok || got != 15*time.Second {
		t.Errorf("WatchdogInterval = %v, %v; want 15s, true", got, ok)
	}
	if err := n.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if got := recv(t, conn, 5*time.Second); got != "READY=1" {
		t.Errorf("got %q, want READY=1", got)
	}
}

func TestNoopWithoutNotifySocket(t *testing.T) {
	t.Setenv(envSocket, "")
	t.Setenv(envWatchdogUsec, "1000000")
	n := New()
	if n != nil {
		t.Fatalf("New = %+v without NOTIFY_SOCKET, want nil", n)
	}
	// Every method of a nil Notifier is a harmless no-op.
	for name, err := range map[string]error{
		"Ready":         n.Ready(),
		"Stopping":      n.Stopping(),
		"Reloading":     n.Reloading(),
		"Status":        n.Status("x"),
		"ExtendTimeout": n.ExtendTimeout(time.Second),
		"Notify":        n.Notify("READY=1"),
	} {
		if err != nil {
			t.Errorf("%s on nil Notifier: %v", name, err)
		}
	}
	if d, ok := n.WatchdogInterval(); ok || d != 0 {
		t.Errorf("WatchdogInterval = %v, %v; want 0, false", d, ok)
	}
	done := make(chan struct{})
	go func() {
		n.Watchdog(context.Background(), nil, nil)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog on nil Notifier did not return at once")
	}
}

func TestNewFromEnv(t *testing.T) {
	t.Parallel()
	const pid = 4242
	tests := []struct {
		name     string
		env      env
		wantNil  bool
		watchdog time.Duration // WatchdogInterval; 0 means off
	}{
		{name: "unset", env: env{}, wantNil: true},
		{name: "relative path", env: env{envSocket: "notify.sock"}, wantNil: true},
		{name: "lone at", env: env{envSocket: "@"}, wantNil: true},
		{name: "vsock", env: env{envSocket: "vsock:2:1234"}, wantNil: true},
		{name: "path", env: env{envSocket: "/run/systemd/notify"}},
		{name: "abstract", env: env{envSocket: "@/org/freedesktop/systemd1/notify/123"}},
		{name: "watchdog without pid", env: env{envSocket: "/x", envWatchdogUsec: "2000000"}, watchdog: time.Second},
		{name: "watchdog for us", env: env{envSocket: "/x", envWatchdogUsec: "2000000", envWatchdogPID: "4242"}, watchdog: time.Second},
		{name: "watchdog for another pid", env: env{envSocket: "/x", envWatchdogUsec: "2000000", envWatchdogPID: "1"}},
		{name: "watchdog bad pid", env: env{envSocket: "/x", envWatchdogUsec: "2000000", envWatchdogPID: "me"}},
		{name: "watchdog zero", env: env{envSocket: "/x", envWatchdogUsec: "0"}},
		{name: "watchdog garbage", env: env{envSocket: "/x", envWatchdogUsec: "30s"}},
		{name: "watchdog negative", env: env{envSocket: "/x", envWatchdogUsec: "-5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := newFromEnv(tt.env.get, pid)
			if (n == nil) != tt.wantNil {
				t.Fatalf("newFromEnv = %+v, want nil: %v", n, tt.wantNil)
			}
			d, ok := n.WatchdogInterval()
			if d != tt.watchdog || ok != (tt.watchdog > 0) {
				t.Errorf("WatchdogInterval = %v, %v; want %v", d, ok, tt.watchdog)
			}
		})
	}
}

func TestMessages(t *testing.T) {
	t.Parallel()
	conn, path := listen(t)
	n := newFromEnv(env{envSocket: path}.get, os.Getpid())

	send := func(name string, err error, want string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := recv(t, conn, 5*time.Second); got != want {
			t.Errorf("%s sent %q, want %q", name, got, want)
		}
	}
	send("Ready", n.Ready(), "READY=1")
	send("Stopping", n.Stopping(), "STOPPING=1")
	send("Status", n.Status("polling 3 users\nline two\r\nthree"), "STATUS=polling 3 users line two three")
	send("ExtendTimeout", n.ExtendTimeout(90*time.Second), "EXTEND_TIMEOUT_USEC=90000000")
	send("Notify", n.Notify("ERRNO=5"), "ERRNO=5")

	before, ok := monotonicUsec()
	if !ok {
		t.Fatal("monotonicUsec failed")
	}
	if err := n.Reloading(); err != nil {
		t.Fatalf("Reloading: %v", err)
	}
	got := recv(t, conn, 5*time.Second)
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("Reloading sent %q, want RELOADING=1 and MONOTONIC_USEC", got)
	}
	us, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC: %v", err)
	}
	if after, _ := monotonicUsec(); us < before || us > after {
		t.Errorf("MONOTONIC_USEC=%d not within [%d, %d]", us, before, after)
	}
}

func TestAbstractSocket(t *testing.T) {
	t.Parallel()
	name := fmt.Sprintf("@inboxd-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Skipf("abstract unix sockets unavailable: %v", err)
	}
	defer conn.Close()
	n := newFromEnv(env{envSocket: name}.get, os.Getpid())
	if err := n.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if got := recv(t, conn, 5*time.Second); got != "READY=1" {
		t.Errorf("got %q, want READY=1", got)
	}
}

func TestSendErrorWhenNobodyListens(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "gone.sock")
	n := newFromEnv(env{envSocket: path}.get, os.Getpid())
	if err := n.Ready(); err == nil {
		t.Fatal("Ready to a missing socket succeeded")
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWatchdogPingsOnlyWhileHealthy(t *testing.T) {
	t.Parallel()
	conn, path := listen(t)
	// WATCHDOG_USEC=40ms: a ping every 20ms.
	n := newFromEnv(env{envSocket: path, envWatchdogUsec: "40000"}.get, os.Getpid())

	var (
		unhealthy     atomic.Bool
		failingChecks atomic.Int64 // checks made while unhealthy
	)
	healthy := func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("health check context has no deadline")
		}
		if unhealthy.Load() {
			failingChecks.Add(1)
			return errors.New("database unreachable")
		}
		return nil
	}
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		n.Watchdog(ctx, healthy, logger)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()

	// Healthy: pings arrive, the first one at once.
	for range 3 {
		if got := recv(t, conn, 5*time.Second); got != "WATCHDOG=1" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
	}

	// Unhealthy: wait for a failing check. Pings are sent synchronously after
	// a passing check, so any ping from before it is already queued: drain,
	// then make sure nothing more arrives across several failing checks.
	unhealthy.Store(true)
	waitFor(t, func() bool { return failingChecks.Load() >= 1 })
	for {
		if _, ok := tryRecv(t, conn, 10*time.Millisecond); !ok {
			break
		}
	}
	mark := failingChecks.Load()
	waitFor(t, func() bool { return failingChecks.Load() >= mark+3 })
	if got, ok := tryRecv(t, conn, 10*time.Millisecond); ok {
		t.Fatalf("got %q while unhealthy, want no ping", got)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "database unreachable") {
		t.Errorf("no warning logged for the failing check; log:\n%s", logs.String())
	}

	// Healthy again: pings resume.
	unhealthy.Store(false)
	if got := recv(t, conn, 5*time.Second); got != "WATCHDOG=1" {
		t.Fatalf("got %q after recovery, want WATCHDOG=1", got)
	}

	// Cancelling the context stops the loop.
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog did not return after ctx was cancelled")
	}
}

func TestWatchdogOffReturnsAtOnce(t *testing.T) {
	t.Parallel()
	_, path := listen(t)
	n := newFromEnv(env{envSocket: path}.get, os.Getpid()) // no WATCHDOG_USEC
	done := make(chan struct{})
	go func() {
		n.Watchdog(context.Background(), func(context.Context) error {
			t.Error("health check called with the watchdog off")
			return nil
		}, nil)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog without WATCHDOG_USEC did not return")
	}
}

// waitFor polls cond until it holds, failing the test after a generous limit
// (the race detector and a loaded CI machine slow everything down).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
