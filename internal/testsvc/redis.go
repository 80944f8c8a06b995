package testsvc

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Redis starts a fresh, empty redis-server for the test on a free loopback
// port, with no persistence, its files in t.TempDir(), and returns its URL
// "redis://127.0.0.1:PORT/0". The server is stopped (by its PID) when the
// test ends. Calls are independent: each gets its own server, so tests may
// run in parallel and may FLUSHALL freely.
//
// A missing redis-server skips the test, or fails it under CI (see Required).
func Redis(t testing.TB) string {
	t.Helper()
	bin := NeedBinary(t, "redis-server")
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // the free port may be taken before redis binds it
		port := FreePort(t)
		p, err := startRedis(bin, dir, port)
		if err != nil {
			lastErr = err
			continue
		}
		t.Cleanup(func() {
			if err := p.stop(syscall.SIGTERM, 5*time.Second); err != nil {
				t.Logf("testsvc: stop redis: %v", err)
			}
		})
		return fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	}
	t.Fatalf("testsvc: start redis-server: %v", lastErr)
	return ""
}

func startRedis(bin, dir string, port int) (*serverProc, error) {
	logPath := filepath.Join(dir, "redis-"+strconv.Itoa(port)+".log")
	cmd := exec.Command(bin,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--daemonize", "no", "--logfile", logPath)
	cmd.Dir = dir
	p, err := startServerProc(cmd, nil)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := redisPing(port); err == nil {
			return p, nil
		} else if time.Now().After(deadline) {
			_ = p.stop(syscall.SIGKILL, time.Second)
			return nil, fmt.Errorf("no PONG within 10s: %v%s", err, serverLogTail(logPath))
		}
		if p.exited() {
			return nil, fmt.Errorf("redis-server exited: %v%s", p.waitErr, serverLogTail(logPath))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// redisPing sends PING over RESP and expects +PONG.
func redisPing(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("answer %q", strings.TrimSpace(line))
	}
	return nil
}

// serverProc is a server started by this package and stopped by its PID.
type serverProc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // set before done is closed
}

// startServerProc starts cmd with output to the command's own files (never a
// pipe, which a forking server would hold open) and SIGKILL as its
// parent-death signal, so that a test binary that dies cannot leak it.
// cred, if set, runs the process as another user.
func startServerProc(cmd *exec.Cmd, cred *syscall.Credential) (*serverProc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &serverProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *serverProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace for the exit, then kills the process.
func (p *serverProc) stop(sig syscall.Signal, grace time.Duration) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("pid %d ignored %v for %v and was killed", p.cmd.Process.Pid, sig, grace)
}

// serverLogTail returns the end of a server's log file for an error message.
func serverLogTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- " + filepath.Base(path) + " ---\n" + string(b)
}
