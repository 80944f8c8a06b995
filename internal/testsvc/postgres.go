package testsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The PostgreSQL cluster is the one piece of package-level mutable state:
// starting a cluster costs about a second, so one is started lazily per test
// binary and shared by every Postgres call in it; Main stops it.
var cluster struct {
	mu          sync.Mutex
	mainRunning bool // Main is running the tests, so the cluster will be stopped
	started     bool // a start was attempted; pg and err hold the outcome
	pg          *pgCluster
	err         error
}

// Main runs the package's tests, then stops the servers this package started
// for them and exits with the tests' status. A test package that calls
// Postgres must use it as its TestMain (any package using testsvc may):
//
//	func TestMain(m *testing.M) { testsvc.Main(m) }
//
// The shared PostgreSQL cluster is stopped here and its files removed;
// Redis servers are already stopped by their test's Cleanup. Should the test
// binary die without reaching this (a -timeout panic, a kill), the servers
// die with it (parent-death signal) and the next cluster start removes the
// stale cluster directory.
func Main(m *testing.M) {
	cluster.mu.Lock()
	cluster.mainRunning = true
	cluster.mu.Unlock()

	code := m.Run()

	cluster.mu.Lock()
	pg := cluster.pg
	cluster.pg, cluster.mainRunning = nil, false
	cluster.mu.Unlock()
	if pg != nil {
		if err := pg.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testsvc: stop postgres: %v\n", err)
		}
	}
	os.Exit(code)
}

// Postgres returns the URL of a fresh, empty database (CREATE DATABASE per
// call) for the test: "postgres://postgres@127.0.0.1:PORT/NAME?sslmode=disable".
// The role is a superuser and authentication is trust, so the test may
// create schemas, roles or more databases. The database is dropped when the
// test ends.
//
// All calls in one test binary share one PostgreSQL cluster, started on the
// first call in a temporary directory, listening on a free loopback port
// (and a unix socket in that directory), with fsync off. Its default
// collation is ICU "en-US" where the server supports ICU, like a typical
// production database, so that collation-dependent queries are exercised.
// The package's TestMain must be Main, which stops the cluster; Postgres
// fails the test otherwise.
//
// As root, the cluster runs as the "postgres" system user (PostgreSQL
// refuses root). A missing PostgreSQL installation skips the test, or fails
// it under CI (see Required).
func Postgres(t testing.TB) string {
	t.Helper()
	bindir := pgBinDir()
	NeedBinary(t, filepath.Join(bindir, "initdb"))
	NeedBinary(t, filepath.Join(bindir, "postgres"))

	cluster.mu.Lock()
	if !cluster.mainRunning {
		cluster.mu.Unlock()
		t.Fatalf("testsvc: Postgres needs `func TestMain(m *testing.M) { testsvc.Main(m) }` in the test package, to stop the cluster")
	}
	if !cluster.started {
		cluster.started = true
		cluster.pg, cluster.err = startPostgres(bindir)
	}
	pg, err := cluster.pg, cluster.err
	cluster.mu.Unlock()
	if err != nil {
		t.Fatalf("testsvc: start postgres: %v", err)
	}

	name := "test_" + pgRandomName(8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pg.exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testsvc: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pg.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("testsvc: drop database %s: %v", name, err)
		}
	})
	return pg.url(name)
}

// pgCluster is a running postmaster and its directory.
type pgCluster struct {
	dir  string // holds data/, the unix socket and postgres.log
	port int
	proc *serverProc
}

func (c *pgCluster) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// exec runs one statement in the maintenance database "postgres".
func (c *pgCluster) exec(ctx context.Context, stmt string) error {
	conn, err := pgx.Connect(ctx, c.url("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, stmt)
	return err
}

// stop shuts the postmaster down (fast mode: SIGINT) and removes its files.
func (c *pgCluster) stop() error {
	err := c.proc.stop(syscall.SIGINT, 10*time.Second)
	if rmErr := os.RemoveAll(c.dir); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// pgBinDir finds the directory of initdb and postgres: the newest
// /usr/lib/postgresql/N/bin (Debian keeps them off PATH), else PATH's.
func pgBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return "/usr/lib/postgresql/bin" // absent: NeedBinary reports it
}

func pgMajor(bindir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(bindir)))
	return n
}

