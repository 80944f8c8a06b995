package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/inboxd/inboxd/internal/fakellm"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// The fixed secrets of the leak test. They are distinctive on purpose:
// testdata/secrets.txt lists them too, so that scripts/check-secrets.sh finds
// them should any test output (a t.Log, a failure message) ever print one.
// The IMAP password holds a quote and a backslash: in JSON logs and IMAP's
// quoted strings it travels escaped, a form the scan looks for as well.
const (
	leakIMAPPassword       = `leakcheck-IMAP-pw"7\Q-2b9f4e`
	leakWrongIMAPPassword  = "leakcheck-WRONG-imap-pw-8c1d5a"
	leakLLMKey             = "sk-leakcheck-LLM-key-5e7a0c93d1"
	leakEmbeddingKey       = "pa-leakcheck-EMB-key-41f8b2c6"
	leakAuthPassword       = "leakcheck-AUTH-password-93c1e7"
	leakWrongAuthPassword  = "leakcheck-WRONG-auth-pw-0d5a2f"
	leakMispasted          = "leakcheck-MISPASTED-key-3e9b71"
	leakRedisPassword      = "leakcheck-REDIS-pw@6f2d/a1c8"
	leakWrongRedisPassword = "leakcheck-WRONG-redis-pw-77ab3e"
	leakPGPassword         = "leakcheck-PG-pw@c47e/9b2d15"
	leakQdrantKey          = "leakcheck-QDRANT-key-5a0e8c"
	leakWrongAPIKey        = "inboxd_leakcheck-WRONG-api-key-6d0c2e9a41b7f3085e2d"
	// Letters only: the TOML parser quotes such a bare word whole when it
	// cannot parse it, as the value of a key in a broken file.
	leakUnquotedPassword = "LeakcheckUnquotedAuthPassword"
)

// defaultUserID is the single user of auth modes none and password.
const defaultUserID = "12345678-1234-5678-9012-123456789012"

// TestNoSecretLeaks runs the real daemon with distinctive secrets, drives
// every kind of traffic that could echo one (settings, IMAP tests with right
// and wrong passwords, a poll that fails to log in, workflow runs with LLM,
// tool and agent steps, plugin calls, jobs, login failures, API keys, the
// CLI, a plugin that panics), then scans everything the daemon said — its
// whole log, every API answer with its headers, /metrics, the CLI's output,
// the run log rows — and what it stored, for every secret in every encoding
// it could travel in. None may appear, except an issued credential in the
// one answer that issues it.
func TestNoSecretLeaks(t *testing.T) {
	spyDir := buildSpyPlugin(t)
	t.Run("embedded stores, auth mode password", func(t *testing.T) {
		leakEmbeddedPasswordMode(t, spyDir)
	})
	t.Run("redis and postgres with passwords, auth mode oidc and API keys", func(t *testing.T) {
		leakServersOIDCMode(t, spyDir)
	})
}

func leakEmbeddedPasswordMode(t *testing.T, spyDir string) {
	dove := testsvc.Dovecot(t, map[string]string{"leakcheck": leakIMAPPassword})
	scan := newLeakScan(map[string]string{
		"the auth password": leakAuthPassword, "a wrong auth password": leakWrongAuthPassword,
		"the LLM API key": leakLLMKey, "the embedding API key": leakEmbeddingKey,
		"the IMAP password": leakIMAPPassword, "a wrong IMAP password": leakWrongIMAPPassword,
		"a secret pasted into the wrong field": leakMispasted, "a password unquoted in a broken file": leakUnquotedPassword,
	})
	// The password comes from the configuration file, the rest from the environment.
	d := newDaemon(t, "INBOXD_PLUGINS_DIR="+spyDir, "INBOXD_POLL_INTERVAL=1s", "INBOXD_POLL_IDLE=false")
	conf := filepath.Join(d.dataDir, "inboxd.toml")
	writeConf := func(body string) {
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConf(fmt.Sprintf("[auth]\nmode = \"password\"\npassword = %q\nadmins = [%q]\n", leakAuthPassword, defaultUserID))
	d.args = []string{"--config", conf}
	d.start()
	p := &leakProbe{t: t, d: d, scan: scan, dove: dove, llm: leakLLM(t), cliArgs: d.args}

	// Login failures, then a session.
	basic := func(pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte("inboxd:"+pw))
	}
	p.want(401, "", "POST", "/api/v1/auth/login", map[string]string{"password": leakWrongAuthPassword}, nil)
	p.want(401, basic(leakWrongAuthPassword), "GET", "/api/v1/me", nil, nil)
	p.want(401, "Bearer "+leakWrongAuthPassword, "GET", "/api/v1/me", nil, nil)
	p.want(401, "", "GET", "/api/v1/settings", nil, nil)
	var login struct{ Token string }
	answer := p.want(200, "", "POST", "/api/v1/auth/login", map[string]string{"password": leakAuthPassword}, &login)
	scan.issued("the session token", login.Token, answer)
	p.want(200, basic(leakAuthPassword), "GET", "/api/v1/me", nil, nil)
	p.auth, p.admin = "Bearer "+login.Token, "Bearer "+login.Token

	p.traffic()
	p.cliTraffic()

	// A broken file with the password unquoted: refused by a reload (in the
	// daemon log) and by config check (on its output), without repeating it.
	writeConf("[auth]\nmode = \"password\"\npassword = " + leakUnquotedPassword + "\n")
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the reload to be refused", 30*time.Second, func() bool {
		b, _ := os.ReadFile(d.logPath)
		return bytes.Contains(b, []byte("configuration refused"))
	})
	p.cliFails(nil, "config", "check")
	p.finish()
}

