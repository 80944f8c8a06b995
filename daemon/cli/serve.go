package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/config"
	"github.com/inboxd/inboxd/daemon/demo"
	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/mail"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/pluginhost"
	"github.com/inboxd/inboxd/daemon/poller"
	"github.com/inboxd/inboxd/daemon/sdnotify"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
	"github.com/inboxd/inboxd/daemon/workflow"
)

func runServe(ctx context.Context, env Env, args []string) error {
	fs, cfgPath := newFlags(env, "serve", "serve [--config FILE] [--demo]")
	demoFlag := fs.Bool("demo", false, "run the built-in demo: an in-process IMAP server with two demo users and mail arriving every few seconds")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("serve takes no arguments, got %q", fs.Args())
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	if *demoFlag {
		cfg.Demo = true
	}
	logger, level := newLogger(cfg, env.Stderr)
	reload := func() (*config.Config, error) { return loadConfig(env, *cfgPath) }
	return serve(ctx, cfg, logger, &liveSettings{level: level, reload: reload, out: env.Stdout})
}

// liveSettings is what SIGHUP can change without a restart, and where the
// demo's commentary goes.
type liveSettings struct {
	level  *slog.LevelVar
	reload func() (*config.Config, error)
	out    io.Writer
}

// serve owns the daemon's start-up and shutdown order:
// stores -> auth -> workflow engine, poller -> API -> background work ->
// listener -> READY; then, on ctx's end, STOPPING -> stop intake (HTTP)
// with a grace period -> stop background work (poll leases released, runs
// left resumable) -> IMAP pool -> stores.
func serve(ctx context.Context, cfg *config.Config, logger *slog.Logger, live *liveSettings) error {
	notifier := sdnotify.New()
	// SIGHUP is caught from the start: its default action would end the daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	st, err := openStores(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			logger.Error("closing stores", "error", err)
		}
	}()

	authn, err := newAuthenticator(ctx, cfg, st, logger)
	if err != nil {
		return err
	}
	m := metrics.New(version)
	settingsStore := settings.NewStore(st.kv, st.box)
	workflows := workflow.NewStore(st.sql)
	logStore := logs.NewStore(st.sql)
	owner := replicaName()
	catalog, err := embed.LoadCatalog("")
	if err != nil {
		return err
	}
	vecs, err := vectors.Open(cfg.VectorsURL, st.sql, vectors.Options{})
	if err != nil {
		return fmt.Errorf("vectors_url: %w", err)
	}
	defer vecs.Close()
	llmClient := llm.NewOpenAI(llm.Options{Registerer: m.Registry, Logger: logger})
	plugins, err := pluginhost.New(pluginhost.Config{
		Dir: cfg.Plugins.Dir, BuiltIn: builtinNames(builtinPlugins()), Logger: logger, Registerer: m.Registry,
		Services: pluginhost.HostServices{
			Settings: settingsStore, KV: st.kv, Vectors: vecs, LLM: llmClient,
			Embedder: func(ctx context.Context, user userid.ID) (embed.Embedder, error) {
				s, err := settingsStore.Get(ctx, user)
				if err != nil {
					return nil, err
				}
				model, _, err := jobs.ModelFor(catalog, s)
				if err != nil {
					return nil, err
				}
				return embed.New(model, s.EmbeddingAPIKey, embed.Options{})
			},
		},
	})
	if err != nil {
		return err
	}
	if err := plugins.Start(ctx); err != nil {
		return err
	}
	// Plugins stop after the background work that calls them (deferred
	// later, so run earlier) and before the stores close.
	defer plugins.Close()
	var toolCaller tools.Caller = plugins

	runner, err := workflow.NewRunner(workflow.RunnerConfig{
		Store: workflows, LLM: llmClient,
		Tools: toolCaller, Logs: logStore, Settings: settingsStore,
		Workers: cfg.Workflow.Workers, Lease: cfg.Workflow.Lease, Grace: cfg.ShutdownGrace, Owner: owner, Logger: logger, Registerer: m.Registry,
	})
	if err != nil {
		return err
	}
	workflows.OnInstanceCreated(runner.Kick)
	scheduler, err := workflow.NewScheduler(workflow.SchedulerConfig{Store: workflows, Settings: settingsStore, Logger: logger})
	if err != nil {
		return err
	}
	pool, err := mail.NewPool(mail.PoolOptions{Registerer: m.Registry, Logger: logger})
	if err != nil {
		return err
	}
	defer pool.Close()
	poll, err := poller.New(poller.Config{
		Interval: cfg.Poll.Interval, Workers: cfg.Poll.Workers, IDLE: cfg.Poll.IDLE, LeaseTTL: cfg.Poll.Lease, Owner: owner,
	}, st.kv, workflows, settingsStore, &poller.IMAPInbox{Pool: pool}, logger, m.Registry)
	if err != nil {
		return err
	}

	jobManager, err := jobs.New(jobs.Config{
		Workers: cfg.Jobs.Workers, KV: st.kv, Settings: settingsStore, Vectors: vecs, Catalog: catalog,
		LLM: llmClient, Users: st.users, Logger: logger, Registerer: m.Registry, Owner: owner,
		// A dead process's jobs are looked for twice per lease: resumed at
		// most 1.5 leases after the death.
		LeaseTTL: cfg.Jobs.Lease, RecoverEvery: cfg.Jobs.Lease / 2,
	})
	if err != nil {
		return err
	}

	ready := []api.Check{{Name: "sql", Ping: st.sql.Ping}, {Name: "kv", Ping: st.kv.Ping},
		// Readiness only, never the watchdog: a full disk is no reason to
		// restart a daemon that keeps serving reads.
		{Name: "sql_disk", Ping: func(context.Context) error { return st.sql.CheckDiskSpace() }}}
	handler := api.New(api.Deps{
		Auth:      authn,
		Users:     st.users,
		Settings:  settingsStore,
		KV:        st.kv,
		Workflows: workflows,
		Logs:      logStore,
		Tools:     toolCaller,
		Jobs:      jobManager,
		Catalog:   catalog,
		Metrics:   m,
		Logger:    logger,
		Ready:     ready,
	})

	background := map[string]func(context.Context) error{
		"workflow runner": runner.Run, "scheduler": scheduler.Run, "poller": poll.Run, "jobs": jobManager.Run,
	}
	if cfg.Demo {
		d, err := demo.Start(ctx, demo.Stores{Users: st.users, Settings: settingsStore, Workflows: workflows}, demo.Options{Out: live.out})
		if err != nil {
			return err
		}
		background["demo"] = d.Run
	} else if err := demo.Retire(ctx, st.users); err != nil {
		return err
	}

	// Background work runs under its own context: on shutdown it is
	// cancelled only after the HTTP server stopped taking requests.
	workCtx, stopWork := context.WithCancel(context.Background())
	var work sync.WaitGroup
	defer func() { stopWork(); work.Wait() }() // on every return, before the stores close
	for name, run := range background {
		work.Add(1)
		go func() {
			defer work.Done()
			if err := run(workCtx); err != nil && workCtx.Err() == nil {
				logger.Error(name+" stopped", "error", err)
			}
		}()
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second, // test-imap may wait 20 s for a slow server
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	logger.Info("inboxd serving", "version", version, "listen", "http://"+ln.Addr().String(),
		"auth_mode", cfg.Auth.Mode, "data_dir", cfg.DataDir, "database", st.sql.Dialect.String(), "kv", kvKind(cfg))
	if cfg.Demo {
		fmt.Fprintf(live.out, `
inboxd is running with the built-in demo on http://%s (auth mode %s).
  The demo users' runs show below; the API and /metrics are live:
    curl -s http://%[1]s/api/v1/inbox/status    curl -s http://%[1]s/metrics | grep inboxd_
  To add your own account: PUT your IMAP settings to /api/v1/settings and create a workflow
  (see README.md). To turn the demo off, run "inboxd serve" without --demo (demo = false).

`, ln.Addr(), cfg.Auth.Mode)
	}
	if err := notifier.Ready(); err != nil {
		logger.Warn("sd_notify READY failed", "error", err)
	}
	healthy := func(ctx context.Context) error {
		return errors.Join(st.sql.Ping(ctx), st.kv.Ping(ctx))
	}
	watchdogCtx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go notifier.Watchdog(watchdogCtx, healthy, logger)

wait:
	for {
		select {
		case <-ctx.Done():
			logger.Info("shutting down", "grace", cfg.ShutdownGrace.String())
			break wait
		case err := <-serveErr:
			return fmt.Errorf("http server: %w", err)
		case <-hup:
			_ = notifier.Reloading()
			cfg = reloadConfig(ctx, cfg, live, poll, plugins, logger)
			_ = notifier.Ready()
		}
	}
	_ = notifier.Stopping()
	stopWatchdog()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("http shutdown did not finish in time", "error", err)
		srv.Close()
	}
	// Then the background work: the poller releases its leases, the runner
	// leaves running instances claimed for a restart or another replica to
	// resume.
	stopWork()
	work.Wait()
	logger.Info("stopped")
	return nil
}