func startPostgres(bindir string) (*pgCluster, error) {
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres system user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	dir, err := clusterDir(cred)
	if err != nil {
		return nil, err
	}
	c, err := initAndStart(bindir, dir, cred)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// clusterDir makes the cluster's directory, owned by the user the server
// runs as, under a temp dir that user can reach.
func clusterDir(cred *syscall.Credential) (string, error) {
	parent := os.TempDir()
	if cred != nil && !othersCanEnter(parent) {
		parent = "/tmp" // e.g. TMPDIR under /root: the postgres user cannot get there
	}
	removeStaleClusters(parent)
	dir, err := os.MkdirTemp(parent, "inboxd-pg-")
	if err != nil {
		return "", fmt.Errorf("cluster dir: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			_ = os.RemoveAll(dir)
			return "", fmt.Errorf("cluster dir: %w", err)
		}
	}
	return dir, nil
}

// removeStaleClusters removes the directories of clusters whose test binary
// died without running Main (a test timeout, a kill): the postmaster died
// with it (parent-death signal) but its files stayed. A directory is stale
// when it is over a minute old and its postmaster.pid names no live process.
func removeStaleClusters(parent string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, "inboxd-pg-*"))
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err != nil || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(d, "data", "postmaster.pid")); err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH {
				continue // running (or not ours to judge)
			}
		}
		_ = os.RemoveAll(d)
	}
}

// othersCanEnter reports whether every directory from dir up to / is
// searchable by other users.
func othersCanEnter(dir string) bool {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == "/" {
			return true
		}
	}
}

func initAndStart(bindir, dir string, cred *syscall.Credential) (*pgCluster, error) {
	data := filepath.Join(dir, "data")
	base := []string{"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"}
	// ICU en-US sorts like a production en_US database (not bytewise); fall
	// back to the C locale on a server built without ICU.
	out, err := runAs(bindir, "initdb", dir, cred, append(base, "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US")...)
	if err != nil {
		_ = os.RemoveAll(data)
		if out2, err2 := runAs(bindir, "initdb", dir, cred, append(base, "--locale=C")...); err2 != nil {
			return nil, fmt.Errorf("initdb: %v\n%s\n(with ICU: %v\n%s)", err2, out2, err, out)
		}
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // the free port may be taken before postgres binds it
		port, err := pgFreePort()
		if err != nil {
			return nil, err
		}
		c, err := startPostmaster(bindir, dir, port, cred)
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// runAs runs a short PostgreSQL tool to completion and returns its output.
func runAs(bindir, tool, dir string, cred *syscall.Credential, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(bindir, tool), args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	return cmd.CombinedOutput()
}

func startPostmaster(bindir, dir string, port int, cred *syscall.Credential) (*pgCluster, error) {
	logPath := filepath.Join(dir, "postgres-"+strconv.Itoa(port)+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("postgres log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor
	cmd := exec.Command(filepath.Join(bindir, "postgres"),
		"-D", filepath.Join(dir, "data"),
		"-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+dir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=300",
		"-c", "shared_buffers=64MB",
		"-c", "log_min_messages=warning",
	)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	p, err := startServerProc(cmd, cred)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	c := &pgCluster{dir: dir, port: port, proc: p}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := c.exec(ctx, "SELECT 1")
		cancel()
		if err == nil {
			return c, nil
		}
		if p.exited() {
			return nil, fmt.Errorf("postgres exited: %v%s", p.waitErr, serverLogTail(logPath))
		}
		if time.Now().After(deadline) {
			_ = p.stop(syscall.SIGQUIT, 5*time.Second)
			return nil, fmt.Errorf("postgres not ready within 60s: %v%s", err, serverLogTail(logPath))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pgFreePort is FreePort without a testing.TB, for the shared cluster.
func pgFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func pgRandomName(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand never fails on Linux
	return hex.EncodeToString(b)
}
