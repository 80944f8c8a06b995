package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "inboxd.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Load("", env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:8080" || c.Auth.Mode != "none" || c.KVURL != "embedded" || c.VectorsURL != "embedded" {
		t.Errorf("defaults: %+v", c)
	}
	if c.DataDir != "./data" && c.DataDir != "data" {
		t.Errorf("data_dir = %q", c.DataDir)
	}
	if c.DatabaseURL != "sqlite://data/inboxd.db" {
		t.Errorf("database_url = %q", c.DatabaseURL)
	}
	if c.SecretKeyFile != filepath.Join("data", "secret.key") || c.Plugins.Dir != filepath.Join("data", "plugins") {
		t.Errorf("derived paths: %q %q", c.SecretKeyFile, c.Plugins.Dir)
	}
	if c.Poll.Interval != 60*time.Second || !c.Poll.IDLE || c.Poll.Workers < 1 {
		t.Errorf("poll: %+v", c.Poll)
	}
}

func TestStateDirectory(t *testing.T) {
	c, err := Load("", env(map[string]string{"STATE_DIRECTORY": "/var/lib/inboxd:/var/lib/other"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/var/lib/inboxd" || c.DatabaseURL != "sqlite:///var/lib/inboxd/inboxd.db" {
		t.Errorf("got data_dir %q database_url %q", c.DataDir, c.DatabaseURL)
	}
}

func TestFileThenEnv(t *testing.T) {
	p := writeFile(t, `
listen = "0.0.0.0:9000"
kv_url = "redis://127.0.0.1:6379/0"
[auth]
mode = "apikey"
admins = ["a@example.com", "B@example.com"]
[poll]
interval = "30s"
workers = 12
idle = false
`)
	c, err := Load(p, env(map[string]string{"INBOXD_LISTEN": "127.0.0.1:9100", "INBOXD_POLL_WORKERS": "3"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9100" {
		t.Errorf("env must win over file: listen = %q", c.Listen)
	}
	if c.Poll.Workers != 3 || c.Poll.Interval != 30*time.Second || c.Poll.IDLE {
		t.Errorf("poll = %+v", c.Poll)
	}
	if c.Auth.Mode != "apikey" || len(c.Auth.Admins) != 2 || c.KVURL != "redis://127.0.0.1:6379/0" {
		t.Errorf("auth/kv = %+v %q", c.Auth, c.KVURL)
	}
}

func TestErrorsNameTheField(t *testing.T) {
	cases := []struct {
		name string
		file string
		env  map[string]string
		want string
	}{
		{"unknown key", "bogus = 1", nil, `unknown setting "bogus"`},
		{"unknown nested key", "[auth]\nmod = \"none\"", nil, `"auth.mod"`},
		{"bad mode", "", map[string]string{"INBOXD_AUTH_MODE": "magic"}, "auth.mode"},
		{"password mode without password", "", map[string]string{"INBOXD_AUTH_MODE": "password"}, "auth.password"},
		{"oidc without issuer", "", map[string]string{"INBOXD_AUTH_MODE": "oidc", "INBOXD_AUTH_OIDC_AUDIENCE": "x"}, "auth.oidc_issuer"},
		{"oidc without audience", "", map[string]string{"INBOXD_AUTH_MODE": "oidc", "INBOXD_AUTH_OIDC_ISSUER": "https://issuer.example/"}, "auth.oidc_audience"},
		{"bad listen", "", map[string]string{"INBOXD_LISTEN": "8080"}, "listen"},
		{"bad duration", "", map[string]string{"INBOXD_POLL_INTERVAL": "soon"}, "poll.interval"},
		{"too short interval", "", map[string]string{"INBOXD_POLL_INTERVAL": "10ms"}, "poll.interval"},
		{"bad workers", "", map[string]string{"INBOXD_WORKFLOW_WORKERS": "0"}, "workflow.workers"},
		{"bad bool", "", map[string]string{"INBOXD_DEMO": "maybe"}, "demo"},
		{"bad kv url", "", map[string]string{"INBOXD_KV_URL": "memcached://x"}, "kv_url"},
		{"bad database url", "", map[string]string{"INBOXD_DATABASE_URL": "mysql://x"}, "database_url"},
		{"bad log level", "[log]\nlevel = \"loud\"", nil, "log.level"},
		{"bad toml", "listen = ", nil, "inboxd.toml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = writeFile(t, tc.file)
			}
			_, err := Load(path, env(tc.env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestEffectiveMasksSecrets(t *testing.T) {
	c, err := Load("", env(map[string]string{
		"INBOXD_AUTH_MODE":     "password",
		"INBOXD_AUTH_PASSWORD": "hunter2:secret",
		"INBOXD_DATABASE_URL":  "postgres://inboxd:pgpass@db.example:5432/inboxd",
		"INBOXD_KV_URL":        "redis://:redispass@127.0.0.1:6379/0",
		"INBOXD_VECTORS_URL":   "qdrant://q.example:6334?api_key=qkey&tenancy=payload",
	}))
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, s := range c.Effective() {
		all.WriteString(s.Key + "=" + s.Value + "\n")
	}
	out := all.String()
	for _, secret := range []string{"hunter2", "pgpass", "redispass", "qkey"} {
		if strings.Contains(out, secret) {
			t.Errorf("effective config shows secret %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"auth.password=*****", "db.example:5432", "tenancy=payload"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
}

func TestPasswordFile(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load("", env(map[string]string{"INBOXD_AUTH_MODE": "password", "INBOXD_AUTH_PASSWORD_FILE": pw}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Password()
	if err != nil || got != "s3cret" {
		t.Fatalf("Password() = %q, %v", got, err)
	}
}

func TestEnvNames(t *testing.T) {
	for key, want := range map[string]string{"listen": "INBOXD_LISTEN", "auth.oidc_issuer": "INBOXD_AUTH_OIDC_ISSUER", "poll.idle": "INBOXD_POLL_IDLE"} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestSyntaxErrorsDoNotRepeatTheFile: a value that breaks the TOML syntax
// (an unquoted password) is not repeated in the error, which is printed and,
// on a refused reload, logged; the error still says where the problem is.
func TestSyntaxErrorsDoNotRepeatTheFile(t *testing.T) {
	for name, body := range map[string]string{
		"unquoted value":     "[auth]\nmode = \"password\"\npassword = hunterunquoted\n",
		"unterminated value": "[storage]\nredis_url = \"redis://:hunterunquoted@localhost\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(writeFile(t, body), func(string) string { return "" })
			if err == nil {
				t.Fatal("a broken file loaded")
			}
			if strings.Contains(err.Error(), "hunter") {
				t.Errorf("the error repeats the file's text: %v", err)
			}
			if !strings.Contains(err.Error(), "line ") {
				t.Errorf("the error does not say where: %v", err)
			}
		})
	}
}
