package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestBinaryOnEmbeddedDefaults builds the real binary and runs `inboxd serve`
// with no configuration in an empty directory, as `make run` does: /readyz
// answers 200, and SIGTERM stops it cleanly with exit code 0.
func TestBinaryOnEmbeddedDefaults(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "inboxd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve")
	cmd.Dir = work
	// No configuration at all, except a free port so the test can run beside `make run`.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, fmt.Sprintf("INBOXD_LISTEN=127.0.0.1:%d", port)}
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	ready := false
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !ready; time.Sleep(25 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			ready = resp.StatusCode == 200
		}
	}
	if !ready {
		log, _ := os.ReadFile(logf.Name())
		t.Fatalf("/readyz never answered 200; log:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(work, "data", "inboxd.db")); err != nil {
		t.Errorf("no database under ./data: %v", err)
	}
	if running := pluginProcesses(t, bin); len(running) != 2 {
		t.Errorf("built-in plugin processes while serving: %v, want imap and tone", running)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("exit after SIGTERM: %v; log:\n%s", err, log)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within 15 s of SIGTERM")
	}
	// The built-in plugins ran as children; none may outlive the daemon.
	if left := pluginProcesses(t, bin); len(left) > 0 {
		t.Errorf("plugin processes outlived the daemon: %v", left)
	}
}