func leakServersOIDCMode(t *testing.T, spyDir string) {
	dove := testsvc.Dovecot(t, map[string]string{"leakcheck": leakIMAPPassword})
	redisURL := redisWithPassword(t, testsvc.Redis(t), leakRedisPassword)
	pgURL := withPassword(t, testsvc.Postgres(t), leakPGPassword) // trust auth: the password is never asked for
	issuer := newLeakIssuer(t)
	scan := newLeakScan(map[string]string{
		"the Redis password": leakRedisPassword, "a wrong Redis password": leakWrongRedisPassword,
		"the PostgreSQL password": leakPGPassword, "the Qdrant API key": leakQdrantKey,
		"the LLM API key": leakLLMKey, "the embedding API key": leakEmbeddingKey,
		"the IMAP password": leakIMAPPassword, "a wrong IMAP password": leakWrongIMAPPassword,
		"a secret pasted into the wrong field": leakMispasted, "a wrong API key": leakWrongAPIKey,
	})
	d := newDaemon(t, "INBOXD_DATABASE_URL="+pgURL, "INBOXD_KV_URL="+redisURL,
		"INBOXD_AUTH_MODE=oidc", "INBOXD_AUTH_OIDC_ISSUER="+issuer.url, "INBOXD_AUTH_OIDC_AUDIENCE="+issuer.audience,
		"INBOXD_PLUGINS_DIR="+spyDir, "INBOXD_POLL_INTERVAL=1s", "INBOXD_POLL_IDLE=false")
	d.start()
	p := &leakProbe{t: t, d: d, scan: scan, dove: dove, llm: leakLLM(t), redisURL: redisURL, pgURL: pgURL}

	// The admin comes from the CLI, with an API key shown in its output.
	out, name := p.cli("user", "add", "--email", "admin@leak.example", "--admin")
	adminKey := apiKeyIn(t, out)
	scan.issued("the admin's API key", adminKey, name)
	p.admin = "Bearer " + adminKey

	// Refused credentials: a wrong API key and JWTs that are expired, for
	// another audience or signed by another key.
	now := time.Now()
	claims := func(aud string, exp time.Time) map[string]any {
		return map[string]any{"iss": issuer.url, "aud": aud, "sub": "leakcheck|oidc-user", "email": "oidc-user@leak.example",
			"email_verified": true, "iat": now.Unix(), "exp": exp.Unix()}
	}
	for what, tok := range map[string]string{
		"an expired JWT":              issuer.token(t, issuer.key, claims(issuer.audience, now.Add(-time.Hour))),
		"a JWT for another audience":  issuer.token(t, issuer.key, claims("https://elsewhere.example/", now.Add(time.Hour))),
		"a JWT signed by another key": issuer.token(t, issuer.otherKey, claims(issuer.audience, now.Add(time.Hour))),
		"a malformed JWT":             "eyJhbGciOiJSUzI1NiJ9.leakcheck-garbage-claims-1b7e.leakcheck-garbage-signature-3f0a",
	} {
		scan.jwt(what, tok)
		p.want(401, "Bearer "+tok, "GET", "/api/v1/me", nil, nil)
	}
	p.want(401, "Bearer "+leakWrongAPIKey, "GET", "/api/v1/me", nil, nil)
	p.want(401, "", "GET", "/api/v1/settings", nil, nil)

	tok := issuer.token(t, issuer.key, claims(issuer.audience, now.Add(time.Hour)))
	scan.jwt("the OIDC user's JWT", tok)
	p.auth = "Bearer " + tok
	p.want(200, p.auth, "GET", "/api/v1/me", nil, nil)

	p.traffic()
	p.cliTraffic()

	// The CLI on stores it cannot reach: the errors name the URL, never its password.
	wrongRedis := withPassword(t, redisURL, leakWrongRedisPassword)
	p.cliFails(map[string]string{"INBOXD_KV_URL": wrongRedis}, "user", "list")
	p.cliFails(map[string]string{"INBOXD_DATABASE_URL": withPort(t, pgURL, testsvc.FreePort(t))}, "user", "list")
	p.cliFails(map[string]string{"INBOXD_KV_URL": withPort(t, redisURL, testsvc.FreePort(t))}, "user", "list")
	qdrant := "qdrant://127.0.0.1:6334?api_key=" + url.QueryEscape(leakQdrantKey)
	p.cliEnv(map[string]string{"INBOXD_VECTORS_URL": qdrant}, "config", "check")
	// A daemon that cannot open its vector store: the error names the URL.
	p.cliFails(map[string]string{"INBOXD_VECTORS_URL": qdrant + "&tenancy=leakcheck-bogus"}, "serve")
	p.cliFails(map[string]string{"INBOXD_VECTORS_URL": "qdrant://127.0.0.1:6334?apikey=" + url.QueryEscape(leakQdrantKey)}, "serve")
	p.finish()
}

// leakLLM is the fake provider of the leak test: an agent prompt ("AGENT")
// calls two spy tools, then answers; the model "echo-key" fails with an
// error that repeats the API key, as some providers do; anything else gets
// a short text.
func leakLLM(t *testing.T) *fakellm.Server {
	srv := fakellm.New(t)
	srv.SetHandler(func(r fakellm.Request) fakellm.Reply {
		if r.Model == "echo-key" {
			return fakellm.Error(401, "Incorrect API key provided: "+r.APIKey+". You can find your API key at https://example.com/keys")
		}
		agent, toolAnswered := false, false
		for _, m := range r.Messages {
			agent = agent || strings.Contains(m.Content, "AGENT")
			toolAnswered = toolAnswered || m.Role == "tool"
		}
		if agent && !toolAnswered {
			return fakellm.CallTools(fakellm.Call("spy-token", nil), fakellm.Call("spy-settings", nil))
		}
		return fakellm.Text("a short summary")
	})
	return srv
}

