package cli

// inboxd bench poll: a load tool for the inbox poller. It runs the real
// poller (daemon/poller with IMAPInbox over a mail.Pool) in this process,
// over real stores (SQLite and the embedded KV) in a temporary directory,
// against an IMAP server in another process: go-imap's in-memory server,
// re-executed as the hidden `inboxd bench imapserver`, or an external server
// such as the Dovecot of scripts/bench-dovecot.sh. It delivers mail at a
// given rate through a connection pool of its own and reports detection
// latency (delivery -> instance queued), checks per second, CPU and memory
// per tenant.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/inboxd/inboxd/daemon/config"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/poller"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
)

const benchUsage = `bench poll [--users N] [--rate R] [--duration D] [--interval I] [--idle] [--imap-addr HOST:PORT] [--json] ...
       inboxd bench imapserver --listen ADDR --users N   (internal: the in-memory IMAP server process)`

// benchJitter is the poller's default jitter (poller.Config.Jitter): a
// tenant's mean period is Interval*(1+benchJitter/2).
const benchJitter = 0.1

// benchSubjectFormat carries the delivery sequence number and the delivery
// time (Unix nanoseconds, taken just before the APPEND) in the subject: the
// poller hands the subject to CreateInstance (TriggerInput.Email.Subject),
// whereas its Email.MessageID is the contextual id, not the header.
const benchSubjectFormat = "inboxd-bench seq=%d sent=%d"

// runBench dispatches the bench subcommands.
func runBench(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 {
		return usagef("missing subcommand\nUsage: inboxd %s", benchUsage)
	}
	switch args[0] {
	case "poll":
		return runBenchPoll(ctx, env, args[1:], nil)
	case "imapserver":
		return runBenchIMAPServer(ctx, env, args[1:])
	default:
		return usagef("unknown subcommand %q\nUsage: inboxd %s", args[0], benchUsage)
	}
}

// serverCommand builds the command that runs `inboxd ARGS...` for the
// in-memory IMAP server process. Nil re-executes this executable.
type serverCommand func(args []string) (*exec.Cmd, error)

func selfCommand(args []string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: find own executable: %w", err)
	}
	return exec.Command(exe, args...), nil
}

// benchPollOptions are the flags of bench poll.
type benchPollOptions struct {
	users        int
	rate         float64
	duration     time.Duration
	interval     time.Duration
	idle         bool
	workers      int
	perHost      int
	poolPerUser  int
	deliverConns int
	poolMaxIdle  time.Duration
	imapAddr     string
	password     string
	prefix       string
	serverPID    int
	serverNotice time.Duration
	drain        time.Duration
	setupTimeout time.Duration
	jsonOut      bool
	cpuProfile   string
	memProfile   string
	logLevel     string
}

func parseBenchPoll(env Env, args []string) (*benchPollOptions, error) {
	o := &benchPollOptions{}
	fs := flag.NewFlagSet("inboxd bench poll", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.IntVar(&o.users, "users", 100, "tenants (IMAP users) to poll")
	fs.Float64Var(&o.rate, "rate", 10, "mails per second delivered, over all users")
	fs.DurationVar(&o.duration, "duration", 60*time.Second, "measurement window (delivery time)")
	fs.DurationVar(&o.interval, "interval", 60*time.Second, "poll interval of each user")
	fs.BoolVar(&o.idle, "idle", false, "IMAP IDLE mode (one IDLE connection per user)")
	fs.IntVar(&o.workers, "workers", max(8, 16*runtime.NumCPU()), "polls in flight at once (poller Workers; the poll.workers default)")
	fs.IntVar(&o.perHost, "per-host", 0, "polls in flight against one IMAP host (0: --users)")
	fs.IntVar(&o.poolPerUser, "pool-per-user", mail.DefaultPoolPerUser, "pooled IMAP connections per user")
	fs.DurationVar(&o.poolMaxIdle, "pool-max-idle", 0, "close pooled IMAP connections idle this long (0: the mail.Pool default, as serve runs it)")
	fs.IntVar(&o.deliverConns, "deliver-conns", 8, "IMAP connections (and goroutines) of the delivering client")
	fs.StringVar(&o.imapAddr, "imap-addr", "", "external IMAP server HOST:PORT (plain text, e.g. scripts/bench-dovecot.sh); default: an in-memory server in a child process")
	fs.StringVar(&o.password, "imap-password", "pw", "password of every IMAP user")
	fs.StringVar(&o.prefix, "imap-user-prefix", "u", "IMAP users are PREFIX0 .. PREFIX{N-1}")
	fs.IntVar(&o.serverPID, "server-pid", 0, "PID of the external server's master process: its CPU (with its descendants') is reported")
	fs.DurationVar(&o.serverNotice, "server-notice", -1, "the server's own IDLE notice delay, for the IDLE goal (default 500ms with --imap-addr, else 0)")
	fs.DurationVar(&o.drain, "drain", 0, "after the window, how long to wait for undetected mail (0: interval*1.1+5s)")
	fs.DurationVar(&o.setupTimeout, "setup-timeout", 10*time.Minute, "bound on baselining every user (and arming IDLE)")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as JSON")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the measurement window to FILE")
	fs.StringVar(&o.memProfile, "memprofile", "", "write a heap profile taken after the baseline to FILE (and its goroutines to FILE.goroutines)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level of the poller and the bench (debug, info, warn, error)")
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: inboxd %s\n\nFlags of bench poll:\n", benchUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, usagef("bench poll takes no arguments, got %q", fs.Args())
	case o.users < 1:
		return nil, usagef("--users must be at least 1")
	case o.rate <= 0:
		return nil, usagef("--rate must be positive")
	case o.duration <= 0 || o.interval <= 0:
		return nil, usagef("--duration and --interval must be positive")
	case o.workers < 1 || o.poolPerUser < 1 || o.deliverConns < 1:
		return nil, usagef("--workers, --pool-per-user and --deliver-conns must be at least 1")
	case strings.ContainsAny(o.prefix, " :\r\n") || o.prefix == "":
		return nil, usagef("--imap-user-prefix must be a non-empty name without spaces or colons")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, usagef("--log-level: %v", err)
	}
	if o.perHost <= 0 {
		o.perHost = o.users
	}
	if o.serverNotice < 0 {
		o.serverNotice = 0
		if o.imapAddr != "" {
			o.serverNotice = 500 * time.Millisecond // Dovecot's fixed IDLE batching delay
		}
	}
	if o.drain <= 0 {
		o.drain = time.Duration(float64(o.interval)*(1+benchJitter)) + 5*time.Second
	}
	return o, nil
}

