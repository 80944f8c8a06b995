package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// mountTmpfs mounts a tmpfs of size (e.g. "4m") on a fresh directory,
// unmounted when the test ends. It needs root: elsewhere the test is
// skipped, unless CI=true or INBOXD_REQUIRE_SERVICES=1 make it fail.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	notHere := func(why string) {
		t.Helper()
		if testsvc.Required() {
			t.Fatalf("%s (CI=true or INBOXD_REQUIRE_SERVICES=1: this test must run, as root)", why)
		}
		t.Skipf("%s; run as root (CI does) to test a full disk", why)
	}
	if os.Geteuid() != 0 {
		notHere("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		notHere("mount a tmpfs: " + strings.TrimSpace(string(out)) + ": " + err.Error())
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir
}

// fillDisk writes path until the volume has no space left.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		_, err := f.Write(chunk) // the last one writes what fits, then fails
		if errors.Is(err, syscall.ENOSPC) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestDiskFullSQLite fills the volume of the SQLite database under a running
// daemon. Writes then fail with a clear error in the log ("disk full", the
// file) and a 507 "storage_full" to the client; the daemon does not crash, keeps serving
// reads (earlier workflows and settings) and health; once space returns,
// writes succeed again without a restart, and after a clean stop the
// database passes PRAGMA integrity_check with everything written before
// and after the outage.
func TestDiskFullSQLite(t *testing.T) {
	dir := mountTmpfs(t, "4m")
	dbPath := filepath.Join(dir, "inboxd.db")
	d := newDaemon(t, "INBOXD_DATABASE_URL=sqlite://"+dbPath)
	d.start()

	type workflowJSON struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	workflow := func(name string, promptBytes int) map[string]any {
		prompt := "Classify this mail. " + strings.Repeat("x", promptBytes)
		return map[string]any{"name": name, "steps": []map[string]any{{"name": "classify", "kind": "llm", "system_prompt": prompt}}}
	}
	var kept workflowJSON
	if code := d.call("POST", "/api/v1/workflows", workflow("kept", 100), &kept); code != 201 {
		t.Fatalf("create a workflow: %d", code)
	}
	if code := d.call("PUT", "/api/v1/settings", map[string]any{"timezone": "Europe/Paris"}, nil); code != 200 {
		t.Fatalf("put settings: %d", code)
	}

	// The volume fills up (another tenant of the disk, a log run wild).
	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)
	db := openDB(t, dir) // this test's own pool on the daemon's database
	if err := db.CheckDiskSpace(); !errors.Is(err, sqldb.ErrDiskFull) {
		t.Errorf("CheckDiskSpace on the full volume: %v", err)
	}
	// Writes that need room fail. SQLite may still write into space its
	// files already hold: big writes (about 100 KB each) until one fails,
	// then one of the same size and a bigger one fail too.
	big := workflow("big", 95_000)
	wantNames := []string{"kept"}
	for code := 0; code != 507; {
		switch code = d.call("POST", "/api/v1/workflows", big, nil); {
		case code == 201 && len(wantNames) < 40:
			wantNames = append(wantNames, "big")
		case code != 507:
			t.Fatalf("create a workflow on the full volume: %d after %d created, want 507 at last", code, len(wantNames)-1)
		}
	}
	var full struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if code := d.call("POST", "/api/v1/workflows", big, &full); code != 507 || full.Error.Code != "storage_full" {
		t.Errorf("create a workflow on the full volume: %d %+v, want 507 storage_full", code, full)
	}
	run := map[string]any{"input": strings.Repeat("a long mail ", 20_000)} // 240 KB
	if code := d.call("POST", "/api/v1/workflows/"+kept.ID+"/run", run, nil); code != 507 {
		t.Errorf("start a run on the full volume: %d, want 507", code)
	}
	waitUntil(t, "the disk-full error in the daemon log", 10*time.Second, func() bool {
		log, _ := os.ReadFile(d.logPath)
		return strings.Contains(string(log), "sqldb: disk full: cannot write the SQLite database "+dbPath+" (database or disk is full")
	})

	// Reads and health go on; the process is alive.
	var got workflowJSON
	if code := d.call("GET", "/api/v1/workflows/"+kept.ID, nil, &got); code != 200 || got.Name != "kept" {
		t.Errorf("read a workflow on the full volume: %d %+v", code, got)
	}
	var set map[string]any
	if code := d.call("GET", "/api/v1/settings", nil, &set); code != 200 || set["timezone"] != "Europe/Paris" {
		t.Errorf("read settings on the full volume: %d %v", code, set)
	}
	if code := d.call("GET", "/healthz", nil, nil); code != 200 {
		t.Errorf("/healthz on the full volume: %d", code)
	}
	// Readiness says why writes fail (the watchdog does not: no restart).
	var ready struct {
		Ready  bool              `json:"ready"`
		Checks map[string]string `json:"checks"`
	}
	if code := d.call("GET", "/readyz", nil, &ready); code != 503 || ready.Ready || ready.Checks["sql_disk"] != "unavailable" || ready.Checks["sql"] != "ok" {
		t.Errorf("/readyz on the full volume: %d %+v, want 503 with sql_disk unavailable and sql ok", code, ready)
	}
	select {
	case err := <-d.exited:
		t.Fatalf("the daemon exited on the full volume: %v", err)
	default:
	}

	// Space returns: writes succeed again, without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := db.CheckDiskSpace(); err != nil {
		t.Errorf("CheckDiskSpace with room again: %v", err)
	}
	if code := d.call("GET", "/readyz", nil, &ready); code != 200 || ready.Checks["sql_disk"] != "ok" {
		t.Errorf("/readyz with room again: %d %+v", code, ready)
	}
	var after workflowJSON
	if code := d.call("POST", "/api/v1/workflows", big, &after); code != 201 {
		t.Fatalf("create a workflow with room again: %d", code)
	}
	wantNames = append(wantNames, "big")
	var queued instance
	if code := d.call("POST", "/api/v1/workflows/"+kept.ID+"/run", run, &queued); code != 202 {
		t.Fatalf("start a run with room again: %d", code)
	}
	waitUntil(t, "the run to end", 30*time.Second, func() bool {
		var inst instance
		d.call("GET", "/api/v1/instances/"+queued.ID, nil, &inst)
		return inst.Status != "" && inst.Status != "queued" && inst.Status != "running"
	})

	// A clean stop, then the file itself.
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no exit within 60 s of SIGTERM")
	}
	ctx := context.Background()
	var check string
	if err := db.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("integrity_check: %q %v", check, err)
	}
	var names string
	if err := db.QueryRowContext(ctx, "SELECT group_concat(name, ',') FROM (SELECT name FROM workflows ORDER BY created_at)").Scan(&names); err != nil ||
		names != strings.Join(wantNames, ",") {
		t.Errorf("workflows stored: %q %v; want %v", names, err, wantNames)
	}
	var runs int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM workflow_instances WHERE workflow_id = ?", kept.ID).Scan(&runs); err != nil || runs != 1 {
		t.Errorf("runs stored: %d %v; want the one started with room", runs, err)
	}
}