func kvKind(cfg *config.Config) string {
	if cfg.KVURL == "embedded" {
		return "embedded"
	}
	return "redis"
}

// newAuthenticator builds the auth layer for the configured mode, creating
// the default user up front in the single-user modes.
func newAuthenticator(ctx context.Context, cfg *config.Config, st *stores, logger *slog.Logger) (*auth.Authenticator, error) {
	ac := auth.Config{
		Mode:           auth.Mode(cfg.Auth.Mode),
		OIDCIssuer:     cfg.Auth.OIDCIssuer,
		OIDCAudience:   cfg.Auth.OIDCAudience,
		OIDCEmailClaim: cfg.Auth.OIDCEmailClaim,
		Admins:         cfg.Auth.Admins,
	}
	if cfg.Auth.Mode == "password" {
		pw, err := cfg.Password()
		if err != nil {
			return nil, err
		}
		// A configured bcrypt hash is used as it is, so session tokens survive
		// restarts and work on every replica; a plaintext password is hashed
		// here, and its sessions last as long as this process.
		if isBcryptHash(pw) {
			ac.PasswordHash = []byte(pw)
		} else if ac.PasswordHash, err = auth.HashPassword(pw); err != nil {
			return nil, err
		}
	}
	if cfg.Auth.Mode == "none" || cfg.Auth.Mode == "password" {
		if _, err := st.users.EnsureDefault(ctx); err != nil {
			return nil, fmt.Errorf("default user: %w", err)
		}
	}
	a, err := auth.New(ac, st.users, st.box, logger)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return a, nil
}

