// Package config owns inboxd's configuration: one struct, filled from built-in
// defaults, then a TOML file, then INBOXD_* environment variables, and
// validated as a whole. Every setting is declared once, in the options table,
// with its TOML key, environment twin, default, parser and secrecy.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultFile is read when no --config is given and it exists.
const DefaultFile = "/etc/inboxd/inboxd.toml"

// Config is the daemon's whole configuration.
type Config struct {
	Listen        string
	DataDir       string
	DatabaseURL   string
	KVURL         string
	VectorsURL    string
	SecretKeyFile string
	// ShutdownGrace bounds a clean stop: in-flight requests and workflow
	// steps may finish within it, then what is left is interrupted (and
	// resumes on the next start).
	ShutdownGrace time.Duration
	Auth          Auth
	Plugins       Plugins
	Poll          Poll
	Workflow      Workflow
	Jobs          Jobs
	Log           Log
	Demo          bool
}

// Auth selects how API requests are tied to a user.
type Auth struct {
	Mode           string // none | password | apikey | oidc
	Password       string
	PasswordFile   string
	OIDCIssuer     string
	OIDCAudience   string
	OIDCEmailClaim string
	Admins         []string
}

// Plugins says where third-party plugins are found.
type Plugins struct {
	Dir string
}

// Poll tunes the inbox poller.
type Poll struct {
	Interval time.Duration
	IDLE     bool
	Workers  int
	// Lease is how long a replica's claim on a user's inbox outlives the
	// replica: another one (or this one, restarted) takes over after it.
	Lease time.Duration
}

// Workers sizes a worker pool.
type Workers struct {
	Workers int
}

// Jobs tunes the background job runner.
type Jobs struct {
	Workers int
	// Lease is how long a job stays with a process that stops renewing it
	// (crashed) before the recovery sweep resumes it elsewhere.
	Lease time.Duration
}

// Workflow tunes the workflow runner.
type Workflow struct {
	Workers int
	// Lease is how long a claimed run stays with a replica that stops
	// renewing it (crashed) before another runner resumes it.
	Lease time.Duration
}

// Log selects the log level and format.
type Log struct {
	Level  string // debug | info | warn | error
	Format string // json | text | "" (text on a terminal, else json)
}

// option is one row of the table: the single declaration of a setting.
type option struct {
	key    string                          // TOML key, dotted
	def    string                          // default as text; "" when derived or empty
	secret bool                            // masked by Print
	set    func(c *Config, v string) error // parse text into the struct
	get    func(c *Config) string          // the effective value as text
}

// EnvName is the environment twin of a TOML key: "auth.mode" -> "INBOXD_AUTH_MODE".
func EnvName(key string) string {
	return "INBOXD_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func str(p func(c *Config) *string) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error { *p(c) = strings.TrimSpace(v); return nil },
		func(c *Config) string { return *p(c) }
}

func integer(p func(c *Config) *int) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("not a whole number: %q", v)
			}
			*p(c) = n
			return nil
		},
		func(c *Config) string { return strconv.Itoa(*p(c)) }
}

func boolean(p func(c *Config) *bool) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("not true or false: %q", v)
			}
			*p(c) = b
			return nil
		},
		func(c *Config) string { return strconv.FormatBool(*p(c)) }
}

func duration(p func(c *Config) *time.Duration) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("not a duration like 60s or 5m: %q", v)
			}
			*p(c) = d
			return nil
		},
		func(c *Config) string { return p(c).String() }
}

func list(p func(c *Config) *[]string) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			var out []string
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					out = append(out, s)
				}
			}
			*p(c) = out
			return nil
		},
		func(c *Config) string { return strings.Join(*p(c), ",") }
}

func row(key, def string, secret bool, f func(*Config, string) error, g func(*Config) string) option {
	return option{key: key, def: def, secret: secret, set: f, get: g}
}

// workersDefault sizes pools for the machine: I/O-bound work, so several per core.
func workersDefault(perCPU, minimum int) string {
	return strconv.Itoa(max(minimum, perCPU*runtime.NumCPU()))
}

