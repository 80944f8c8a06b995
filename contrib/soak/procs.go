package main

// The processes the soak runs: Dovecot (through scripts/bench-dovecot.sh),
// `inboxd serve`, and what /proc says of the daemon's plugin children.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// imapPassword is the password scripts/bench-dovecot.sh gives every user.
const imapPassword = "pw"

func imapUser(i int) string { return "u" + strconv.Itoa(i) }

// freePort asks the kernel for a free loopback port. Another process may
// take it before it is used: callers that can tell retry.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("soak: find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// dovecot is the instance started by scripts/bench-dovecot.sh.
type dovecot struct {
	script, dir, conf, doveadm string
	port, pid                  int
}

// startDovecot starts a Dovecot with n users in dir. The script's notes
// (they name the password) go to a file, not to the terminal.
func startDovecot(ctx context.Context, script string, n int, dir string) (*dovecot, error) {
	doveadm, err := exec.LookPath("doveadm")
	if err != nil {
		return nil, fmt.Errorf("soak: doveadm not found (apt-get install -y dovecot-imapd): %w", err)
	}
	notes := dir + ".notes"
	var last error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		f, err := os.Create(notes)
		if err != nil {
			return nil, fmt.Errorf("soak: dovecot notes: %w", err)
		}
		cmd := exec.CommandContext(ctx, script, strconv.Itoa(n), strconv.Itoa(port), dir)
		cmd.Stderr = f
		out, err := cmd.Output()
		f.Close()
		if err == nil {
			pid, perr := strconv.Atoi(strings.TrimSpace(string(out)))
			if perr != nil {
				return nil, fmt.Errorf("soak: %s printed %q, not the master's PID", script, out)
			}
			return &dovecot{script: script, dir: dir, conf: filepath.Join(dir, "dovecot.conf"), doveadm: doveadm, port: port, pid: pid}, nil
		}
		msg, _ := os.ReadFile(notes)
		last = fmt.Errorf("soak: start dovecot (%s %d %d %s): %w\n%s", script, n, port, dir, err, tailText(string(msg), 2000))
		if !strings.Contains(string(msg), "another server answers") {
			break // only a lost port race is worth another try
		}
	}
	return nil, last
}

// kickedUser is a user name in doveadm kick's answer.
var kickedUser = regexp.MustCompile(`^u[0-9]+$`)

// kick cuts every IMAP connection of user. The imap processes are shared
// (50 connections each), and Dovecot 2.3 kicks a shared process only with
// -f, which ends the whole process: the other users it served are cut too.
// It returns every user whose connections were cut, as doveadm lists them.
func (d *dovecot) kick(ctx context.Context, user string) ([]string, error) {
	out, err := exec.CommandContext(ctx, d.doveadm, "-c", d.conf, "kick", "-f", user).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("soak: doveadm kick %s: %w: %s", user, err, tailText(string(out), 300))
	}
	var users []string
	for _, w := range strings.Fields(string(out)) {
		if kickedUser.MatchString(w) {
			users = append(users, w)
		}
	}
	return users, nil
}

func (d *dovecot) stop() error {
	out, err := exec.Command(d.script, "stop", d.dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("soak: stop dovecot: %w: %s", err, tailText(string(out), 500))
	}
	return nil
}

// daemon is one `inboxd serve` over a data directory, configured by
// environment alone (an empty configuration file keeps any
// /etc/inboxd/inboxd.toml out of it).
type daemon struct {
	bin, dataDir, cfgPath, logPath, base string
	env                                  []string
	cmd                                  *exec.Cmd
	done                                 chan struct{}
	started                              time.Time
}

func newDaemon(bin, dataDir string, pollInterval time.Duration) (*daemon, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("soak: data dir: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &daemon{
		bin: bin, dataDir: dataDir,
		cfgPath: filepath.Join(dataDir, "soak.toml"), logPath: filepath.Join(dataDir, "daemon.log"),
		base: fmt.Sprintf("http://127.0.0.1:%d", port),
	}
	if err := os.WriteFile(d.cfgPath, []byte("# inboxd soak: configured by INBOXD_* environment variables\n"), 0o600); err != nil {
		return nil, fmt.Errorf("soak: config file: %w", err)
	}
	d.env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dataDir, "TMPDIR=" + os.TempDir(),
		"INBOXD_DATA_DIR=" + dataDir,
		fmt.Sprintf("INBOXD_LISTEN=127.0.0.1:%d", port),
		"INBOXD_AUTH_MODE=apikey",
		"INBOXD_POLL_INTERVAL=" + pollInterval.String(),
		"INBOXD_POLL_IDLE=true",
		"INBOXD_LOG_FORMAT=json",
		"INBOXD_LOG_LEVEL=info",
	}
	return d, nil
}

