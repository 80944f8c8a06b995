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

// TestMakeInstall: `make install` puts the binary, the unit, the example
// configuration and the example environment file in place, and a second
// run never overwrites a configuration the operator has edited.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make: %v", err)
	}
	dest := t.TempDir()
	install := func() {
		out, err := exec.Command("make", "install", "DESTDIR="+dest).CombinedOutput()
		if err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
	}
	install()
	for path, mode := range map[string]os.FileMode{
		"usr/local/bin/inboxd":              0o755,
		"etc/systemd/system/inboxd.service": 0o644,
		"etc/inboxd/inboxd.toml.example":    0o644,
		"etc/inboxd/inboxd.env.example":     0o600,
		"etc/inboxd/inboxd.toml":            0o644,
		"etc/inboxd/inboxd.env":             0o600,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), mode)
		}
	}
	conf := filepath.Join(dest, "etc/inboxd/inboxd.toml")
	if err := os.WriteFile(conf, []byte("listen = \"0.0.0.0:9999\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if b, _ := os.ReadFile(conf); string(b) != "listen = \"0.0.0.0:9999\"\n" {
		t.Errorf("a second make install overwrote the edited configuration: %q", b)
	}
}