// isBcryptHash reports whether s is a bcrypt hash ("$2a$", "$2b$" or "$2y$").
func isBcryptHash(s string) bool {
	return len(s) == 60 && (strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$"))
}

// replicaName names this process in leases and claims: unique per replica
// and per restart, readable in logs.
func replicaName() string {
	host, err := os.Hostname()
	if err != nil {
		host = "inboxd"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%x", host, os.Getpid(), b)
}

// reloadConfig re-reads the configuration on SIGHUP and applies what can
// change live: the log level, the poll interval and the plugin set (the
// plugin directory is scanned again). A bad file changes nothing; other
// changed settings are reported as needing a restart.
func reloadConfig(ctx context.Context, cur *config.Config, live *liveSettings, poll *poller.Poller, plugins *pluginhost.Host, logger *slog.Logger) *config.Config {
	next, err := live.reload()
	if err != nil {
		logger.Error("reload: configuration refused; keeping the running one", "error", err)
		return cur
	}
	setLevel(live.level, next)
	poll.SetInterval(next.Poll.Interval)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if err := plugins.Rescan(rctx, next.Plugins.Dir); err != nil {
		logger.Error("reload: plugin set", "error", err)
	}
	cancel()
	old, now := cur.Effective(), next.Effective()
	var restart []string
	for i := range old {
		switch old[i].Key {
		case "log.level", "poll.interval", "plugins.dir":
			continue
		}
		if old[i].Value != now[i].Value {
			restart = append(restart, old[i].Key)
		}
	}
	logger.Info("reload: configuration applied", "log_level", next.Log.Level, "poll_interval", next.Poll.Interval.String())
	if len(restart) > 0 {
		logger.Warn("reload: these settings change only with a restart", "settings", restart)
	}
	next.Log.Format = cur.Log.Format // the handler's format cannot change live
	return next
}