func (d *daemon) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.Env = d.env
	return cmd
}

// addAdmin creates the admin with `inboxd user add --admin` and returns its
// API key (never printed).
func (d *daemon) addAdmin(ctx context.Context) (string, error) {
	cmd := d.command(ctx, "user", "add", "--config", d.cfgPath, "--email", "soak-admin@soak.invalid", "--admin")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("soak: inboxd user add --admin: %w: %s", err, tailText(stderr.String(), 1000))
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if key, ok := strings.CutPrefix(sc.Text(), "api key: "); ok {
			return strings.TrimSpace(key), nil
		}
	}
	return "", errors.New("soak: inboxd user add --admin printed no api key")
}

// start runs `inboxd serve` with its output in daemon.log and waits until
// /readyz answers 200.
func (d *daemon) start(ctx context.Context) error {
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("soak: daemon log: %w", err)
	}
	d.cmd = exec.Command(d.bin, "serve", "--config", d.cfgPath)
	d.cmd.Env = d.env
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Should the soak die, the daemon stops too (and stops its plugins).
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	err = d.cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("soak: start inboxd serve: %w", err)
	}
	d.started = time.Now()
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			return fmt.Errorf("soak: inboxd serve exited at start (%s):\n%s", d.cmd.ProcessState, d.logTail(3000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := http.Get(d.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return fmt.Errorf("soak: inboxd serve not ready after 60 s:\n%s", d.logTail(3000))
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) running() bool {
	if d.cmd == nil || d.done == nil {
		return false
	}
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to grace for the exit; past it the
// daemon is killed and an error returned. It returns the exit code.
func (d *daemon) stop(grace time.Duration) (int, error) {
	if !d.running() {
		return d.cmd.ProcessState.ExitCode(), nil
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return -1, fmt.Errorf("soak: SIGTERM the daemon: %w", err)
	}
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode(), nil
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
		<-d.done
		return -1, fmt.Errorf("soak: the daemon did not exit within %s of SIGTERM: killed", grace)
	}
}

func (d *daemon) logTail(n int) string {
	b, _ := os.ReadFile(d.logPath)
	return tailText(string(b), n)
}

func tailText(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// proc is what /proc says of one process.
type proc struct {
	pid, ppid int
	start     uint64 // clock ticks after boot
	args      []string
}

// readProc reads /proc/PID/stat and cmdline.
func readProc(pid int) (proc, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return proc{}, err
	}
	// The command name is in parentheses and may hold anything: the
	// fields that matter come after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return proc{}, fmt.Errorf("soak: /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return proc{}, fmt.Errorf("soak: /proc/%d/stat: %d fields", pid, len(f))
	}
	p := proc{pid: pid}
	p.ppid, _ = strconv.Atoi(f[1])                // field 4
	p.start, _ = strconv.ParseUint(f[19], 10, 64) // field 22
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return proc{}, err
	}
	p.args = strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	return p, nil
}

// plugin returns NAME when the process is `inboxd plugin serve NAME`.
func (p proc) plugin() (string, bool) {
	for i := 0; i+2 < len(p.args); i++ {
		if p.args[i] == "plugin" && p.args[i+1] == "serve" {
			return p.args[i+2], true
		}
	}
	return "", false
}

// processes lists every process that match accepts.
func processes(match func(proc) bool) []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProc(pid)
		if err == nil && match(p) {
			out = append(out, p)
		}
	}
	return out
}

// pluginChildren lists the plugin processes the daemon started.
func pluginChildren(daemonPID int) []proc {
	return processes(func(p proc) bool {
		_, ok := p.plugin()
		return ok && p.ppid == daemonPID
	})
}

// strayPlugins lists plugin processes of this soak's daemon that are still
// there after it exited: plugin processes whose environment has the
// daemon's HOME (the soak's data directory; the daemon passes HOME on to
// its plugins), so another inboxd on the machine is never counted.
func strayPlugins(dataDir string) []proc {
	home := []byte("HOME=" + dataDir + "\x00")
	return processes(func(p proc) bool {
		if _, ok := p.plugin(); !ok {
			return false
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.pid))
		return err == nil && bytes.Contains(append([]byte("\x00"), env...), append([]byte("\x00"), home...))
	})
}

// loadAvg is the 1, 5 and 15 minute load averages of /proc/loadavg.
func loadAvg() string {
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			return strings.Join(f[:3], " ")
		}
	}
	return "unknown"
}