// leakProbe drives one daemon and keeps every answer for the scan.
type leakProbe struct {
	t     *testing.T
	d     *daemon
	scan  *leakScan
	dove  *testsvc.DovecotServer
	llm   *fakellm.Server
	auth  string // Authorization of the user the traffic runs as
	admin string // Authorization of an admin

	redisURL, pgURL  string   // the scale-out stores, "" when embedded
	cliArgs          []string // flags for every command (--config FILE)
	answers, cliRuns int
}

// do makes one API call and keeps the answer (status, headers, body) as an
// artifact; it returns the status and the artifact's name. body is sent
// as it is when a string, else as JSON.
func (p *leakProbe) do(auth, method, path string, body, out any) (int, string) {
	p.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		r = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, p.d.base+path, r)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	p.answers++
	name := fmt.Sprintf("answer %d to %s %s", p.answers, method, path)
	var dump bytes.Buffer
	fmt.Fprintf(&dump, "%s\n", resp.Status)
	resp.Header.Write(&dump)
	dump.WriteString("\n")
	dump.Write(raw)
	p.scan.add("answer", name, dump.Bytes())
	if out != nil && len(raw) > 0 && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			p.t.Fatalf("%s %s: %d, not JSON: %v", method, path, resp.StatusCode, err)
		}
	}
	return resp.StatusCode, name
}

// want is do that fails the test on another status.
func (p *leakProbe) want(code int, auth, method, path string, body, out any) string {
	p.t.Helper()
	got, name := p.do(auth, method, path, body, out)
	if got != code {
		p.t.Fatalf("%s %s: %d, want %d (%s)", method, path, got, code, name)
	}
	return name
}

// get is a GET as the probe's user that answers 200.
func (p *leakProbe) get(path string, out any) {
	p.t.Helper()
	p.want(200, p.auth, "GET", path, nil, out)
}

// traffic is what both variants do as their user.
func (p *leakProbe) traffic() {
	t := p.t
	p.settingsTraffic()
	wfs := p.workflowTraffic()
	p.toolTraffic()
	p.jobTraffic()

	// Admin: users, and an API key issued by the API.
	var u struct{ ID string }
	p.want(201, p.admin, "POST", "/api/v1/users", map[string]any{"email": "made-by-admin@leak.example"}, &u)
	var key struct {
		APIKey string `json:"api_key"`
	}
	name := p.want(201, p.admin, "POST", "/api/v1/users/"+u.ID+"/api-keys", map[string]string{"name": "leakcheck"}, &key)
	p.scan.issued("an API key issued by the API", key.APIKey, name)
	p.do("Bearer "+key.APIKey, "GET", "/api/v1/me", nil, nil) // 200 with API keys, 401 in mode password
	p.want(200, p.admin, "GET", "/api/v1/users", nil, nil)
	p.want(200, p.admin, "GET", "/api/v1/users/"+u.ID, nil, nil)

	// The IMAP password goes wrong: the poll fails to log in and says so.
	p.get("/api/v1/settings", nil)
	p.want(200, p.auth, "PUT", "/api/v1/settings", map[string]any{"imap_password": leakWrongIMAPPassword}, nil)
	waitUntil(t, "the poll to report the failed login", 60*time.Second, func() bool {
		var st struct {
			Poll struct {
				LastError string `json:"last_error"`
			}
		}
		p.get("/api/v1/inbox/status", &st)
		return st.Poll.LastError != ""
	})
	var res struct{ OK bool }
	p.want(200, p.auth, "POST", "/api/v1/settings/test-imap", "", &res)
	if res.OK {
		t.Error("test-imap with the wrong stored password succeeded")
	}
	var tool struct {
		IsError bool `json:"is_error"`
	}
	p.want(200, p.auth, "POST", "/api/v1/tools/imap/list_most_recent_inbox_emails", map[string]any{"count": 5}, &tool)
	if !tool.IsError {
		t.Error("an IMAP tool call with the wrong password did not fail")
	}

	// A plugin that dies of a panic: its stderr (the trace) goes to the daemon log.
	if code, name := p.do(p.auth, "POST", "/api/v1/tools/spy/crash", "{}", nil); code != 502 && code != 200 {
		t.Errorf("the spy's crash: %d (%s)", code, name)
	}
	waitUntil(t, "the spy plugin's panic in the daemon log", 30*time.Second, func() bool {
		b, _ := os.ReadFile(p.d.logPath)
		return bytes.Contains(b, []byte("spy: deliberate panic"))
	})

	// Everything the user can read back.
	for _, path := range []string{"/api/v1/me", "/api/v1/settings", "/api/v1/inbox/status", "/api/v1/tools",
		"/api/v1/workflows", "/api/v1/logs/grouped", "/api/v1/logs/costs", "/api/v1/embedding-models",
		"/api/v1/settings/tone-of-voice", "/api/v1/settings/tone-of-voice/status"} {
		p.get(path, nil)
	}
	for _, wf := range wfs {
		p.get("/api/v1/workflows/"+wf+"/export", nil)
		var list struct{ Items []instance }
		p.get("/api/v1/workflows/"+wf+"/instances?limit=100", &list)
		for _, in := range list.Items {
			p.get("/api/v1/instances/"+in.ID, nil)
			p.get("/api/v1/logs/usage/"+in.ID, nil)
		}
	}
	var logs struct{ Items []struct{ ID string } }
	p.get("/api/v1/logs?limit=500", &logs)
	if len(logs.Items) == 0 {
		t.Error("no run log rows")
	}
	for _, row := range logs.Items {
		p.get("/api/v1/logs/"+row.ID, nil)
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		p.want(200, "", "GET", path, nil, nil)
	}
}