// runBenchPoll parses the flags, runs the benchmark and prints the report.
// spawn starts the in-memory server process (nil: re-execute inboxd).
func runBenchPoll(ctx context.Context, env Env, args []string, spawn serverCommand) error {
	o, err := parseBenchPoll(env, args)
	if err != nil {
		return err
	}
	if spawn == nil {
		spawn = selfCommand
	}
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(o.logLevel)) // checked by parseBenchPoll
	// The bench's log and the server process's stderr share one writer.
	stderr := &lockedWriter{w: env.Stderr}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	rep, err := benchPoll(ctx, o, spawn, stderr, logger)
	if err != nil {
		return err
	}
	if o.jsonOut {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("bench: write report: %w", err)
		}
		return nil
	}
	return rep.writeText(env.Stdout)
}

// lockedWriter serialises writes from several goroutines (the logger and
// the copier of a child's stderr) to one writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// benchReport is the outcome of one run; --json prints it as it is.
type benchReport struct {
	Mode               string      `json:"mode"` // poll or idle
	Users              int         `json:"users"`
	IntervalSeconds    float64     `json:"interval_seconds"`
	Workers            int         `json:"workers"`
	PerHost            int         `json:"per_host"`
	PoolPerUser        int         `json:"pool_per_user"`
	Server             string      `json:"server"` // "memory" or the external address
	GoMaxProcs         int         `json:"gomaxprocs"`
	LoadAvgStart       string      `json:"loadavg_start"` // /proc/loadavg
	LoadAvgEnd         string      `json:"loadavg_end"`
	SetupSeconds       float64     `json:"setup_seconds"`    // users, settings, workflows
	BaselineSeconds    float64     `json:"baseline_seconds"` // poller start -> every tenant active (and IDLE armed)
	WindowSeconds      float64     `json:"window_seconds"`
	Delivery           benchDeliv  `json:"delivery"`
	Detection          benchDetec  `json:"detection"`
	Checks             benchCheck  `json:"checks"`
	CPU                benchCPU    `json:"cpu"`
	Memory             benchMem    `json:"memory"`
	Goals              []benchGoal `json:"goals"`
	ServerNoticeMillis float64     `json:"server_notice_ms"`
}

type benchDeliv struct {
	Delivered   int     `json:"delivered"`
	Failed      int     `json:"failed"`
	PerSecond   float64 `json:"per_second"`
	AppendP50Ms float64 `json:"append_p50_ms"`
	AppendP99Ms float64 `json:"append_p99_ms"`
}

type benchDetec struct {
	DetectedOnce int     `json:"detected_once"` // delivered mails with exactly one instance
	Missing      int     `json:"missing"`       // delivered, no instance by the end of the drain
	Duplicates   int     `json:"duplicates"`    // extra instances for one mail
	Misrouted    int     `json:"misrouted"`     // instance created for another user than the recipient
	Unexpected   int     `json:"unexpected"`    // instances for mail the bench did not deliver (or whose APPEND failed)
	P50Ms        float64 `json:"p50_ms"`
	P90Ms        float64 `json:"p90_ms"`
	P99Ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	MeanMs       float64 `json:"mean_ms"`
	// SlowestMs are the five longest detections, slowest first: the tail.
	SlowestMs []float64 `json:"slowest_ms"`
}

type benchCheck struct {
	Count            int64   `json:"count"` // INBOX checks in the window (a STATUS, or a NOOP on the kept selection)
	PerSecond        float64 `json:"per_second"`
	AskedPerSecond   float64 `json:"asked_per_second"` // users / mean period
	PollErrors       int64   `json:"poll_errors"`      // inboxd_polls_total{result!="ok"} in the window
	PollLagMeanMs    float64 `json:"poll_lag_mean_ms"`
	PollDurationMean float64 `json:"poll_duration_mean_ms"`
	IdleRestarts     int64   `json:"idle_restarts"` // Watch calls that ended with an error in the window
}

type benchCPU struct {
	Seconds          float64 `json:"seconds"` // this process (the daemon side), user+system
	Cores            float64 `json:"cores"`
	MicrosPerCheck   float64 `json:"us_per_check"`
	ServerSeconds    float64 `json:"server_seconds"` // -1: unknown
	MachineBusyCores float64 `json:"machine_busy_cores"`
	MachineCores     int     `json:"machine_cores"`
}

type benchMem struct {
	RSSBeforeKiB      int64   `json:"rss_before_kib"`
	RSSAfterKiB       int64   `json:"rss_after_kib"`
	RSSPerTenantKiB   float64 `json:"rss_per_tenant_kib"`
	HeapPerTenantKiB  float64 `json:"heap_per_tenant_kib"`
	StackPerTenantKiB float64 `json:"stack_per_tenant_kib"`
	// GoRuntimePerTenantKiB is what the Go runtime holds (heap spans with
	// their free space, stacks, GC metadata); OutsideGoPerTenantKiB is the
	// rest of the RSS growth: SQLite's own allocator (modernc), code pages
	// touched for the first time, and rounding.
	GoRuntimePerTenantKiB float64 `json:"go_runtime_per_tenant_kib"`
	OutsideGoPerTenantKiB float64 `json:"outside_go_per_tenant_kib"`
	// SQLConnsBefore and SQLConnsAfter are the SQLite connections open at
	// the two snapshots: each keeps a page cache of up to 2 MiB outside Go.
	SQLConnsBefore        int     `json:"sql_conns_before"`
	SQLConnsAfter         int     `json:"sql_conns_after"`
	GoroutinesPerTenant   float64 `json:"goroutines_per_tenant"`
	SocketsPerTenant      float64 `json:"sockets_per_tenant"`
	RSSEndPerTenantKiB    float64 `json:"rss_end_per_tenant_kib"` // at the window's end, no forced GC
	RSSPeakKiB            int64   `json:"rss_peak_kib"`           // VmHWM
	HeapProfileAfterSetup string  `json:"heap_profile,omitempty"`
}