func options() []option {
	var o []option
	add := func(key, def string, secret bool, f func(*Config, string) error, g func(*Config) string) {
		o = append(o, row(key, def, secret, f, g))
	}
	s := func(key, def string, secret bool, p func(c *Config) *string) {
		f, g := str(p)
		add(key, def, secret, f, g)
	}
	s("listen", "127.0.0.1:8080", false, func(c *Config) *string { return &c.Listen })
	s("data_dir", "", false, func(c *Config) *string { return &c.DataDir })
	s("database_url", "", true, func(c *Config) *string { return &c.DatabaseURL })
	s("kv_url", "embedded", true, func(c *Config) *string { return &c.KVURL })
	s("vectors_url", "embedded", true, func(c *Config) *string { return &c.VectorsURL })
	s("secret_key_file", "", false, func(c *Config) *string { return &c.SecretKeyFile })
	f, g := duration(func(c *Config) *time.Duration { return &c.ShutdownGrace })
	add("shutdown_grace", "10s", false, f, g)
	s("auth.mode", "none", false, func(c *Config) *string { return &c.Auth.Mode })
	s("auth.password", "", true, func(c *Config) *string { return &c.Auth.Password })
	s("auth.password_file", "", false, func(c *Config) *string { return &c.Auth.PasswordFile })
	s("auth.oidc_issuer", "", false, func(c *Config) *string { return &c.Auth.OIDCIssuer })
	s("auth.oidc_audience", "", false, func(c *Config) *string { return &c.Auth.OIDCAudience })
	s("auth.oidc_email_claim", "email", false, func(c *Config) *string { return &c.Auth.OIDCEmailClaim })
	f, g = list(func(c *Config) *[]string { return &c.Auth.Admins })
	add("auth.admins", "", false, f, g)
	s("plugins.dir", "", false, func(c *Config) *string { return &c.Plugins.Dir })
	f, g = duration(func(c *Config) *time.Duration { return &c.Poll.Interval })
	add("poll.interval", "60s", false, f, g)
	f, g = boolean(func(c *Config) *bool { return &c.Poll.IDLE })
	add("poll.idle", "true", false, f, g)
	f, g = integer(func(c *Config) *int { return &c.Poll.Workers })
	add("poll.workers", workersDefault(16, 8), false, f, g)
	f, g = duration(func(c *Config) *time.Duration { return &c.Poll.Lease })
	add("poll.lease", "30s", false, f, g)
	f, g = integer(func(c *Config) *int { return &c.Workflow.Workers })
	add("workflow.workers", workersDefault(4, 4), false, f, g)
	f, g = duration(func(c *Config) *time.Duration { return &c.Workflow.Lease })
	add("workflow.lease", "30s", false, f, g)
	f, g = integer(func(c *Config) *int { return &c.Jobs.Workers })
	add("jobs.workers", workersDefault(1, 2), false, f, g)
	f, g = duration(func(c *Config) *time.Duration { return &c.Jobs.Lease })
	add("jobs.lease", "60s", false, f, g)
	s("log.level", "info", false, func(c *Config) *string { return &c.Log.Level })
	s("log.format", "", false, func(c *Config) *string { return &c.Log.Format })
	f, g = boolean(func(c *Config) *bool { return &c.Demo })
	add("demo", "false", false, f, g)
	return o
}

// Load builds the configuration: defaults, then the TOML file at path (when
// path is "", DefaultFile if it exists), then environment overrides from
// getenv, then derived defaults, then validation. Errors name the bad field.
func Load(path string, getenv func(string) string) (*Config, error) {
	opts := options()
	c := &Config{}
	for _, o := range opts {
		if err := o.set(c, o.def); err != nil {
			return nil, fmt.Errorf("config: default of %s: %w", o.key, err)
		}
	}
	if path == "" {
		if _, err := os.Stat(DefaultFile); err == nil {
			path = DefaultFile
		}
	}
	if path != "" {
		if err := loadFile(c, opts, path); err != nil {
			return nil, err
		}
	}
	for _, o := range opts {
		name := EnvName(o.key)
		if v := getenv(name); v != "" {
			if err := o.set(c, v); err != nil {
				return nil, fmt.Errorf("config: %s (from %s): %w", o.key, name, err)
			}
		}
	}
	c.derive(getenv)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func loadFile(c *Config, opts []option, path string) error {
	var raw map[string]any
	if _, err := toml.DecodeFile(path, &raw); err != nil {
		return fmt.Errorf("config: %s: %w", path, syntaxError(err))
	}
	byKey := make(map[string]option, len(opts))
	for _, o := range opts {
		byKey[o.key] = o
	}
	flat := map[string]any{}
	flatten("", raw, flat)
	keys := make([]string, 0, len(flat))
	for k := range flat {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		o, ok := byKey[k]
		if !ok {
			return fmt.Errorf("config: %s: unknown setting %q", path, k)
		}
		if err := o.set(c, tomlText(flat[k])); err != nil {
			return fmt.Errorf("config: %s: %s: %w", path, k, err)
		}
	}
	return nil
}

// quotedText is what a TOML parser error quotes from the file.
var quotedText = regexp.MustCompile(`"(?:[^"\\\n]|\\.)*"|'[^'\s]{3,}'`)

// syntaxError describes a TOML syntax error by its line and key, without
// the text the parser quotes from the file: a value that breaks the syntax,
// such as an unquoted password, would be repeated in the error, which is
// printed and, on a refused reload, logged.
func syntaxError(err error) error {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return err
	}
	where := fmt.Sprintf("line %d", pe.Position.Line)
	if pe.LastKey != "" {
		where += fmt.Sprintf(" (last key %q)", pe.LastKey)
	}
	msg := quotedText.ReplaceAllString(pe.Message, "…")
	if msg != pe.Message {
		msg += " (the file's text is not repeated: it may be a secret)"
	}
	return fmt.Errorf("%s: %s", where, msg)
}

func flatten(prefix string, m map[string]any, out map[string]any) {
	for k, v := range m {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			flatten(key, sub, out)
			continue
		}
		out[key] = v
	}
}