func (p *leakProbe) settingsTraffic() {
	t := p.t
	p.get("/api/v1/me", nil)
	p.want(200, p.auth, "PUT", "/api/v1/settings", map[string]any{
		"imap_server": p.dove.Host, "imap_port": p.dove.Port, "imap_security": "none",
		"imap_username": "leakcheck", "imap_password": leakIMAPPassword,
		"llm_base_url": p.llm.URL(), "llm_model": "leak-model", "llm_api_key": leakLLMKey,
		"embedding_model": "offline-hash-384", "embedding_api_key": leakEmbeddingKey, "timezone": "Europe/Amsterdam",
	}, nil)
	var st map[string]any
	p.get("/api/v1/settings", &st)
	for _, f := range []string{"imap_password", "llm_api_key", "embedding_api_key"} {
		if st[f] != "*****" {
			t.Errorf("GET settings: %s = %s, want *****", f, p.scan.mask(fmt.Append(nil, st[f])))
		}
	}
	p.want(200, p.auth, "PUT", "/api/v1/settings", map[string]any{"imap_password": "*****", "llm_api_key": "*****"}, nil)
	// A secret pasted into the wrong field, and a body that is not JSON.
	for _, f := range []string{"imap_port", "imap_security", "timezone"} {
		p.want(400, p.auth, "PUT", "/api/v1/settings", map[string]any{f: leakMispasted}, nil)
	}
	p.want(400, p.auth, "PUT", "/api/v1/settings", `{"imap_password": "`+leakMispasted+`",}`, nil)
	p.want(400, p.auth, "PUT", "/api/v1/settings", `{"imap_password": "`+leakMispasted, nil)

	// test-imap: the stored account, the posted right and wrong passwords.
	for _, c := range []struct {
		what string
		body any
		ok   bool
	}{
		{"the stored account", "", true},
		{"the right password", map[string]any{"imap_password": leakIMAPPassword}, true},
		{"a wrong password", map[string]any{"imap_password": leakWrongIMAPPassword}, false},
		{"no server", map[string]any{"imap_password": leakWrongIMAPPassword, "imap_port": testsvc.FreePort(t)}, false},
	} {
		var res struct{ OK bool }
		p.want(200, p.auth, "POST", "/api/v1/settings/test-imap", c.body, &res)
		if res.OK != c.ok {
			t.Errorf("test-imap with %s: ok=%v, want %v", c.what, res.OK, c.ok)
		}
	}
}

// workflowTraffic runs a manual workflow with LLM, tool and agent steps,
// one whose provider echoes the API key in its error, and one on new mail;
// it returns their ids.
func (p *leakProbe) workflowTraffic() []string {
	t := p.t
	create := func(wf map[string]any) string {
		var out struct{ ID string }
		p.want(201, p.auth, "POST", "/api/v1/workflows", wf, &out)
		return out.ID
	}
	probe := create(map[string]any{"name": "leak probe", "steps": []map[string]any{
		{"name": "summarise", "kind": "llm", "system_prompt": "Summarise <<trigger_output>>"},
		{"name": "note token", "kind": "tool", "tool": "spy-token", "arguments": map[string]any{}},
		{"name": "agent", "kind": "agent", "system_prompt": "AGENT: look around", "tools": []string{"spy-token", "spy-settings"}, "max_cycles": 3},
	}})
	echo := create(map[string]any{"name": "key echo", "steps": []map[string]any{
		{"name": "ask", "kind": "llm", "model": "echo-key", "system_prompt": "Anything"},
	}})
	onMail := create(map[string]any{"name": "on mail", "active": true, "trigger": map[string]any{"type": "new_email"},
		"steps": []map[string]any{{"name": "summarise", "kind": "llm", "system_prompt": "Summarise <<trigger_output>>"}}})

	waitUntil(t, "the inbox baseline", 60*time.Second, func() bool {
		var st struct{ Poll struct{ State string } }
		p.get("/api/v1/inbox/status", &st)
		return st.Poll.State == "active"
	})
	p.dove.Deliver(t, "leakcheck", []byte("From: customer@leak.example\r\nTo: leakcheck@leak.example\r\nSubject: a question\r\n"+
		"Message-ID: <leak-1@leak.example>\r\n\r\nWhat does it cost?\r\n"))

	wait := func(wf, status string, run any) {
		var inst instance
		if run != nil {
			p.want(202, p.auth, "POST", "/api/v1/workflows/"+wf+"/run", run, &inst)
		}
		waitUntil(t, "a run of "+wf+" to end", 90*time.Second, func() bool {
			if inst.ID == "" {
				var list struct{ Items []instance }
				p.get("/api/v1/workflows/"+wf+"/instances", &list)
				if len(list.Items) == 0 {
					return false
				}
				inst = list.Items[0]
			}
			p.get("/api/v1/instances/"+inst.ID, &inst)
			return inst.Status == "completed" || inst.Status == "failed"
		})
		if inst.Status != status {
			t.Errorf("workflow %s: run %s (%s), want %s", wf, inst.Status, p.scan.mask([]byte(inst.Error)), status)
		}
	}
	wait(probe, "completed", map[string]any{"input": "hello"})
	wait(echo, "failed", map[string]any{"email": map[string]string{"from": "a@leak.example", "subject": "hi", "body": "hello"}})
	wait(onMail, "completed", nil)
	return []string{probe, echo, onMail}
}