type benchGoal struct {
	Goal string `json:"goal"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// benchPoll runs one measurement.
func benchPoll(ctx context.Context, o *benchPollOptions, spawn serverCommand, stderr io.Writer, logger *slog.Logger) (*benchReport, error) {
	rep := &benchReport{
		Mode: "poll", Users: o.users, IntervalSeconds: o.interval.Seconds(), Workers: o.workers, PerHost: o.perHost,
		PoolPerUser: o.poolPerUser, GoMaxProcs: runtime.GOMAXPROCS(0), ServerNoticeMillis: ms(o.serverNotice),
	}
	if o.idle {
		rep.Mode = "idle"
	}
	rep.Checks.AskedPerSecond = float64(o.users) / (o.interval.Seconds() * (1 + benchJitter/2))

	dir, err := os.MkdirTemp("", "inboxd-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	// The IMAP server.
	addr, serverPID := o.imapAddr, o.serverPID
	rep.Server = addr
	if addr == "" {
		srv, err := startMemServer(ctx, o, spawn, stderr, logger)
		if err != nil {
			return nil, err
		}
		defer srv.stop()
		addr, serverPID = srv.addr, srv.pid
		rep.Server = "memory"
	}
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("bench: --imap-addr %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("bench: --imap-addr %q: bad port: %w", addr, err)
	}

	// The stores, in the temp dir only: the configuration is a file of ours
	// and the environment is not consulted, so INBOXD_DATABASE_URL and the
	// like can never point the bench at real data.
	cfgPath := filepath.Join(dir, "inboxd.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf("data_dir = %q\n", filepath.Join(dir, "data"))), 0o600); err != nil {
		return nil, fmt.Errorf("bench: write config: %w", err)
	}
	cfg, err := config.Load(cfgPath, func(string) string { return "" })
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	st, err := openStores(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer st.Close()
	settingsStore := settings.NewStore(st.kv, st.box)
	workflows := workflow.NewStore(st.sql)

	setupStart := time.Now()
	tenants, err := createBenchTenants(ctx, o, st.users, settingsStore, workflows, host, port)
	if err != nil {
		return nil, err
	}
	rep.SetupSeconds = time.Since(setupStart).Seconds()
	logger.Info("bench: tenants created", "users", o.users, "seconds", rep.SetupSeconds)

	// The poller, as serve wires it, with caps that fit the bench.
	reg := prometheus.NewRegistry()
	pool, err := mail.NewPool(mail.PoolOptions{
		PerUser: o.poolPerUser, Global: o.users * o.poolPerUser, MaxIdle: o.poolMaxIdle, Registerer: reg, Logger: logger,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer pool.Close()
	inbox := &countingInbox{Inbox: &poller.IMAPInbox{Pool: pool}}
	rec := newDetectionRecorder(workflows, tenants)
	p, err := poller.New(poller.Config{
		Interval: o.interval, Workers: o.workers, PerHost: o.perHost, IDLE: o.idle, Owner: fmt.Sprintf("bench-%d", os.Getpid()),
	}, st.kv, rec, settingsStore, inbox, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	deliverPool, err := mail.NewPool(mail.PoolOptions{PerUser: 1, Global: o.deliverConns, Dial: mail.DialOptions{Timeout: 20 * time.Second}})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer deliverPool.Close()

	before := measureMem(true)
	rep.Memory.SQLConnsBefore = st.sql.Stats().OpenConnections
	pctx, stopPoller := context.WithCancel(ctx)
	pollerDone := make(chan error, 1)
	go func() { pollerDone <- p.Run(pctx) }()
	defer func() {
		stopPoller()
		<-pollerDone
	}()

	baseStart := time.Now()
	if err := waitBaseline(ctx, o, reg, inbox, logger); err != nil {
		return nil, err
	}
	rep.BaselineSeconds = time.Since(baseStart).Seconds()
	logger.Info("bench: every tenant baselined", "seconds", rep.BaselineSeconds)

	after := measureMem(true)
	rep.Memory.SQLConnsAfter = st.sql.Stats().OpenConnections
	if o.memProfile != "" {
		if err := writeHeapProfile(o.memProfile); err != nil {
			return nil, err
		}
		rep.Memory.HeapProfileAfterSetup = o.memProfile
	}
	n := float64(o.users)
	rep.Memory.RSSBeforeKiB, rep.Memory.RSSAfterKiB = before.rssKiB, after.rssKiB
	rep.Memory.RSSPerTenantKiB = float64(after.rssKiB-before.rssKiB) / n
	rep.Memory.HeapPerTenantKiB = float64(after.heapKiB-before.heapKiB) / n
	rep.Memory.StackPerTenantKiB = float64(after.stackKiB-before.stackKiB) / n
	rep.Memory.GoRuntimePerTenantKiB = float64(after.goKiB-before.goKiB) / n
	rep.Memory.OutsideGoPerTenantKiB = rep.Memory.RSSPerTenantKiB - rep.Memory.GoRuntimePerTenantKiB
	rep.Memory.GoroutinesPerTenant = float64(after.goroutines-before.goroutines) / n
	rep.Memory.SocketsPerTenant = float64(after.sockets-before.sockets) / n

	// The measurement window.
	rep.LoadAvgStart = loadAvg()
	w0 := takeSample(reg, inbox, serverPID)
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return nil, fmt.Errorf("bench: --cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, fmt.Errorf("bench: --cpuprofile: %w", err)
		}
	}
	deliverErr := deliverMail(ctx, o, deliverPool, tenants, rec, logger)
	if o.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	w1 := takeSample(reg, inbox, serverPID)
	rep.LoadAvgEnd = loadAvg()
	end := measureMem(false)
	rep.Memory.RSSEndPerTenantKiB = float64(end.rssKiB-before.rssKiB) / n
	rep.Memory.RSSPeakKiB = end.hwmKiB
	if deliverErr != nil {
		return nil, deliverErr
	}

	// Drain: wait for mail delivered late in the window.
	drainCtx, cancel := context.WithTimeout(ctx, o.drain)
	rec.waitAll(drainCtx)
	cancel()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}

	rep.fill(o, w0, w1, rec)
	return rep, nil
}

// benchTenant is one bench user: its inboxd id and IMAP account.
type benchTenant struct {
	id   userid.ID
	acct mail.Account
}

// createBenchTenants creates the users, each with IMAP settings and one
// active new_email workflow whose single step is a tool nobody serves: the
// runner is not started, only instance creation is measured.
func createBenchTenants(ctx context.Context, o *benchPollOptions, us *users.Store, ss *settings.Store, wfs *workflow.Store, host string, port int) ([]benchTenant, error) {
	wf := workflow.Workflow{
		Name: "bench", Active: true,
		Trigger: &workflow.Trigger{Type: workflow.TriggerNewEmail},
		Steps:   []workflow.Step{{Name: "noop", Kind: workflow.KindTool, Tool: "bench-noop"}},
	}
	out := make([]benchTenant, o.users)
	for i := range out {
		name := o.prefix + strconv.Itoa(i)
		u, err := us.Create(ctx, users.NewUser{Email: name + "@bench.invalid", DisplayName: "bench " + name})
		if err != nil {
			return nil, fmt.Errorf("bench: create user %s: %w", name, err)
		}
		patch := settings.Patch{}
		for k, v := range map[string]any{
			"imap_server": host, "imap_port": port, "imap_security": "none", "imap_username": name, "imap_password": o.password,
		} {
			b, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("bench: settings of %s: %w", name, err)
			}
			patch[k] = b
		}
		if err := ss.Update(ctx, u.ID, patch); err != nil {
			return nil, fmt.Errorf("bench: settings of %s: %w", name, err)
		}
		if _, err := wfs.CreateWorkflow(ctx, u.ID, wf); err != nil {
			return nil, fmt.Errorf("bench: workflow of %s: %w", name, err)
		}
		out[i] = benchTenant{id: u.ID, acct: mail.Account{Server: host, Port: port, Security: mail.SecurityNone, Username: name, Password: o.password}}
	}
	return out, nil
}

// waitBaseline waits until every tenant is active (its first poll, the
// baseline, succeeded) and, in IDLE mode, until every tenant has an IDLE
// connection: Watch was entered for each and the process's socket count
// stopped growing.
func waitBaseline(ctx context.Context, o *benchPollOptions, reg *prometheus.Registry, inbox *countingInbox, logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, o.setupTimeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			return nil
		}
	}
	var states map[string]float64
	for {
		states = gatherLabeled(reg, "inboxd_tenants", "state")
		if int(states[poller.StateActive]) >= o.users {
			break
		}
		if err := wait(); err != nil {
			return fmt.Errorf("bench: not every tenant baselined within --setup-timeout %s (tenants by state: %v): %w", o.setupTimeout, states, err)
		}
	}
	if !o.idle {
		return nil
	}
	stableSince, last := time.Now(), -1
	for {
		socks := countSockets()
		if socks != last {
			stableSince, last = time.Now(), socks
		}
		if inbox.watchStarts.Load() >= int64(o.users) && time.Since(stableSince) >= 2*time.Second {
			logger.Info("bench: IDLE armed", "sockets", socks)
			return nil
		}
		if err := wait(); err != nil {
			return fmt.Errorf("bench: IDLE not armed for every tenant within --setup-timeout (%d watches): %w", inbox.watchStarts.Load(), err)
		}
	}
}

// countingInbox counts the poller's INBOX checks (one per poll) and IDLE
// sessions.
type countingInbox struct {
	poller.Inbox
	status, statusErrors  atomic.Int64
	watchStarts, watchErr atomic.Int64
}

func (c *countingInbox) Status(ctx context.Context, user userid.ID, acct mail.Account) (poller.MailboxStatus, error) {
	st, err := c.Inbox.Status(ctx, user, acct)
	if err != nil {
		c.statusErrors.Add(1)
	} else {
		c.status.Add(1)
	}
	return st, err
}

func (c *countingInbox) Watch(ctx context.Context, user userid.ID, acct mail.Account, changed func(), ended func(error)) error {
	c.watchStarts.Add(1)
	err := c.Inbox.Watch(ctx, user, acct, changed, func(why error) {
		if ctx.Err() == nil {
			c.watchErr.Add(1)
		}
		ended(why)
	})
	if err != nil && ctx.Err() == nil {
		c.watchErr.Add(1)
	}
	return err
}

// detectionRecorder wraps the workflow store the poller uses and timestamps
// every instance it creates against the delivery time in the mail's subject.
type detectionRecorder struct {
	poller.Workflows
	owner map[userid.ID]int // user id -> tenant index

	mu         sync.Mutex
	sent       map[int]sentMail // seq -> delivery
	found      map[int]int      // seq -> instances created
	latencies  map[int]time.Duration
	unexpected int
	misrouted  int
	changed    chan struct{} // closed and replaced on every detection
}

type sentMail struct {
	tenant int
	at     time.Time
	ok     bool // the APPEND succeeded
	append time.Duration
}

func newDetectionRecorder(wf poller.Workflows, tenants []benchTenant) *detectionRecorder {
	r := &detectionRecorder{
		Workflows: wf, owner: make(map[userid.ID]int, len(tenants)),
		sent: map[int]sentMail{}, found: map[int]int{}, latencies: map[int]time.Duration{},
		changed: make(chan struct{}),
	}
	for i, t := range tenants {
		r.owner[t.id] = i
	}
	return r
}

func (r *detectionRecorder) CreateInstance(ctx context.Context, user userid.ID, workflowID string, in workflow.TriggerInput, key string) (workflow.Instance, bool, error) {
	inst, created, err := r.Workflows.CreateInstance(ctx, user, workflowID, in, key)
	if err != nil || !created {
		return inst, created, err
	}
	now := time.Now()
	var seq int
	var sentNanos int64
	ok := in.Email != nil
	if ok {
		_, perr := fmt.Sscanf(in.Email.Subject, benchSubjectFormat, &seq, &sentNanos)
		ok = perr == nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	defer func() {
		close(r.changed)
		r.changed = make(chan struct{})
	}()
	if !ok {
		r.unexpected++
		return inst, created, nil
	}
	r.found[seq]++
	if r.found[seq] == 1 {
		r.latencies[seq] = now.Sub(time.Unix(0, sentNanos))
	}
	if s, known := r.sent[seq]; known && r.owner[user] != s.tenant {
		r.misrouted++
	}
	return inst, created, nil
}

func (r *detectionRecorder) delivered(seq int, m sentMail) {
	r.mu.Lock()
	r.sent[seq] = m
	r.mu.Unlock()
}

// waitAll waits until every successfully delivered mail was detected, or ctx ends.
func (r *detectionRecorder) waitAll(ctx context.Context) {
	for {
		r.mu.Lock()
		missing := 0
		for seq, s := range r.sent {
			if s.ok && r.found[seq] == 0 {
				missing++
			}
		}
		ch := r.changed
		r.mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// deliverMail APPENDs mail at o.rate to random tenants for o.duration,
// through a pool of its own (--deliver-conns connections and goroutines).
func deliverMail(ctx context.Context, o *benchPollOptions, pool *mail.Pool, tenants []benchTenant, rec *detectionRecorder, logger *slog.Logger) error {
	jobs := make(chan int, 4096)
	var wg sync.WaitGroup
	var failures atomic.Int64
	for range o.deliverConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range jobs {
				ti := rand.IntN(len(tenants))
				t := tenants[ti]
				sent := time.Now()
				raw := benchMessage(seq, sent, t.acct.Username)
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := appendMail(actx, pool, t.acct, raw)
				cancel()
				took := time.Since(sent)
				if err != nil {
					if failures.Add(1) <= 5 {
						logger.Warn("bench: delivery failed", "user", t.acct.Username, "error", err)
					}
				}
				rec.delivered(seq, sentMail{tenant: ti, at: sent, ok: err == nil, append: took})
			}
		}()
	}
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var err error
loop:
	for seq := 0; ; seq++ {
		at := start.Add(time.Duration(float64(seq) / o.rate * float64(time.Second)))
		if at.Sub(start) >= o.duration {
			break
		}
		timer.Reset(time.Until(at))
		select {
		case <-ctx.Done():
			err = fmt.Errorf("bench: delivery: %w", ctx.Err())
			break loop
		case <-timer.C:
		}
		select {
		case jobs <- seq:
		case <-ctx.Done():
			err = fmt.Errorf("bench: delivery: %w", ctx.Err())
			break loop
		}
	}
	// The window ends with the schedule, not with the last APPEND.
	if rest := o.duration - time.Since(start); rest > 0 && err == nil {
		select {
		case <-time.After(rest):
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	return err
}

// benchMessage is one bench mail: the subject carries seq and the delivery
// time (for the recorder), the Message-ID is unique and carries them too.
func benchMessage(seq int, sent time.Time, to string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Bench Sender <sender@bench.invalid>\r\n")
	fmt.Fprintf(&b, "To: <%s@bench.invalid>\r\n", to)
	fmt.Fprintf(&b, "Subject: "+benchSubjectFormat+"\r\n", seq, sent.UnixNano())
	fmt.Fprintf(&b, "Date: %s\r\n", sent.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <inboxd-bench.%d.%d@bench.invalid>\r\n", seq, sent.UnixNano())
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	fmt.Fprintf(&b, "Bench mail %d.\r\n", seq)
	return []byte(b.String())
}

// appendMail APPENDs raw to the account's INBOX on a pooled connection.
func appendMail(ctx context.Context, pool *mail.Pool, acct mail.Account, raw []byte) error {
	conn, err := pool.Acquire(ctx, acct.Username, acct)
	if err != nil {
		return fmt.Errorf("bench: deliver to %s: %w", acct.Username, err)
	}
	c := conn.Client()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err = func() error {
		cmd := c.Append("INBOX", int64(len(raw)), nil)
		if _, err := cmd.Write(raw); err != nil {
			cmd.Close()
			return err
		}
		if err := cmd.Close(); err != nil {
			return err
		}
		_, err := cmd.Wait()
		return err
	}()
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Discard()
		return fmt.Errorf("bench: deliver to %s: append: %w", acct.Username, err)
	}
	conn.Release()
	return nil
}

// benchSample is the state of the counters at one instant.
type benchSample struct {
	at           time.Time
	cpu          time.Duration
	status       int64
	watchErr     int64
	pollErrors   float64
	lagSum       float64
	lagCount     uint64
	durSum       float64
	durCount     uint64
	serverTicks  int64 // -1: unknown
	machineBusy  int64
	machineTotal int64
}

func takeSample(reg *prometheus.Registry, inbox *countingInbox, serverPID int) benchSample {
	s := benchSample{at: time.Now(), cpu: processCPU(), status: inbox.status.Load(), watchErr: inbox.watchErr.Load(), serverTicks: -1}
	polls := gatherLabeled(reg, "inboxd_polls_total", "result")
	s.pollErrors = polls["error"] + polls["auth_error"]
	s.lagSum, s.lagCount = gatherHistogram(reg, "inboxd_poll_lag_seconds")
	s.durSum, s.durCount = gatherHistogram(reg, "inboxd_poll_duration_seconds")
	if serverPID > 0 {
		s.serverTicks = processTreeTicks(serverPID)
	}
	s.machineBusy, s.machineTotal = machineTicks()
	return s
}

// fill computes the report from the window's samples and the recorder.
func (rep *benchReport) fill(o *benchPollOptions, w0, w1 benchSample, rec *detectionRecorder) {
	win := w1.at.Sub(w0.at).Seconds()
	rep.WindowSeconds = win

	rec.mu.Lock()
	var appends, lats []time.Duration
	for seq, s := range rec.sent {
		if !s.ok {
			rep.Delivery.Failed++
			continue
		}
		rep.Delivery.Delivered++
		appends = append(appends, s.append)
		switch n := rec.found[seq]; {
		case n == 0:
			rep.Detection.Missing++
		default:
			rep.Detection.DetectedOnce++
			rep.Detection.Duplicates += n - 1
			lats = append(lats, rec.latencies[seq])
		}
	}
	for seq, n := range rec.found {
		if s, ok := rec.sent[seq]; !ok || !s.ok {
			rep.Detection.Unexpected += n
		}
	}
	rep.Detection.Unexpected += rec.unexpected
	rep.Detection.Misrouted = rec.misrouted
	rec.mu.Unlock()

	rep.Delivery.PerSecond = float64(rep.Delivery.Delivered+rep.Delivery.Failed) / o.duration.Seconds()
	rep.Delivery.AppendP50Ms, rep.Delivery.AppendP99Ms = ms(percentile(appends, 0.50)), ms(percentile(appends, 0.99))
	rep.Detection.P50Ms = ms(percentile(lats, 0.50))
	rep.Detection.P90Ms = ms(percentile(lats, 0.90))
	rep.Detection.P99Ms = ms(percentile(lats, 0.99))
	rep.Detection.MaxMs = ms(percentile(lats, 1))
	slices.Sort(lats)
	for i := len(lats) - 1; i >= 0 && i >= len(lats)-5; i-- {
		rep.Detection.SlowestMs = append(rep.Detection.SlowestMs, math.Round(ms(lats[i])))
	}
	if len(lats) > 0 {
		var sum time.Duration
		for _, l := range lats {
			sum += l
		}
		rep.Detection.MeanMs = ms(sum / time.Duration(len(lats)))
	}

	rep.Checks.Count = w1.status - w0.status
	rep.Checks.PerSecond = float64(rep.Checks.Count) / win
	rep.Checks.PollErrors = int64(w1.pollErrors - w0.pollErrors)
	rep.Checks.IdleRestarts = w1.watchErr - w0.watchErr
	if n := w1.lagCount - w0.lagCount; n > 0 {
		rep.Checks.PollLagMeanMs = (w1.lagSum - w0.lagSum) / float64(n) * 1000
	}
	if n := w1.durCount - w0.durCount; n > 0 {
		rep.Checks.PollDurationMean = (w1.durSum - w0.durSum) / float64(n) * 1000
	}

	rep.CPU.Seconds = (w1.cpu - w0.cpu).Seconds()
	rep.CPU.Cores = rep.CPU.Seconds / win
	if rep.Checks.Count > 0 {
		rep.CPU.MicrosPerCheck = rep.CPU.Seconds / float64(rep.Checks.Count) * 1e6
	}
	rep.CPU.ServerSeconds = -1
	if w0.serverTicks >= 0 && w1.serverTicks >= 0 {
		rep.CPU.ServerSeconds = float64(w1.serverTicks-w0.serverTicks) / clockTicks
	}
	rep.CPU.MachineCores = runtime.NumCPU()
	if dt := w1.machineTotal - w0.machineTotal; dt > 0 {
		rep.CPU.MachineBusyCores = float64(w1.machineBusy-w0.machineBusy) / float64(dt) * float64(rep.CPU.MachineCores)
	}

	rep.Goals = rep.goals(o)
}

// goals checks the goals that apply to this run.
func (rep *benchReport) goals(o *benchPollOptions) []benchGoal {
	var g []benchGoal
	d := rep.Detection
	g = append(g, benchGoal{
		Goal: "every delivered mail detected exactly once",
		Got:  fmt.Sprintf("%d of %d once, %d missing, %d duplicate, %d misrouted", d.DetectedOnce, rep.Delivery.Delivered, d.Missing, d.Duplicates, d.Misrouted),
		Met:  d.Missing == 0 && d.Duplicates == 0 && d.Misrouted == 0 && d.DetectedOnce == rep.Delivery.Delivered && rep.Delivery.Delivered > 0,
	})
	if o.idle {
		limit := ms(o.serverNotice) + 100
		g = append(g, benchGoal{
			Goal: fmt.Sprintf("IDLE p99 <= server notice %.0f ms + 100 ms", ms(o.serverNotice)),
			Got:  fmt.Sprintf("p99 %.0f ms", d.P99Ms), Met: d.P99Ms > 0 && d.P99Ms <= limit,
		})
	} else {
		limit := ms(o.interval) + 1000
		g = append(g, benchGoal{
			Goal: fmt.Sprintf("poll p99 < interval + 1 s (%.0f ms)", limit),
			Got:  fmt.Sprintf("p99 %.0f ms", d.P99Ms), Met: d.P99Ms > 0 && d.P99Ms < limit,
		})
		if rep.Checks.AskedPerSecond >= 4000 {
			g = append(g, benchGoal{
				Goal: "at least 4,000 checks/s when asked",
				Got:  fmt.Sprintf("%.0f/s (asked %.0f/s)", rep.Checks.PerSecond, rep.Checks.AskedPerSecond),
				Met:  rep.Checks.PerSecond >= 4000,
			})
		}
	}
	g = append(g, benchGoal{
		Goal: "at most 48 KiB resident per tenant",
		Got:  fmt.Sprintf("%.1f KiB", rep.Memory.RSSPerTenantKiB), Met: rep.Memory.RSSPerTenantKiB <= 48,
	})
	return g
}

func (rep *benchReport) writeText(w io.Writer) error {
	var b strings.Builder
	mode := fmt.Sprintf("poll mode, interval %s (asks %.0f checks/s)", secs(rep.IntervalSeconds), rep.Checks.AskedPerSecond)
	if rep.Mode == "idle" {
		mode = fmt.Sprintf("IDLE mode, interval %s", secs(rep.IntervalSeconds))
	}
	fmt.Fprintf(&b, "inboxd bench poll: %d tenants, %s\n", rep.Users, mode)
	fmt.Fprintf(&b, "  server      %s · workers %d · per-host %d · pool %d/user · GOMAXPROCS %d\n", rep.Server, rep.Workers, rep.PerHost, rep.PoolPerUser, rep.GoMaxProcs)
	fmt.Fprintf(&b, "  loadavg     start %s · end %s\n", rep.LoadAvgStart, rep.LoadAvgEnd)
	fmt.Fprintf(&b, "  setup       tenants %.1fs · baseline%s %.1fs · window %.1fs\n", rep.SetupSeconds, map[bool]string{true: "+IDLE"}[rep.Mode == "idle"], rep.BaselineSeconds, rep.WindowSeconds)
	dv, dt := rep.Delivery, rep.Detection
	fmt.Fprintf(&b, "  delivery    %d mails (%.1f/s), %d failed · APPEND p50 %.1f ms, p99 %.1f ms\n", dv.Delivered, dv.PerSecond, dv.Failed, dv.AppendP50Ms, dv.AppendP99Ms)
	fmt.Fprintf(&b, "  detection   %d once · %d missing · %d duplicate · %d misrouted · %d unexpected\n", dt.DetectedOnce, dt.Missing, dt.Duplicates, dt.Misrouted, dt.Unexpected)
	fmt.Fprintf(&b, "  latency     p50 %.0f ms · p90 %.0f ms · p99 %.0f ms · max %.0f ms · mean %.0f ms · slowest %v ms (delivery = just before APPEND -> instance queued)\n", dt.P50Ms, dt.P90Ms, dt.P99Ms, dt.MaxMs, dt.MeanMs, dt.SlowestMs)
	c := rep.Checks
	fmt.Fprintf(&b, "  checks      %.0f/s (%d in the window, asked %.0f/s) · %d poll errors · %d IDLE restarts · poll lag mean %.1f ms · poll mean %.2f ms\n",
		c.PerSecond, c.Count, c.AskedPerSecond, c.PollErrors, c.IdleRestarts, c.PollLagMeanMs, c.PollDurationMean)
	cpu := rep.CPU
	server := "unknown (give --server-pid)"
	if cpu.ServerSeconds >= 0 {
		server = fmt.Sprintf("%.2f s (%.2f cores)", cpu.ServerSeconds, cpu.ServerSeconds/rep.WindowSeconds)
	}
	fmt.Fprintf(&b, "  cpu         daemon %.2f s (%.2f cores, %.0f µs/check, %.2f ms/tenant/s) · server %s · machine busy %.2f of %d cores\n",
		cpu.Seconds, cpu.Cores, cpu.MicrosPerCheck, cpu.Seconds/rep.WindowSeconds/float64(rep.Users)*1000, server, cpu.MachineBusyCores, cpu.MachineCores)
	m := rep.Memory
	fmt.Fprintf(&b, "  memory      RSS %d -> %d KiB after baseline: %.1f KiB/tenant = Go runtime %.1f (live heap %.1f, stacks %.1f) + outside Go %.1f · %.1f goroutines, %.2f sockets per tenant\n",
		m.RSSBeforeKiB, m.RSSAfterKiB, m.RSSPerTenantKiB, m.GoRuntimePerTenantKiB, m.HeapPerTenantKiB, m.StackPerTenantKiB, m.OutsideGoPerTenantKiB, m.GoroutinesPerTenant, m.SocketsPerTenant)
	fmt.Fprintf(&b, "              SQLite connections %d -> %d · at window end (no forced GC) %.1f KiB/tenant · peak RSS %d KiB\n", m.SQLConnsBefore, m.SQLConnsAfter, m.RSSEndPerTenantKiB, m.RSSPeakKiB)
	for _, g := range rep.Goals {
		mark := "MET "
		if !g.Met {
			mark = "MISS"
		}
		fmt.Fprintf(&b, "  goal %s   %s: %s\n", mark, g.Goal, g.Got)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("bench: write report: %w", err)
	}
	return nil
}

// percentile is the nearest-rank percentile of ds (q in (0, 1]); 0 when empty.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func secs(s float64) string { return time.Duration(s * float64(time.Second)).String() }

// gatherLabeled returns the values of a counter or gauge family by one label.
func gatherLabeled(reg *prometheus.Registry, name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, mf := range gatherFamily(reg, name) {
		var key string
		for _, lp := range mf.GetLabel() {
			if lp.GetName() == label {
				key = lp.GetValue()
			}
		}
		switch {
		case mf.Counter != nil:
			out[key] += mf.GetCounter().GetValue()
		case mf.Gauge != nil:
			out[key] += mf.GetGauge().GetValue()
		}
	}
	return out
}

// gatherHistogram returns a histogram's sum and count.
func gatherHistogram(reg *prometheus.Registry, name string) (float64, uint64) {
	var sum float64
	var count uint64
	for _, m := range gatherFamily(reg, name) {
		if h := m.GetHistogram(); h != nil {
			sum += h.GetSampleSum()
			count += h.GetSampleCount()
		}
	}
	return sum, count
}

func gatherFamily(reg *prometheus.Registry, name string) []*dto.Metric {
	mfs, err := reg.Gather()
	if err != nil {
		return nil
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

// memSnapshot is the process's memory at one instant.
type memSnapshot struct {
	rssKiB, hwmKiB, heapKiB, stackKiB int64
	goKiB                             int64 // mapped by the Go runtime and not released: Sys - HeapReleased
	goroutines, sockets               int
}

// measureMem reads VmRSS and the Go heap; with gc it first collects and
// returns freed memory to the OS, so that two snapshots compare live memory.
func measureMem(gc bool) memSnapshot {
	if gc {
		runtime.GC()
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSnapshot{
		heapKiB: int64(ms.HeapAlloc / 1024), stackKiB: int64(ms.StackInuse / 1024), goKiB: int64((ms.Sys - ms.HeapReleased) / 1024),
		goroutines: runtime.NumGoroutine(), sockets: countSockets(),
	}
	s.rssKiB, s.hwmKiB = procStatusKiB("VmRSS"), procStatusKiB("VmHWM")
	return s
}

// procStatusKiB returns a "Vm...: N kB" field of /proc/self/status (0 when unknown).
func procStatusKiB(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// countSockets counts this process's open sockets.
func countSockets() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat and /proc/stat times
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// processTreeTicks sums utime+stime (and the times of reaped children) of
// pid and its live descendants, from /proc; -1 when pid is unknown.
func processTreeTicks(pid int) int64 {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return -1
	}
	type proc struct {
		ppid  int
		ticks int64
	}
	procs := map[int]proc{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command (which may contain spaces): state ppid ...
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b)[i+1:])
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		var t int64
		for _, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[k], 10, 64)
			t += v
		}
		procs[p] = proc{ppid: ppid, ticks: t}
	}
	if _, ok := procs[pid]; !ok {
		return -1
	}
	var total int64
	for p, pr := range procs {
		for q, hops := p, 0; q > 1 && hops < 64; hops++ {
			if q == pid {
				total += pr.ticks
				break
			}
			q = procs[q].ppid
		}
	}
	return total
}

// machineTicks returns the busy and total CPU ticks of the machine (/proc/stat).
func machineTicks() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i >= 8 { // guest times are already in user and nice
			break
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// writeHeapProfile writes the heap profile to path and, beside it, the
// goroutines grouped by stack (path.goroutines, text): what a tenant costs.
func writeHeapProfile(path string) error {
	for _, p := range []struct {
		name, path string
		debug      int
	}{{"heap", path, 0}, {"goroutine", path + ".goroutines", 1}} {
		f, err := os.Create(p.path)
		if err != nil {
			return fmt.Errorf("bench: --memprofile: %w", err)
		}
		if err := pprof.Lookup(p.name).WriteTo(f, p.debug); err != nil {
			f.Close()
			return fmt.Errorf("bench: --memprofile: %s: %w", p.name, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("bench: --memprofile: %w", err)
		}
	}
	return nil
}

// memServerProcess is the in-memory IMAP server child.
type memServerProcess struct {
	addr string
	pid  int
	stop func()
}

// startMemServer starts `inboxd bench imapserver` and reads its address
// from the first line of its stdout. The child exits when its stdin closes,
// so it never outlives the bench, even one that is killed.
func startMemServer(ctx context.Context, o *benchPollOptions, spawn serverCommand, stderr io.Writer, logger *slog.Logger) (*memServerProcess, error) {
	cmd, err := spawn([]string{"bench", "imapserver", "--listen", "127.0.0.1:0", "--users", strconv.Itoa(o.users),
		"--imap-user-prefix", o.prefix, "--imap-password", o.password, "--exit-on-stdin-eof", "--log-level", o.logLevel})
	if err != nil {
		return nil, err
	}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("bench: imap server: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("bench: imap server: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start imap server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		lines <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, r) // whatever else it prints
	}()
	var addr string
	select {
	case addr = <-lines:
	case <-time.After(60 * time.Second):
	case <-ctx.Done():
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		stop()
		return nil, fmt.Errorf("bench: the imap server process did not print its address (got %q)", addr)
	}
	logger.Info("bench: in-memory imap server started", "addr", addr, "pid", cmd.Process.Pid)
	return &memServerProcess{addr: addr, pid: cmd.Process.Pid, stop: stop}, nil
}

// runBenchIMAPServer is the hidden `bench imapserver`: go-imap's in-memory
// server with users PREFIX0.. PREFIX{N-1}, each with an empty INBOX. It
// prints its address on stdout and serves until ctx ends (or, with
// --exit-on-stdin-eof, its stdin closes).
func runBenchIMAPServer(ctx context.Context, env Env, args []string) error {
	fs := flag.NewFlagSet("inboxd bench imapserver", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	n := fs.Int("users", 100, "users")
	prefix := fs.String("imap-user-prefix", "u", "user name prefix")
	password := fs.String("imap-password", "pw", "password of every user")
	stdinEOF := fs.Bool("exit-on-stdin-eof", false, "exit when stdin closes (the parent is gone)")
	level := fs.String("log-level", "warn", "log level")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *n < 1 {
		return usagef("bench imapserver takes --users N >= 1 and no arguments")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return usagef("--log-level: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: lvl}))

	mem := imapmemserver.New()
	for i := range *n {
		u := imapmemserver.NewUser(*prefix+strconv.Itoa(i), *password)
		if err := u.Create("INBOX", nil); err != nil {
			return fmt.Errorf("bench imapserver: create INBOX: %w", err)
		}
		mem.AddUser(u)
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("bench imapserver: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if _, err := fmt.Fprintln(env.Stdout, ln.Addr().String()); err != nil {
		srv.Close()
		return fmt.Errorf("bench imapserver: %w", err)
	}
	gone := make(chan struct{})
	if *stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(gone)
		}()
	}
	select {
	case <-ctx.Done():
	case <-gone:
	case err := <-served:
		return fmt.Errorf("bench imapserver: %w", err)
	}
	if err := srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("bench imapserver: close: %w", err)
	}
	return nil
}
