// Package sdnotify speaks the systemd service notification protocol
// (sd_notify(3)) with the standard library only: readiness, reload and stop
// notices, a free-form status line, and the watchdog keep-alive.
//
// A Notifier is built once, by the code that owns start-up and shutdown
// (daemon/cli), with New. Outside systemd (no NOTIFY_SOCKET) New returns nil,
// and every method of a nil *Notifier is a no-op that returns nil, so callers
// never need to check whether they run under systemd.
//
// New consumes NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID: it removes them
// from the process environment so that child processes (plugins started with
// go-plugin inherit the daemon's environment) do not believe they are the
// service's main process.
package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Environment variables set by systemd for the service's main process.
const (
	envSocket       = "NOTIFY_SOCKET"
	envWatchdogUsec = "WATCHDOG_USEC"
	envWatchdogPID  = "WATCHDOG_PID"
)

// Notifier sends state changes to the service manager. The zero value is not
// usable; a nil *Notifier is, as a no-op.
type Notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration // WATCHDOG_USEC for this process; 0 when the watchdog is off

	mu sync.Mutex // serialises writes so that messages never interleave
}

// New returns a Notifier for the socket named by NOTIFY_SOCKET (a path, or an
// abstract socket written with a leading '@'), or nil when the process does
// not run under a systemd service with notification access. It reads the
// watchdog timeout from WATCHDOG_USEC when WATCHDOG_PID is unset or names this
// process. New unsets all three variables (see the package comment), so call
// it once.
func New() *Notifier {
	n := newFromEnv(os.Getenv, os.Getpid())
	for _, k := range []string{envSocket, envWatchdogUsec, envWatchdogPID} {
		_ = os.Unsetenv(k)
	}
	return n
}

// newFromEnv builds a Notifier from getenv, as seen by the process pid.
func newFromEnv(getenv func(string) string, pid int) *Notifier {
	sock := getenv(envSocket)
	// systemd hands out a filesystem path or an abstract socket ("@name");
	// Go maps a leading '@' to the abstract namespace on Linux. Anything
	// else (vsock: of newer systemd, garbage) is not for us.
	if len(sock) < 2 || (sock[0] != '/' && sock[0] != '@') {
		return nil
	}
	n := &Notifier{addr: &net.UnixAddr{Name: sock, Net: "unixgram"}}
	if p := getenv(envWatchdogPID); p != "" {
		if got, err := strconv.Atoi(p); err != nil || got != pid {
			return n // the watchdog belongs to another process
		}
	}
	if us, err := strconv.ParseUint(getenv(envWatchdogUsec), 10, 63); err == nil && us > 0 {
		n.watchdog = time.Duration(us) * time.Microsecond
	}
	return n
}

// Notify sends one raw notification, one or more newline-separated
// VARIABLE=value assignments (see sd_notify(3)). The typed methods below cover
// what the daemon needs; Notify is for the rest.
func (n *Notifier) Notify(state string) error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sdnotify: dial %s: %w", n.addr.Name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: send: %w", err)
	}
	return nil
}

// Ready tells the service manager that start-up finished (READY=1). Send it
// once the daemon serves requests, and again after a reload.
func (n *Notifier) Ready() error { return n.Notify("READY=1") }

// Stopping tells the service manager that shutdown began (STOPPING=1).
func (n *Notifier) Stopping() error { return n.Notify("STOPPING=1") }

// Reloading tells the service manager that the daemon reloads its
// configuration (RELOADING=1). It carries MONOTONIC_USEC, which systemd 253+
// requires for Type=notify-reload and older versions ignore. Call Ready when
// the reload is done.
func (n *Notifier) Reloading() error {
	if n == nil {
		return nil
	}
	msg := "RELOADING=1"
	if us, ok := monotonicUsec(); ok {
		msg += "\nMONOTONIC_USEC=" + strconv.FormatUint(us, 10)
	}
	return n.Notify(msg)
}

// Status sets the free-form status line that `systemctl status` shows
// (STATUS=...). Line breaks are replaced by spaces.
func (n *Notifier) Status(status string) error {
	if n == nil {
		return nil
	}
	return n.Notify("STATUS=" + strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(status))
}

// ExtendTimeout asks the service manager for d more time to finish the
// current start-up, reload or shutdown (EXTEND_TIMEOUT_USEC), for slow work
// such as long database migrations. Send it again before d runs out.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	if n == nil {
		return nil
	}
	return n.Notify("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
}

// WatchdogInterval reports how often the daemon should ping the watchdog:
// half of WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends. ok is false
// when the service has no watchdog for this process.
func (n *Notifier) WatchdogInterval() (interval time.Duration, ok bool) {
	if n == nil || n.watchdog <= 0 {
		return 0, false
	}
	return n.watchdog / 2, true
}

// Watchdog pings the service manager (WATCHDOG=1) every WatchdogInterval,
// starting at once, until ctx ends. Before each ping it calls healthy with a
// context bounded by the interval; while healthy returns an error no ping is
// sent and a warning is logged, so a wedged daemon (a store it cannot reach, a
// deadlocked pool) is restarted by systemd after WatchdogSec. A nil healthy
// always counts as healthy and a nil logger means slog.Default. Watchdog
// returns at once when the watchdog is off; run it in its own goroutine.
func (n *Notifier) Watchdog(ctx context.Context, healthy func(context.Context) error, logger *slog.Logger) {
	interval, ok := n.WatchdogInterval()
	if !ok {
		return
	}
	if logger == nil {
		logger = slog.Default()
	}
	if healthy == nil {
		healthy = func(context.Context) error { return nil }
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	failing := false
	for {
		if err := check(ctx, interval, healthy); err != nil {
			if ctx.Err() != nil {
				return // shutting down: not a health problem
			}
			failing = true
			logger.Warn("sdnotify: health check failed, withholding watchdog ping", "error", err)
		} else {
			if failing {
				failing = false
				logger.Info("sdnotify: health check passes again, resuming watchdog pings")
			}
			if err := n.Notify("WATCHDOG=1"); err != nil {
				logger.Warn("sdnotify: watchdog ping failed", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// check runs healthy with a deadline of one interval. A check that ignores
// its context and hangs simply withholds pings, and systemd restarts us.
func check(ctx context.Context, interval time.Duration, healthy func(context.Context) error) error {
	hctx, cancel := context.WithTimeout(ctx, interval)
	defer cancel()
	return healthy(hctx)
}