func (p *leakProbe) toolTraffic() {
	t := p.t
	p.get("/api/v1/tools", nil)
	for _, tool := range []string{"spy/token", "spy/settings", "spy/env", "imap/list_most_recent_inbox_emails", "tone/get_tone_of_voice_profile"} {
		var res struct {
			IsError bool            `json:"is_error"`
			Content json.RawMessage `json:"content"`
		}
		p.want(200, p.auth, "POST", "/api/v1/tools/"+tool, "{}", &res)
		if res.IsError && tool != "tone/get_tone_of_voice_profile" {
			t.Errorf("tool %s: is_error, %s", tool, p.scan.mask(res.Content))
		}
	}
}

func (p *leakProbe) jobTraffic() {
	t := p.t
	if code, _ := p.do(p.auth, "POST", "/api/v1/inbox/initialize", "", nil); code != 202 && code != 200 {
		t.Fatalf("start the inbox initialisation: %d", code)
	}
	waitUntil(t, "the inbox initialisation", 90*time.Second, func() bool {
		var st struct{ Initialization initStatus }
		p.get("/api/v1/inbox/status", &st)
		return st.Initialization.Status == "completed" || st.Initialization.Status == "failed"
	})
	for _, job := range []string{"tone-of-voice", "label-descriptions"} {
		if code, _ := p.do(p.auth, "POST", "/api/v1/inbox/"+job, "", nil); code != 202 && code != 200 {
			t.Errorf("start %s: %d", job, code)
		}
	}
	waitUntil(t, "the tone of voice job", 90*time.Second, func() bool {
		var st struct{ Status string }
		p.get("/api/v1/settings/tone-of-voice/status", &st)
		return st.Status != "running"
	})
}

// cliTraffic runs the commands that print configuration and keys.
func (p *leakProbe) cliTraffic() {
	p.cli("config", "check")
	out, name := p.cli("user", "add", "--email", "cli-user@leak.example")
	p.scan.issued("an API key issued by `user add`", apiKeyIn(p.t, out), name)
	out, name = p.cli("user", "api-key", "cli-user@leak.example")
	p.scan.issued("an API key issued by `user api-key`", apiKeyIn(p.t, out), name)
	p.cli("user", "list")
}

// cli runs an inboxd command on the daemon's configuration, keeps its
// output as an artifact, and fails the test when it fails. It returns the
// output and the artifact's name.
func (p *leakProbe) cli(args ...string) (string, string) {
	p.t.Helper()
	return p.cliEnv(nil, args...)
}

// cliEnv is cli with environment overrides.
func (p *leakProbe) cliEnv(env map[string]string, args ...string) (string, string) {
	p.t.Helper()
	out, name, err := p.runCLI(env, args...)
	if err != nil {
		p.t.Fatalf("%s: %v", name, err) // the output is an artifact: it is not printed
	}
	return out, name
}

// cliFails is a command that must fail (a store it cannot reach).
func (p *leakProbe) cliFails(env map[string]string, args ...string) {
	p.t.Helper()
	if _, name, err := p.runCLI(env, args...); err == nil {
		p.t.Errorf("%s succeeded, want a failure", name)
	}
}

func (p *leakProbe) runCLI(env map[string]string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if len(args) >= 2 && len(p.cliArgs) > 0 { // flags go before a command's arguments
		args = append(append(append([]string(nil), args[:2]...), p.cliArgs...), args[2:]...)
	}
	cmd := exec.CommandContext(ctx, p.d.bin, args...)
	cmd.Env = append([]string(nil), p.d.env...)
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	out, err := cmd.CombinedOutput()
	p.cliRuns++
	name := fmt.Sprintf("output of `inboxd %s` (run %d, overriding %v)", strings.Join(args, " "), p.cliRuns, keys)
	p.scan.add("cli", name, out)
	return string(out), name, err
}

// apiKeyIn returns the key of a "api key: KEY" or "api key for ...: KEY" line.
func apiKeyIn(t *testing.T, out string) string {
	t.Helper()
	if m := regexp.MustCompile(`(?m)^api key[^:\n]*: (inboxd_\S+)$`).FindStringSubmatch(out); m != nil {
		return m[1]
	}
	t.Fatalf("no API key in the output:\n%s", out)
	return ""
}

// finish stops the daemon cleanly, gathers its log, the capability tokens
// the spy plugin saw and the stores' contents, and scans it all.
func (p *leakProbe) finish() {
	t := p.t
	// The plugins running now (the built-in imap and tone, and the spy
	// from the plugin directory when it is up): none may outlive the
	// daemon (issue #5).
	plugins := childProcesses(t, p.d.cmd.Process.Pid)
	if len(plugins) < 2 {
		t.Errorf("%d plugin processes before SIGTERM (%v); want at least imap and tone", len(plugins), plugins)
	}
	if err := p.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.d.exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no exit within 60 s of SIGTERM")
	}
	for pid, cmdline := range plugins {
		if now, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline")); err == nil && string(now) == cmdline {
			t.Errorf("plugin process %s (%q) outlived the daemon after SIGTERM", pid, strings.ReplaceAll(cmdline, "\x00", " "))
		}
	}
	log, err := os.ReadFile(p.d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.scan.add("log", "the daemon log (stdout and stderr, the plugins' output included)", log)

	// Each call of a spy tool noted its capability token (HOME is the data dir).
	tokens, _ := os.ReadFile(filepath.Join(p.d.dataDir, "spy-tokens"))
	n := 0
	for _, tok := range strings.Fields(string(tokens)) {
		n++
		p.scan.secret(fmt.Sprintf("capability token %d", n), tok)
	}
	if n < 3 {
		t.Errorf("the spy plugin saw %d capability tokens, want at least 3 (tool step, agent, API)", n)
	}

	// At rest: the secrets are sealed or hashed, never stored in the clear.
	if p.pgURL == "" {
		for _, f := range []string{"inboxd.db", "inboxd.db-wal"} {
			if b, err := os.ReadFile(filepath.Join(p.d.dataDir, f)); err == nil {
				p.scan.add("at rest", "at rest: "+f, b)
			}
		}
	} else {
		p.scan.add("at rest", "at rest: every Redis key and value", redisDump(t, p.redisURL))
		p.scan.add("at rest", "at rest: every PostgreSQL table", pgDump(t, p.pgURL))
	}
	p.scan.check(t)
}

