package testsvc

import (
	"bufio"
	"bytes"
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

	"github.com/emersion/go-imap/v2/imapclient"
)

// DovecotServer is a throwaway Dovecot IMAP server on a loopback port, with
// plaintext LOGIN (ssl = no), a passwd-file of test users and Maildir
// storage. Every user has INBOX and the special-use folders Drafts, Sent,
// Trash and Archive (created on first login).
type DovecotServer struct {
	Host       string // 127.0.0.1
	Port       int
	ConfigPath string // for `doveadm -c ConfigPath ...`
	Dir        string // the instance's temp dir (config, logs, mail)
	LogPath    string // Dovecot's log file

	passwdPath string
	mu         sync.Mutex
	users      map[string]string
}

// Addr is "Host:Port".
func (s *DovecotServer) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// dovecotStartTimeout bounds the wait for the first greeting.
const dovecotStartTimeout = 20 * time.Second

// Dovecot starts a standalone Dovecot for the test with the given users
// (name -> plaintext password) and stops it, and removes its files, in
// t.Cleanup. Several instances can run at once. It needs the dovecot-imapd
// package and root (mail processes run as the dovecot user); without them the
// test is skipped, or fails when Required.
func Dovecot(t testing.TB, users map[string]string) *DovecotServer {
	t.Helper()
	bin := NeedBinary(t, "dovecot", "/usr/sbin/dovecot")
	if os.Geteuid() != 0 {
		if Required() {
			t.Fatalf("testsvc: a standalone Dovecot needs root here")
		}
		t.Skip("testsvc: a standalone Dovecot needs root here")
	}
	uid, gid := dovecotIDs(t)

	// Not t.TempDir: its parents are mode 0700, and Dovecot's mail processes
	// (uid dovecot) must reach the mail root. A short path also keeps the
	// unix sockets under base_dir well inside the 108-byte limit.
	dir, err := os.MkdirTemp("", "inboxd-dovecot-")
	if err != nil {
		t.Fatalf("testsvc: dovecot temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mailRoot := filepath.Join(dir, "mail")
	for _, d := range []string{dir, mailRoot, filepath.Join(dir, "state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("testsvc: dovecot dir: %v", err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("testsvc: dovecot dir: %v", err)
		}
	}
	if err := os.Chown(mailRoot, uid, gid); err != nil {
		t.Fatalf("testsvc: chown dovecot mail root: %v", err)
	}

	s := &DovecotServer{
		Host:       "127.0.0.1",
		ConfigPath: filepath.Join(dir, "dovecot.conf"),
		Dir:        dir,
		LogPath:    filepath.Join(dir, "dovecot.log"),
		passwdPath: filepath.Join(dir, "passwd"),
		users:      make(map[string]string, len(users)),
	}
	for u, p := range users {
		checkDovecotUser(t, u, p)
		s.users[u] = p
	}
	if err := s.writePasswd(); err != nil {
		t.Fatalf("testsvc: dovecot passwd file: %v", err)
	}

	instance := dovecotInstanceName()
	start := time.Now()
	// FreePort can race with another process taking the port: retry on
	// "address in use".
	for attempt := 1; ; attempt++ {
		s.Port = FreePort(t)
		conf := dovecotConfig(instance, dir, mailRoot, s.passwdPath, s.LogPath, s.Port)
		if err := os.WriteFile(s.ConfigPath, []byte(conf), 0o644); err != nil {
			t.Fatalf("testsvc: dovecot config: %v", err)
		}
		startErr := s.start(t, bin, instance)
		if startErr == nil {
			break
		}
		if attempt < 3 && strings.Contains(startErr.Error(), "in use") {
			continue
		}
		t.Fatalf("testsvc: dovecot did not start: %v", startErr)
	}
	t.Logf("testsvc: dovecot %s on %s ready in %v", instance, s.Addr(), time.Since(start).Round(time.Millisecond))
	return s
}

// start runs the master in the foreground as a child of the test process
// (so it is stopped by PID) and waits for an IMAP greeting on the port.
// Output goes to a file: a pipe would be inherited by Dovecot's children.
func (s *DovecotServer) start(t testing.TB, bin, instance string) error {
	t.Helper()
	outPath := filepath.Join(s.Dir, "dovecot.out")
	out, err := os.OpenFile(outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()

	cmd := exec.Command(bin, "-F", "-c", s.ConfigPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		if cmd.Process.Signal(syscall.SIGTERM) != nil {
			return // already gone
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}

	deadline := time.Now().Add(dovecotStartTimeout)
	for {
		if greeted(s.Addr(), instance) {
			t.Cleanup(stop)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("dovecot exited (%v): %s", waitErr, s.diagnostics(outPath))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("no IMAP greeting on %s after %v: %s", s.Addr(), dovecotStartTimeout, s.diagnostics(outPath))
		}
	}
}

// greeted reports whether addr answers with this instance's IMAP greeting.
func greeted(addr, instance string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "* OK") && strings.Contains(line, instance)
}

func (s *DovecotServer) diagnostics(outPath string) string {
	var b strings.Builder
	for _, p := range []string{outPath, s.LogPath} {
		data, err := os.ReadFile(p)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&b, "\n--- %s ---\n%s", filepath.Base(p), data)
	}
	if b.Len() == 0 {
		return "(no output)"
	}
	return b.String()
}

func dovecotConfig(instance, dir, mailRoot, passwd, logPath string, port int) string {
	return fmt.Sprintf(`# throwaway Dovecot written by internal/testsvc
instance_name = %[1]s
# unique, so that start-up never mistakes another server on the port for this one
login_greeting = Dovecot ready (%[1]s).
base_dir = %[2]s/run
state_dir = %[2]s/state
log_path = %[5]s
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# tests assert on rejected logins: do not wait the default 2 s before answering
auth_failure_delay = 0
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[4]s
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=%[3]s/%%u
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[6]d
  }
  inet_listener imaps {
    port = 0
  }
}

protocol imap {
  mail_max_userip_connections = 100
}

# no per-IP auth penalty (2, 4, 8 .. 15 s after failed logins from 127.0.0.1)
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \Trash
    auto = subscribe
  }
  mailbox Archive {
    special_use = \Archive
    auto = subscribe
  }
}
`, instance, dir, mailRoot, passwd, logPath, port)
}

func dovecotIDs(t testing.TB) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("dovecot")
	if err != nil {
		t.Fatalf("testsvc: dovecot user: %v (is dovecot-imapd installed?)", err)
	}
	g, err := user.LookupGroup("dovecot")
	if err != nil {
		t.Fatalf("testsvc: dovecot group: %v", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(g.Gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("testsvc: dovecot uid/gid %q/%q", u.Uid, g.Gid)
	}
	return uid, gid
}

func checkDovecotUser(t testing.TB, name, password string) {
	t.Helper()
	if name == "" || strings.ContainsAny(name, ":/\\\r\n\t %") || name == "." || name == ".." {
		t.Fatalf("testsvc: dovecot user name %q is not usable in a passwd-file and home path", name)
	}
	if strings.ContainsAny(password, ":\r\n") {
		t.Fatalf("testsvc: dovecot password for %q must not contain ':' or line breaks", name)
	}
}

// writePasswd rewrites the passwd-file atomically; Dovecot notices the
// change on its next lookup. Callers hold s.mu or own s exclusively.
func (s *DovecotServer) writePasswd() error {
	names := make([]string, 0, len(s.users))
	for u := range s.users {
		names = append(names, u)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, u := range names {
		fmt.Fprintf(&b, "%s:{PLAIN}%s\n", u, s.users[u])
	}
	tmp := s.passwdPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, s.passwdPath)
}

// AddUser adds (or changes the password of) a user on the running server
// and returns once Dovecot accepts the new credentials (Dovecot re-reads its
// passwd-file at most once a second).
func (s *DovecotServer) AddUser(t testing.TB, name, password string) {
	t.Helper()
	checkDovecotUser(t, name, password)
	s.mu.Lock()
	s.users[name] = password
	err := s.writePasswd()
	s.mu.Unlock()
	if err != nil {
		t.Fatalf("testsvc: dovecot add user: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := s.login(name, password)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testsvc: dovecot does not accept new user %q: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *DovecotServer) login(name, password string) error {
	c, err := imapclient.DialInsecure(s.Addr(), &imapclient.Options{Dialer: &net.Dialer{Timeout: 5 * time.Second}})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Login(name, password).Wait(); err != nil {
		return err
	}
	return c.Logout().Wait()
}

// Password returns a user's password as configured.
func (s *DovecotServer) Password(t testing.TB, name string) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.users[name]
	if !ok {
		t.Fatalf("testsvc: dovecot has no user %q", name)
	}
	return p
}

// Deliver appends rawMessage (an RFC 5322 message, CRLF line ends preferred)
// to the user's INBOX through IMAP APPEND as that user, and returns its UID.
func (s *DovecotServer) Deliver(t testing.TB, name string, rawMessage []byte) uint32 {
	t.Helper()
	uid, err := s.deliver(name, s.Password(t, name), rawMessage)
	if err != nil {
		t.Fatalf("testsvc: dovecot deliver to %s: %v", name, err)
	}
	return uid
}

func (s *DovecotServer) deliver(name, password string, raw []byte) (uint32, error) {
	c, err := imapclient.DialInsecure(s.Addr(), &imapclient.Options{Dialer: &net.Dialer{Timeout: 10 * time.Second}})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Login(name, password).Wait(); err != nil {
		return 0, fmt.Errorf("login: %w", err)
	}
	cmd := c.Append("INBOX", int64(len(raw)), nil)
	if _, err := cmd.Write(raw); err != nil {
		cmd.Close()
		return 0, fmt.Errorf("append: %w", err)
	}
	if err := cmd.Close(); err != nil {
		return 0, fmt.Errorf("append: %w", err)
	}
	data, err := cmd.Wait()
	if err != nil {
		return 0, fmt.Errorf("append: %w", err)
	}
	if err := c.Logout().Wait(); err != nil {
		return 0, fmt.Errorf("logout: %w", err)
	}
	return uint32(data.UID), nil
}

// Doveadm runs `doveadm -c ConfigPath args...` against this instance (e.g.
// "mailbox", "update", "-u", "alice", "--uid-validity", "7", "INBOX") and
// returns its output; a failure fails the test.
func (s *DovecotServer) Doveadm(t testing.TB, args ...string) string {
	t.Helper()
	bin := NeedBinary(t, "doveadm", "/usr/bin/doveadm")
	cmd := exec.Command(bin, append([]string{"-c", s.ConfigPath}, args...)...)
	out, err := cmd.CombinedOutput() // doveadm exits; it leaves no daemon holding the pipe
	if err != nil {
		t.Fatalf("testsvc: doveadm %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// dovecotInstanceName is unique per instance, so several can run at once.
func dovecotInstanceName() string {
	b := make([]byte, 6)
	rand.Read(b) // crypto/rand does not fail on Linux
	return "inboxd-test-" + hex.EncodeToString(b)
}
