package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/config"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/sdnotify"
	"github.com/inboxd/inboxd/daemon/settings"
)

// shutdownGrace is how long in-flight HTTP requests may take after SIGTERM.
const shutdownGrace = 10 * time.Second

func runServe(ctx context.Context, env Env, args []string) error {
	fs, cfgPath := newFlags(env, "serve", "serve [--config FILE]")
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
	return serve(ctx, cfg, newLogger(cfg, env.Stderr))
}

// serve owns the daemon's start-up and shutdown order:
// stores -> auth -> API -> listener -> READY; then, on ctx's end,
// STOPPING -> stop intake (HTTP) with a grace period -> close stores.
func serve(ctx context.Context, cfg *config.Config, logger *slog.Logger) error {
	notifier := sdnotify.New()
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
	ready := []api.Check{{Name: "sql", Ping: st.sql.Ping}, {Name: "kv", Ping: st.kv.Ping}}
	handler := api.New(api.Deps{
		Auth:     authn,
		Users:    st.users,
		Settings: settings.NewStore(st.kv, st.box),
		Metrics:  m,
		Logger:   logger,
		Ready:    ready,
	})

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
	if err := notifier.Ready(); err != nil {
		logger.Warn("sd_notify READY failed", "error", err)
	}
	healthy := func(ctx context.Context) error {
		return errors.Join(st.sql.Ping(ctx), st.kv.Ping(ctx))
	}
	watchdogCtx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go notifier.Watchdog(watchdogCtx, healthy, logger)

	select {
	case <-ctx.Done():
		logger.Info("shutting down", "grace", shutdownGrace.String())
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}
	_ = notifier.Stopping()
	stopWatchdog()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("http shutdown did not finish in time", "error", err)
		srv.Close()
	}
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