// buildSpyPlugin builds the spy plugin into a directory of its own (the
// plugin directory of the daemons under test). Its tools: "token" notes the
// call's capability token in $HOME/spy-tokens, outside the daemon's log;
// "settings" answers what the host's settings service gives a plugin that
// declared no need; "env" answers the plugin's environment; "crash" panics
// off the call's goroutine, which kills the process with a trace on stderr.
func buildSpyPlugin(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	const code = `package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/inboxd/inboxd/sdk"
)

func main() {
	obj := []byte("{\"type\":\"object\"}")
	sdk.Serve(sdk.Plugin{Name: "spy", Version: "1.0.0", Tools: []sdk.Tool{
		{Name: "token", Description: "notes the call's capability token", InputSchema: obj,
			Handler: func(ctx context.Context, _ sdk.Call) (sdk.Result, error) {
				md, _ := metadata.FromIncomingContext(ctx)
				f, err := os.OpenFile(filepath.Join(os.Getenv("HOME"), "spy-tokens"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
				if err != nil {
					return sdk.Result{}, err
				}
				defer f.Close()
				for _, tok := range md.Get(sdk.MetadataCapability) {
					f.WriteString(tok + "\n")
				}
				return sdk.Text("noted"), nil
			}},
		{Name: "settings", Description: "answers the host's settings", InputSchema: obj,
			Handler: func(ctx context.Context, _ sdk.Call) (sdk.Result, error) {
				s, err := sdk.HostFrom(ctx).Settings(ctx)
				if err != nil {
					return sdk.Result{}, err
				}
				return sdk.JSON(s)
			}},
		{Name: "env", Description: "answers the plugin's environment", InputSchema: obj,
			Handler: func(context.Context, sdk.Call) (sdk.Result, error) { return sdk.JSON(os.Environ()) }},
		{Name: "crash", Description: "dies of a panic", InputSchema: obj,
			Handler: func(context.Context, sdk.Call) (sdk.Result, error) {
				go func() { panic("spy: deliberate panic") }()
				time.Sleep(10 * time.Second)
				return sdk.Text("still alive"), nil
			}},
	}})
}
`
	if err := os.WriteFile(filepath.Join(src, "spy.go"), []byte(code), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "spy"), filepath.Join(src, "spy.go")).CombinedOutput(); err != nil {
		t.Fatalf("build the spy plugin: %v\n%s", err, out)
	}
	return dir
}

// redisWithPassword sets a password on a test Redis (requirepass) and
// returns its URL with the password.
func redisWithPassword(t *testing.T, redisURL, password string) string {
	t.Helper()
	rdb := redis.NewClient(scaleRedisOptions(t, redisURL))
	defer rdb.Close()
	if err := rdb.ConfigSet(context.Background(), "requirepass", password).Err(); err != nil {
		t.Fatalf("redis requirepass: %v", err)
	}
	return withPassword(t, redisURL, password)
}

// withPassword puts a password into a URL's user info.
func withPassword(t *testing.T, raw, password string) string {
	return editURL(t, raw, func(u *url.URL) { u.User = url.UserPassword(u.User.Username(), password) })
}

// withPort points a URL at another port (where nothing listens).
func withPort(t *testing.T, raw string, port int) string {
	return editURL(t, raw, func(u *url.URL) { u.Host = u.Hostname() + ":" + strconv.Itoa(port) })
}

func editURL(t *testing.T, raw string, edit func(*url.URL)) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	edit(u)
	return u.String()
}

// redisDump lists every key with its value (DUMP for non-strings).
func redisDump(t *testing.T, redisURL string) []byte {
	t.Helper()
	rdb := redis.NewClient(scaleRedisOptions(t, redisURL))
	defer rdb.Close()
	ctx := context.Background()
	var out bytes.Buffer
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			v, err = rdb.Dump(ctx, k).Result()
		}
		if err != nil {
			t.Fatalf("redis: read %s: %v", k, err)
		}
		fmt.Fprintf(&out, "%s = %s\n", k, v)
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("redis scan: %v", err)
	}
	return out.Bytes()
}

// pgDump lists every row of every table of the public schema as JSON.
func pgDump(t *testing.T, pgURL string) []byte {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for _, table := range tables {
		var rows string
		q := fmt.Sprintf(`SELECT coalesce(string_agg(row_to_json(t)::text, E'\n'), '') FROM %s t`, pgx.Identifier{table}.Sanitize())
		if err := conn.QueryRow(ctx, q).Scan(&rows); err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		fmt.Fprintf(&out, "== %s\n%s\n", table, rows)
	}
	return out.Bytes()
}

// leakIssuer is an OIDC issuer on loopback: discovery, a JWKS with one RSA
// key, and JWTs signed with it (or with a key it does not publish).
type leakIssuer struct {
	url, audience string
	key, otherKey *rsa.PrivateKey
}

