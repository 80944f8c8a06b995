package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"

	"github.com/inboxd/inboxd/daemon/config"
	"github.com/inboxd/inboxd/daemon/secretbox"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/users"
)

// stores are the opened backends every command that touches data needs.
type stores struct {
	sql   *sqldb.DB
	kv    kv.Store
	users *users.Store
	box   *secretbox.Box
}

// openStores creates the data directory, opens the SQL database (applying
// migrations), loads (or, for a new installation, creates) the secret key,
// and opens the KV.
func openStores(ctx context.Context, cfg *config.Config) (*stores, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", cfg.DataDir, err)
	}
	db, err := sqldb.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("database_url: %w", err)
	}
	if err := db.Migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("database_url: %w", err)
	}
	box, err := openSecretBox(ctx, cfg, users.NewStore(db))
	if err != nil {
		db.Close()
		return nil, err
	}
	var store kv.Store
	if cfg.KVURL == "embedded" {
		store = kv.NewSQL(db)
	} else if store, err = kv.NewRedis(ctx, cfg.KVURL); err != nil {
		db.Close()
		return nil, fmt.Errorf("kv_url: %w", err)
	}
	return &stores{sql: db, kv: store, users: users.NewStore(db), box: box}, nil
}

// openSecretBox loads the secret key. A missing key file is created only for
// a database without users: with users, secrets sealed under another key
// may exist (a lost key, or a replica started without the shared one), and
// a new key would silently make them unreadable.
func openSecretBox(ctx context.Context, cfg *config.Config, us *users.Store) (*secretbox.Box, error) {
	if _, err := os.Stat(cfg.SecretKeyFile); errors.Is(err, fs.ErrNotExist) {
		list, err := us.List(ctx)
		if err != nil {
			return nil, fmt.Errorf("secret_key_file: %w", err)
		}
		if len(list) > 0 {
			return nil, fmt.Errorf("secret_key_file: %s does not exist, but the database has %d users whose secrets are sealed with a key: restore the file (every replica needs the same one) rather than start with a new key", cfg.SecretKeyFile, len(list))
		}
	}
	key, err := secretbox.LoadOrCreateKey(cfg.SecretKeyFile)
	if err != nil {
		return nil, fmt.Errorf("secret_key_file: %w", err)
	}
	box, err := secretbox.New(key)
	if err != nil {
		return nil, fmt.Errorf("secret_key_file: %w", err)
	}
	return box, nil
}

// Close closes the KV, then the database.
func (s *stores) Close() error {
	return errors.Join(s.kv.Close(), s.sql.Close())
}

// loadConfig loads the configuration the way every command does.
func loadConfig(env Env, path string) (*config.Config, error) {
	return config.Load(path, env.Getenv)
}

// newLogger builds the daemon's slog logger: JSON unless log.format says
// text or (when unset) the output is a terminal. The level can be changed
// later through the returned LevelVar (SIGHUP).
func newLogger(cfg *config.Config, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	setLevel(level, cfg)
	opts := &slog.HandlerOptions{Level: level}
	format := cfg.Log.Format
	if format == "" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	if strings.EqualFold(format, "text") {
		return slog.New(slog.NewTextHandler(w, opts)), level
	}
	return slog.New(slog.NewJSONHandler(w, opts)), level
}

// setLevel applies log.level (validated by config, so the parse cannot fail).
func setLevel(v *slog.LevelVar, cfg *config.Config) {
	var l slog.Level
	_ = l.UnmarshalText([]byte(cfg.Log.Level))
	v.Set(l)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