// tomlText turns a decoded TOML value into the text form the parsers take.
func tomlText(v any) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = fmt.Sprint(e)
		}
		return strings.Join(parts, ",")
	default:
		return fmt.Sprint(v)
	}
}

// derive fills the defaults that depend on other settings.
func (c *Config) derive(getenv func(string) string) {
	if c.DataDir == "" {
		c.DataDir = "./data"
		if sd := getenv("STATE_DIRECTORY"); sd != "" {
			// systemd may pass several colon-separated directories; the first is ours.
			c.DataDir = strings.Split(sd, ":")[0]
		}
	}
	if c.DatabaseURL == "" {
		c.DatabaseURL = "sqlite://" + filepath.Join(c.DataDir, "inboxd.db")
	}
	if c.SecretKeyFile == "" {
		c.SecretKeyFile = filepath.Join(c.DataDir, "secret.key")
	}
	if c.Plugins.Dir == "" {
		c.Plugins.Dir = filepath.Join(c.DataDir, "plugins")
	}
}

// Validate checks every field and their combinations; the error names the field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", key, fmt.Sprintf(format, a...)))
	}
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "want host:port, got %q", c.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad("listen", "port must be 0-65535, got %q", port)
	}
	if !hasScheme(c.DatabaseURL, "sqlite", "postgres", "postgresql") {
		bad("database_url", "want sqlite://PATH or postgres://...")
	}
	if c.KVURL != "embedded" && !hasScheme(c.KVURL, "redis", "rediss") {
		bad("kv_url", "want embedded or redis://host:port/db")
	}
	if c.VectorsURL != "embedded" && !hasScheme(c.VectorsURL, "qdrant") {
		bad("vectors_url", "want embedded or qdrant://host:6334")
	}
	switch c.Auth.Mode {
	case "none", "apikey":
	case "password":
		if c.Auth.Password == "" && c.Auth.PasswordFile == "" {
			bad("auth.password", "password mode needs auth.password or auth.password_file")
		}
	case "oidc":
		if u, err := url.Parse(c.Auth.OIDCIssuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("auth.oidc_issuer", "oidc mode needs the issuer URL, like https://example.eu.auth0.com/")
		}
		if c.Auth.OIDCAudience == "" {
			bad("auth.oidc_audience", "oidc mode needs the API audience")
		}
	default:
		bad("auth.mode", "want none, password, apikey or oidc, got %q", c.Auth.Mode)
	}
	for key, d := range map[string]time.Duration{"workflow.lease": c.Workflow.Lease, "poll.lease": c.Poll.Lease, "jobs.lease": c.Jobs.Lease} {
		if d < time.Second || d > time.Hour {
			bad(key, "must be 1s-1h, got %s", d)
		}
	}
	if c.ShutdownGrace < 0 || c.ShutdownGrace > 5*time.Minute {
		bad("shutdown_grace", "must be 0-5m, got %s", c.ShutdownGrace)
	}
	if c.Poll.Interval < time.Second {
		bad("poll.interval", "must be at least 1s, got %s", c.Poll.Interval)
	}
	for key, n := range map[string]int{"poll.workers": c.Poll.Workers, "workflow.workers": c.Workflow.Workers, "jobs.workers": c.Jobs.Workers} {
		if n < 1 || n > 10000 {
			bad(key, "must be 1-10000, got %d", n)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "want debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "json", "text":
	default:
		bad("log.format", "want json or text, got %q", c.Log.Format)
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}

func hasScheme(raw string, schemes ...string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	for _, s := range schemes {
		if u.Scheme == s {
			return true
		}
	}
	return false
}

// Password returns the password of password mode, from auth.password or the
// file auth.password_file (trailing newline trimmed).
func (c *Config) Password() (string, error) {
	if c.Auth.Password != "" {
		return c.Auth.Password, nil
	}
	if c.Auth.PasswordFile == "" {
		return "", errors.New("config: auth.password: not set")
	}
	b, err := os.ReadFile(c.Auth.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("config: auth.password_file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("config: auth.password_file: %s is empty", c.Auth.PasswordFile)
	}
	return pw, nil
}

// Setting is one line of the effective configuration, as printed by `config check`.
type Setting struct {
	Key, Env, Value string
}

// Effective lists every setting with its value; secrets are masked, and
// passwords inside URLs too.
func (c *Config) Effective() []Setting {
	var out []Setting
	for _, o := range options() {
		v := o.get(c)
		if o.secret {
			v = Mask(v)
		}
		out = append(out, Setting{Key: o.key, Env: EnvName(o.key), Value: v})
	}
	return out
}

// Mask hides a secret: URLs keep their shape with the password and secret
// query parameters replaced; any other non-empty value becomes "*****".
func Mask(v string) string {
	if v == "" || v == "embedded" {
		return v
	}
	u, err := url.Parse(v)
	if err != nil || !strings.Contains(v, "://") {
		return "*****"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	q := u.Query()
	for k := range q {
		if lk := strings.ToLower(k); strings.Contains(lk, "key") || strings.Contains(lk, "password") || strings.Contains(lk, "secret") || strings.Contains(lk, "token") {
			q.Set(k, "xxxxx")
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}