func newLeakIssuer(t *testing.T) *leakIssuer {
	t.Helper()
	is := &leakIssuer{audience: "https://inboxd.leak.example/api"}
	for _, k := range []**rsa.PrivateKey{&is.key, &is.otherKey} {
		var err error
		if *k, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
	}
	b64 := base64.RawURLEncoding.EncodeToString
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": is.url, "jwks_uri": is.url + "/jwks.json"})
	})
	mux.HandleFunc("/jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{"kty": "RSA", "kid": "leak-key", "use": "sig", "alg": "RS256",
			"n": b64(is.key.N.Bytes()), "e": b64(big.NewInt(int64(is.key.E)).Bytes())}}})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	is.url = srv.URL
	return is
}

// token signs claims as an RS256 JWT with key (kid "leak-key").
func (is *leakIssuer) token(t *testing.T, key *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": "leak-key"})
	body, _ := json.Marshal(claims)
	signed := b64(hdr) + "." + b64(body)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + b64(sig)
}

// leakScan holds the secrets and everything the daemon said or stored.
type leakScan struct {
	secrets   []leakSecret
	artifacts []leakArtifact
	issuers   map[string]string // artifact -> the kind of credential it issued (may show)
}

type leakSecret struct {
	name, value string
	shownIn     string // the one artifact that may show it (the answer that issued it)
}

type leakArtifact struct {
	kind, name string
	data       []byte
}

// newLeakScan starts a scan for the secrets given by name.
func newLeakScan(secrets map[string]string) *leakScan {
	s := &leakScan{issuers: map[string]string{}}
	for name, v := range secrets {
		s.secret(name, v)
	}
	return s
}

func (s *leakScan) secret(name, value string) {
	s.secrets = append(s.secrets, leakSecret{name: name, value: value})
}

// issued records a credential that the artifact named shownIn hands out: it
// may appear there, and nowhere else.
func (s *leakScan) issued(name, value, shownIn string) {
	if value == "" {
		panic("leakScan: empty issued secret " + name)
	}
	s.secrets = append(s.secrets, leakSecret{name: name, value: value, shownIn: shownIn})
	s.issuers[shownIn] = name
}

// jwt records a JWT: the whole token and its signature are secrets (the
// header and claims are not: the claims of the same user repeat).
func (s *leakScan) jwt(name, tok string) {
	s.secret(name, tok)
	if i := strings.LastIndexByte(tok, '.'); i >= 0 && len(tok)-i > 20 {
		s.secret(name+" (its signature)", tok[i+1:])
	}
}

// add keeps an artifact of a kind: answer, cli, log or at rest.
func (s *leakScan) add(kind, name string, data []byte) {
	s.artifacts = append(s.artifacts, leakArtifact{kind: kind, name: name, data: append([]byte(nil), data...)})
}

// leakForm is one way a secret may be written.
type leakForm struct {
	how  string
	text []byte
}

// secretForms lists the encodings a secret could travel in: as it is,
// escaped in JSON, Go-quoted, URL-escaped (query, path and user info), hex,
// and base64 (standard and URL alphabets) at each of the three alignments
// it may have inside a longer encoded value (like "user:password" in an
// HTTP Basic header), trimmed to the characters that only it determines.
func secretForms(v string) []leakForm {
	var forms []leakForm
	seen := map[string]bool{}
	add := func(how, text string) {
		if len(text) >= 12 && !seen[text] {
			seen[text] = true
			forms = append(forms, leakForm{how, []byte(text)})
		}
	}
	add("plain", v)
	js, _ := json.Marshal(v)
	add("JSON-escaped", string(js[1:len(js)-1]))
	q := strconv.Quote(v)
	add("Go-quoted", q[1:len(q)-1])
	add("URL query-escaped", url.QueryEscape(v))
	add("URL path-escaped", url.PathEscape(v))
	add("URL user-info-escaped", strings.TrimPrefix(url.UserPassword("", v).String(), ":"))
	add("hex", hex.EncodeToString([]byte(v)))
	for _, enc := range []struct {
		how string
		e   *base64.Encoding
	}{{"base64", base64.StdEncoding}, {"base64url", base64.URLEncoding}} {
		for shift := range 3 {
			e := enc.e.EncodeToString(append(make([]byte, shift), v...))
			start, end := (8*shift+5)/6, len(e)-4 // skip what the neighbours share
			if end > start {
				add(fmt.Sprintf("%s (offset %d)", enc.how, shift), e[start:end])
			}
		}
	}
	return forms
}

// Credential shapes found without knowing the value: a capability token
// (base64url payload "." base64url HMAC-SHA256, payload version 1 with a
// 36-character user id at byte 17), a session token (a 24-byte payload),
// an API key.
var (
	leakTokenShape  = regexp.MustCompile(`(?:^|[^A-Za-z0-9_.-])([A-Za-z0-9_-]{24,})\.[A-Za-z0-9_-]{43}(?:$|[^A-Za-z0-9_.-])`)
	leakAPIKeyShape = regexp.MustCompile(`inboxd_[A-Za-z0-9_-]{40,}`)
)

func credentialShapes(data []byte) []string {
	var kinds []string
	for _, m := range leakTokenShape.FindAllSubmatch(data, -1) {
		p, err := base64.RawURLEncoding.DecodeString(string(m[1]))
		switch {
		case err != nil:
		case len(p) >= 18+36 && p[0] == 1 && p[17] == 36:
			kinds = append(kinds, "a capability token")
		case len(p) == 24:
			kinds = append(kinds, "a session token")
		}
	}
	for _, m := range leakAPIKeyShape.FindAll(data, -1) {
		if bytes.ContainsFunc(m, func(r rune) bool { return r >= 'A' && r <= 'Z' }) { // not a metric name
			kinds = append(kinds, "an API key")
		}
	}
	return kinds
}

type compiledSecret struct {
	leakSecret
	forms []leakForm
}

func (s *leakScan) compiled() []compiledSecret {
	var all []compiledSecret
	for _, sec := range s.secrets {
		all = append(all, compiledSecret{sec, secretForms(sec.value)})
	}
	return all
}

// mask replaces every form of every secret in text by the secret's name:
// what the test prints is test output, scanned for secrets in its turn.
func (s *leakScan) mask(text []byte) string {
	text = bytes.Clone(text)
	for _, c := range s.compiled() {
		for _, f := range c.forms {
			text = bytes.ReplaceAll(text, f.text, []byte("<"+c.name+">"))
		}
	}
	return string(text)
}

// check reports every secret found, by artifact and line, with every
// secret masked in the context it prints; it logs how much was scanned.
func (s *leakScan) check(t *testing.T) {
	t.Helper()
	all := s.compiled()
	for _, c := range all {
		if len(c.value) < 16 {
			t.Fatalf("secret %s is too short to scan for without false hits", c.name)
		}
	}
	// around is the hit's line, cut to a window around it, masked.
	around := func(data []byte, i int) string {
		ls := max(bytes.LastIndexByte(data[:i], '\n')+1, i-200)
		le := bytes.IndexByte(data[i:], '\n')
		if le < 0 || le > 200 {
			le = min(len(data)-i, 200)
		}
		return s.mask(data[ls : i+le])
	}
	var bytesScanned, lines, hits, forms int
	for _, c := range all {
		forms += len(c.forms)
	}
	kinds := map[string]int{}
	for _, a := range s.artifacts {
		bytesScanned += len(a.data)
		lines += bytes.Count(a.data, []byte("\n")) + 1
		kinds[a.kind]++
		for _, c := range all {
			if c.shownIn == a.name {
				continue
			}
			for _, f := range c.forms {
				for off := 0; ; {
					i := bytes.Index(a.data[off:], f.text)
					if i < 0 {
						break
					}
					i += off
					off = i + len(f.text)
					hits++
					t.Errorf("LEAK: %s (%s) in %s, line %d: %s", c.name, f.how, a.name,
						bytes.Count(a.data[:i], []byte("\n"))+1, around(a.data, i))
				}
			}
		}
		if _, issuing := s.issuers[a.name]; !issuing {
			for _, kind := range credentialShapes(a.data) {
				hits++
				t.Errorf("LEAK: %s (found by its shape) in %s", kind, a.name)
			}
		}
	}
	t.Logf("leak scan: %d secrets (%d forms), %d API answers, %d CLI outputs, %d daemon log(s), %d stores at rest: %d bytes in %d lines, %d leaks",
		len(all), forms, kinds["answer"], kinds["cli"], kinds["log"], kinds["at rest"], bytesScanned, lines, hits)
}

// TestLeakScanFindsEncodedSecrets: the scan is no better than its forms, so
// they are checked against the encodings a leak would really take.
func TestLeakScanFindsEncodedSecrets(t *testing.T) {
	pw := leakIMAPPassword
	js, _ := json.Marshal(map[string]string{"password": pw})
	cases := map[string]string{
		"a JSON log line":        string(js),
		"an HTTP Basic header":   "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("leakcheck:"+pw)),
		"a URL":                  "redis://:" + url.QueryEscape(pw) + "@127.0.0.1:6379/0",
		"a URL's user info":      (&url.URL{Scheme: "postgres", User: url.UserPassword("u", pw), Host: "h"}).String(),
		"a %q":                   fmt.Sprintf("login %q failed", pw),
		"base64url in a payload": base64.RawURLEncoding.EncodeToString([]byte("{\"x\":1,\"pw\":\"" + pw + "\"}")),
	}
	for what, text := range cases {
		found := false
		for _, f := range secretForms(pw) {
			found = found || bytes.Contains([]byte(text), f.text)
		}
		if !found {
			t.Errorf("the scan misses the password in %s", what) // the text would print it
		}
	}
	if got := credentialShapes([]byte(`"token":"` + strings.Repeat("A", 40) + "." + strings.Repeat("b", 43) + `"`)); len(got) != 0 {
		t.Errorf("not a token, found %v", got)
	}
	payload := append([]byte{1}, make([]byte, 16)...)
	payload = append(append(payload, 36), defaultUserID...)
	tok := base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	if got := credentialShapes([]byte(`"x-inboxd-capability":"` + tok + `"`)); len(got) != 1 || got[0] != "a capability token" {
		t.Errorf("a capability token in a log line: found %v", got)
	}
}

// TestSecretKeyFileMustBe0600: the binary refuses a secret key file that its
// group or others can read, naming the file and the mode it must have, and
// starts once the file is 0600.
func TestSecretKeyFileMustBe0600(t *testing.T) {
	d := newDaemon(t)
	keyFile := filepath.Join(d.dataDir, "secret.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if err := os.Chmod(keyFile, mode); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, d.bin, "serve")
		cmd.Env = d.env
		out, err := cmd.CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if timedOut {
			t.Fatalf("mode %04o: the daemon did not exit: %s", mode, out)
		}
		if err == nil || cmd.ProcessState.ExitCode() == 0 {
			t.Errorf("mode %04o: exit %v, want non-zero", mode, err)
		}
		for _, want := range []string{keyFile, fmt.Sprintf("mode %04o", mode), "must be 0600"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("mode %04o: the message does not say %q:\n%s", mode, want, out)
			}
		}
	}
	if err := os.Chmod(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	if code := d.call("GET", "/api/v1/me", nil, nil); code != 200 {
		t.Errorf("with the key file 0600: /api/v1/me %d", code)
	}
}
