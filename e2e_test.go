package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/inboxd/inboxd/internal/fakellm"
	"github.com/inboxd/inboxd/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// The binary is built once per test run, into a directory removed at exit.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "inboxd-e2e-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "inboxd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// daemon is one inboxd process over a data directory that outlives it.
type daemon struct {
	t       *testing.T
	bin     string
	dataDir string
	env     []string
	base    string
	args    []string // extra arguments of `inboxd serve`
	cmd     *exec.Cmd
	exited  chan error
	logPath string
}

func newDaemon(t *testing.T, extraEnv ...string) *daemon {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	port := testsvc.FreePort(t)
	d := &daemon{t: t, bin: bin, dataDir: t.TempDir(), base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	d.env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + d.dataDir,
		"INBOXD_DATA_DIR=" + d.dataDir, fmt.Sprintf("INBOXD_LISTEN=127.0.0.1:%d", port), "INBOXD_LOG_LEVEL=debug"}, extraEnv...)
	d.logPath = filepath.Join(d.dataDir, "daemon.log")
	t.Cleanup(func() {
		if d.cmd != nil && d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(d.logPath)
			t.Logf("daemon log (tail):\n%s", tail(string(log), 4000))
		}
	})
	return d
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (d *daemon) start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	d.cmd = exec.Command(d.bin, append([]string{"serve"}, d.args...)...)
	d.cmd.Env = d.env
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	logf.Close()
	d.exited = make(chan error, 1)
	go func() { d.exited <- d.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(d.base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	d.t.Fatal("daemon never became ready")
}

// kill sends SIGKILL: no shutdown code runs.
func (d *daemon) kill() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	<-d.exited
}

func (d *daemon) call(method, path string, body any, out any) int {
	d.t.Helper()
	return d.callAs("", method, path, body, out)
}

// callAs makes an API call with an API key ("" for none).
func (d *daemon) callAs(key, method, path string, body any, out any) int {
	d.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, d.base+path, r)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			d.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
	}
	if resp.StatusCode >= 300 {
		d.t.Logf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type instance struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Error   string `json:"error"`
	Trigger struct {
		Email *struct {
			UID     uint32 `json:"uid"`
			Subject string `json:"subject"`
		} `json:"email"`
	} `json:"trigger"`
	Steps []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Output string `json:"output"`
	} `json:"steps"`
}

// TestRunResumesAfterSIGKILL: the daemon is killed in the middle of a 3-step
// run; after a restart the run resumes at the unfinished step and completes,
// and the completed step does not run again.
func TestRunResumesAfterSIGKILL(t *testing.T) {
	llmSrv := fakellm.New(t)
	var calls [4]atomic.Int32
	llmSrv.SetHandler(func(r fakellm.Request) fakellm.Reply {
		for step := 1; step <= 3; step++ {
			if strings.Contains(r.Messages[0].Content, fmt.Sprintf("STEP%d", step)) {
				if calls[step].Add(1) == 1 && step == 2 {
					return fakellm.Text("slow").WithDelay(20 * time.Second) // killed during this
				}
				return fakellm.Text(fmt.Sprintf("output of step %d", step))
			}
		}
		return fakellm.Error(400, "unexpected prompt")
	})
	d := newDaemon(t, "INBOXD_WORKFLOW_LEASE=2s")
	d.start()
	if code := d.call("PUT", "/api/v1/settings", map[string]any{"llm_base_url": llmSrv.URL(), "llm_model": "fake-model", "llm_api_key": "sk-test"}, nil); code != 200 {
		t.Fatalf("settings: %d", code)
	}
	var wf struct{ ID string }
	code := d.call("POST", "/api/v1/workflows", map[string]any{
		"name": "three steps", "active": true,
		"steps": []map[string]any{
			{"name": "one", "kind": "llm", "system_prompt": "STEP1 <<trigger_output>>"},
			{"name": "two", "kind": "llm", "system_prompt": "STEP2 after <<step_output.one>>"},
			{"name": "three", "kind": "llm", "system_prompt": "STEP3 after <<step_output.two>>"},
		},
	}, &wf)
	if code != 201 {
		t.Fatalf("create workflow: %d", code)
	}
	var inst instance
	if code := d.call("POST", "/api/v1/workflows/"+wf.ID+"/run", map[string]any{"input": "hello"}, &inst); code != 202 {
		t.Fatalf("run: %d", code)
	}
	waitUntil(t, "step two to be under way", 20*time.Second, func() bool { return calls[2].Load() == 1 })
	d.kill()

	d.start()
	waitUntil(t, "the run to complete after the restart", 60*time.Second, func() bool {
		d.call("GET", "/api/v1/instances/"+inst.ID, nil, &inst)
		return inst.Status == "completed" || inst.Status == "failed"
	})
	if inst.Status != "completed" {
		t.Fatalf("instance %s: %s", inst.Status, inst.Error)
	}
	if c1, c2, c3 := calls[1].Load(), calls[2].Load(), calls[3].Load(); c1 != 1 || c2 != 2 || c3 != 1 {
		t.Errorf("LLM calls per step: one=%d two=%d three=%d; want 1, 2 (killed once), 1", c1, c2, c3)
	}
	if len(inst.Steps) != 3 || inst.Steps[2].Output != "output of step 3" || inst.Steps[0].Output != "output of step 1" {
		t.Errorf("steps: %+v", inst.Steps)
	}
}

// TestNewMailSurvivesSIGKILL: the daemon is killed while a batch of 20 new
// mails is being processed; after a restart every mail has produced exactly
// one instance per matching workflow.
func TestNewMailSurvivesSIGKILL(t *testing.T) {
	dove := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	llmSrv := fakellm.New(t)
	llmSrv.SetHandler(func(fakellm.Request) fakellm.Reply { return fakellm.Text("ok") })
	d := newDaemon(t, "INBOXD_POLL_INTERVAL=1s", "INBOXD_POLL_IDLE=false", "INBOXD_POLL_LEASE=2s", "INBOXD_WORKFLOW_LEASE=2s")
	d.start()
	if code := d.call("PUT", "/api/v1/settings", map[string]any{
		"imap_server": dove.Host, "imap_port": dove.Port, "imap_security": "none", "imap_username": "alice", "imap_password": "alice-pw",
		"llm_base_url": llmSrv.URL(), "llm_model": "fake-model", "llm_api_key": "sk-test",
	}, nil); code != 200 {
		t.Fatalf("settings: %d", code)
	}
	var wfIDs []string
	for _, name := range []string{"first", "second"} {
		var wf struct{ ID string }
		if code := d.call("POST", "/api/v1/workflows", map[string]any{
			"name": name, "active": true, "trigger": map[string]any{"type": "new_email"},
			"steps": []map[string]any{{"name": "summarise", "kind": "llm", "system_prompt": "Summarise <<trigger_output>>"}},
		}, &wf); code != 201 {
			t.Fatalf("create workflow: %d", code)
		}
		wfIDs = append(wfIDs, wf.ID)
	}
	waitUntil(t, "the inbox baseline", 30*time.Second, func() bool {
		var st struct{ Poll struct{ State string } }
		d.call("GET", "/api/v1/inbox/status", nil, &st)
		return st.Poll.State == "active"
	})
	uids := map[uint32]bool{}
	for i := range 20 {
		raw := fmt.Sprintf("From: customer%d@example.com\r\nTo: alice@example.com\r\nSubject: mail %d\r\nMessage-ID: <batch-%d@example.com>\r\n\r\nbody %d\r\n", i, i, i, i)
		uids[dove.Deliver(t, "alice", []byte(raw))] = true
	}
	count := func() int {
		n := 0
		for _, id := range wfIDs {
			var list struct{ Items []instance }
			d.call("GET", "/api/v1/workflows/"+id+"/instances?limit=1000", nil, &list)
			n += len(list.Items)
		}
		return n
	}
	var before int
	waitUntil(t, "the first instances", 30*time.Second, func() bool { before = count(); return before > 0 })
	d.kill()
	t.Logf("killed with at least %d of 40 instances created", before)

	d.start()
	waitUntil(t, "all 40 instances", 60*time.Second, func() bool { return count() >= 40 })
	time.Sleep(2 * time.Second) // more polls: nothing more may appear
	for _, id := range wfIDs {
		var list struct{ Items []instance }
		d.call("GET", "/api/v1/workflows/"+id+"/instances?limit=1000", nil, &list)
		seen := map[uint32]int{}
		for _, in := range list.Items {
			if in.Trigger.Email == nil {
				t.Fatalf("instance without email: %+v", in)
			}
			seen[in.Trigger.Email.UID]++
		}
		if len(list.Items) != 20 || len(seen) != 20 {
			t.Errorf("workflow %s: %d instances for %d distinct mails, want 20 and 20", id, len(list.Items), len(seen))
		}
		for uid, n := range seen {
			if !uids[uid] || n != 1 {
				t.Errorf("workflow %s: uid %d has %d instances (delivered: %v)", id, uid, n, uids[uid])
			}
		}
	}
}

// addUser runs `inboxd user add` on the daemon's store and returns the key.
func (d *daemon) addUser(email string) string {
	d.t.Helper()
	cmd := exec.Command(d.bin, "user", "add", "--email", email)
	cmd.Env = d.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		d.t.Fatalf("user add: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if key, ok := strings.CutPrefix(line, "api key: "); ok {
			return strings.TrimSpace(key)
		}
	}
	d.t.Fatalf("user add printed no key: %s", out)
	return ""
}

// TestManualRunIsolation: two users in apikey mode, each with a workflow; a
// manual run of A's writes an instance, step runs and log rows that only A
// can see; B gets 404 on A's workflow, instance and log ids and sees none of
// them in lists.
func TestManualRunIsolation(t *testing.T) {
	llmSrv := fakellm.New(t)
	llmSrv.SetHandler(func(fakellm.Request) fakellm.Reply { return fakellm.Text("a quote request").WithUsage(120, 30) })
	d := newDaemon(t, "INBOXD_AUTH_MODE=apikey")
	d.start()
	keyA, keyB := d.addUser("alice@example.com"), d.addUser("bob@example.com")
	if code := d.call("GET", "/api/v1/me", nil, nil); code != 401 {
		t.Fatalf("no key: %d, want 401", code)
	}
	wfIDs := map[string]string{}
	for who, key := range map[string]string{"alice": keyA, "bob": keyB} {
		if code := d.callAs(key, "PUT", "/api/v1/settings", map[string]any{"llm_base_url": llmSrv.URL(), "llm_model": "m-" + who, "llm_api_key": "sk-" + who}, nil); code != 200 {
			t.Fatalf("settings: %d", code)
		}
		var wf struct{ ID string }
		if code := d.callAs(key, "POST", "/api/v1/workflows", map[string]any{
			"name": "classify " + who, "active": true,
			"steps": []map[string]any{
				{"name": "classify", "kind": "llm", "system_prompt": "Classify: <<trigger_output>>"},
				{"name": "stop unless quote", "kind": "stop_checker", "step_to_check": "classify", "mode": "continue_if_output_contains", "match_values": []string{"quote"}},
			},
		}, &wf); code != 201 {
			t.Fatalf("create: %d", code)
		}
		wfIDs[who] = wf.ID
	}
	var inst instance
	if code := d.callAs(keyA, "POST", "/api/v1/workflows/"+wfIDs["alice"]+"/run", map[string]any{"email": map[string]string{"from": "c@example.com", "subject": "price?", "body": "what does it cost"}}, &inst); code != 202 {
		t.Fatalf("run: %d", code)
	}
	waitUntil(t, "A's run", 30*time.Second, func() bool {
		d.callAs(keyA, "GET", "/api/v1/instances/"+inst.ID, nil, &inst)
		return inst.Status == "completed"
	})
	if len(inst.Steps) != 2 || inst.Steps[0].Output != "a quote request" || inst.Steps[1].Status != "completed" {
		t.Fatalf("steps: %+v", inst.Steps)
	}
	// The request carried A's own key and model, never B's.
	for _, r := range llmSrv.Requests() {
		if r.APIKey != "sk-alice" || r.Model != "m-alice" {
			t.Errorf("LLM request with key %q model %q", r.APIKey, r.Model)
		}
	}
	var logsA struct {
		Items []struct {
			ID          string `json:"id"`
			LogType     string `json:"log_type"`
			TotalTokens int    `json:"total_tokens"`
		} `json:"items"`
	}
	d.callAs(keyA, "GET", "/api/v1/logs?instance_id="+inst.ID, nil, &logsA)
	if len(logsA.Items) < 2 {
		t.Fatalf("A's log rows: %+v", logsA.Items)
	}
	var usage struct {
		TotalTokens int `json:"total_tokens"`
	}
	if code := d.callAs(keyA, "GET", "/api/v1/logs/usage/"+inst.ID, nil, &usage); code != 200 || usage.TotalTokens != 150 {
		t.Errorf("A's usage: %d %+v", code, usage)
	}

	// B: 404 on every id of A's, and nothing of A's in lists.
	paths := []string{
		"/api/v1/workflows/" + wfIDs["alice"], "/api/v1/workflows/" + wfIDs["alice"] + "/instances",
		"/api/v1/workflows/" + wfIDs["alice"] + "/export", "/api/v1/instances/" + inst.ID,
		"/api/v1/logs/usage/" + inst.ID,
	}
	for _, row := range logsA.Items {
		paths = append(paths, "/api/v1/logs/"+row.ID)
	}
	for _, p := range paths {
		if code := d.callAs(keyB, "GET", p, nil, nil); code != 404 {
			t.Errorf("B: GET %s = %d, want 404", p, code)
		}
	}
	for _, p := range []string{"/api/v1/workflows/" + wfIDs["alice"] + "/run", "/api/v1/instances/" + inst.ID + "/cancel"} {
		if code := d.callAs(keyB, "POST", p, map[string]any{}, nil); code != 404 {
			t.Errorf("B: POST %s = %d, want 404", p, code)
		}
	}
	if code := d.callAs(keyB, "DELETE", "/api/v1/workflows/"+wfIDs["alice"], nil, nil); code != 404 {
		t.Errorf("B: DELETE A's workflow = %d", code)
	}
	for _, p := range []string{"/api/v1/workflows", "/api/v1/logs", "/api/v1/logs/grouped", "/api/v1/logs/costs"} {
		var raw json.RawMessage
		d.callAs(keyB, "GET", p, nil, &raw)
		for _, leak := range []string{wfIDs["alice"], inst.ID, "classify alice"} {
			if bytes.Contains(raw, []byte(leak)) {
				t.Errorf("B: GET %s shows %q: %s", p, leak, raw)
			}
		}
	}
}

// TestTwoDaemonsShareRuns: two daemon processes on one PostgreSQL claim 200
// queued instances between them; each runs exactly once.
func TestTwoDaemonsShareRuns(t *testing.T) {
	pg := testsvc.Postgres(t)
	llmSrv := fakellm.New(t)
	var mu sync.Mutex
	seen := map[string]int{}
	llmSrv.SetHandler(func(r fakellm.Request) fakellm.Reply {
		mu.Lock()
		seen[r.LastUserMessage()]++
		mu.Unlock()
		return fakellm.Text("done")
	})
	env := []string{"INBOXD_DATABASE_URL=" + pg, "INBOXD_WORKFLOW_WORKERS=4"}
	d1, d2 := newDaemon(t, env...), newDaemon(t, env...)
	d2.dataDir = d1.dataDir // one secret key: both replicas read the same secrets
	for i, e := range d2.env {
		if strings.HasPrefix(e, "INBOXD_DATA_DIR=") {
			d2.env[i] = "INBOXD_DATA_DIR=" + d1.dataDir
		}
	}
	d1.start()
	d2.start()
	if code := d1.call("PUT", "/api/v1/settings", map[string]any{"llm_base_url": llmSrv.URL(), "llm_model": "m", "llm_api_key": "sk"}, nil); code != 200 {
		t.Fatalf("settings: %d", code)
	}
	var wf struct{ ID string }
	if code := d1.call("POST", "/api/v1/workflows", map[string]any{
		"name": "one step", "steps": []map[string]any{{"name": "s", "kind": "llm", "system_prompt": "Echo"}},
	}, &wf); code != 201 {
		t.Fatalf("workflow: %d", code)
	}
	const runs = 200
	for i := range runs {
		d := d1
		if i%2 == 1 {
			d = d2
		}
		if code := d.call("POST", "/api/v1/workflows/"+wf.ID+"/run", map[string]any{"input": fmt.Sprintf("run %03d", i)}, nil); code != 202 {
			t.Fatalf("run %d: %d", i, code)
		}
	}
	waitUntil(t, "every run to complete", 120*time.Second, func() bool {
		var list struct{ Items []instance }
		d2.call("GET", "/api/v1/workflows/"+wf.ID+"/instances?limit=1000", nil, &list)
		done := 0
		for _, in := range list.Items {
			if in.Status == "completed" {
				done++
			}
		}
		return len(list.Items) == runs && done == runs
	})
	// Both replicas did part of the work (the split varies; neither is idle).
	for i, d := range []*daemon{d1, d2} {
		log, _ := os.ReadFile(d.logPath)
		if n := strings.Count(string(log), "workflow: run claimed"); n == 0 || n == runs {
			t.Errorf("daemon %d claimed %d of %d runs", i+1, n, runs)
		} else {
			t.Logf("daemon %d claimed %d runs", i+1, n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != runs {
		t.Errorf("%d distinct runs reached the model, want %d", len(seen), runs)
	}
	for input, n := range seen {
		if n != 1 {
			t.Errorf("%q ran %d times", input, n)
		}
	}
}

// TestReloadOnSIGHUP: SIGHUP re-reads the configuration file and applies the
// log level live; a broken file is refused and the daemon keeps running.
func TestReloadOnSIGHUP(t *testing.T) {
	d := newDaemon(t)
	conf := filepath.Join(d.dataDir, "inboxd.toml")
	write := func(body string) {
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The environment's INBOXD_LOG_LEVEL=debug would win over the file.
	for i, e := range d.env {
		if strings.HasPrefix(e, "INBOXD_LOG_LEVEL=") {
			d.env[i] = "INBOXD_LOG_LEVEL="
		}
	}
	write("[log]\nlevel = \"warn\"\n[poll]\ninterval = \"60s\"\n")
	d.args = []string{"--config", conf}
	d.start()
	logText := func() string { b, _ := os.ReadFile(d.logPath); return string(b) }
	if strings.Contains(logText(), "inboxd serving") {
		t.Fatal("an info line was logged at level warn")
	}
	// A new plugin directory with the example plugin: its tools appear live.
	pluginDir := filepath.Join(d.dataDir, "more-plugins")
	if out, err := exec.Command("go", "build", "-o", filepath.Join(pluginDir, "wordcount"), "./contrib/examples/plugin-wordcount").CombinedOutput(); err != nil {
		t.Fatalf("build the example plugin: %v\n%s", err, out)
	}
	hasWordcount := func() bool {
		var list struct{ Items []struct{ Name string } }
		d.call("GET", "/api/v1/tools", nil, &list)
		for _, it := range list.Items {
			if it.Name == "wordcount-count_words" {
				return true
			}
		}
		return false
	}
	if hasWordcount() {
		t.Fatal("the example plugin is there before the reload")
	}
	write("[log]\nlevel = \"info\"\n[poll]\ninterval = \"30s\"\nworkers = 3\n[plugins]\ndir = \"" + pluginDir + "\"\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, "the reload", 30*time.Second, func() bool { return strings.Contains(logText(), "reload: configuration applied") })
	if !hasWordcount() {
		t.Error("the example plugin's tools are missing after the reload")
	}
	if !strings.Contains(logText(), `"poll_interval":"30s"`) || !strings.Contains(logText(), "change only with a restart") {
		t.Errorf("reload log:\n%s", logText())
	}
	write("[log]\nlevel = \"loud\"\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, "the refusal", 10*time.Second, func() bool { return strings.Contains(logText(), "configuration refused") })
	if code := d.call("GET", "/readyz", nil, nil); code != 200 {
		t.Fatalf("after a refused reload: readyz %d", code)
	}
}

// TestDemoProcessesMailAndStopsCleanly is `make run`: with --demo and no
// configuration, both demo users' mail is processed within a minute, and an
// interrupt (Ctrl-C) ends the daemon with exit code 0 and no plugin process
// left behind.
func TestDemoProcessesMailAndStopsCleanly(t *testing.T) {
	d := newDaemon(t)
	d.args = []string{"--demo"}
	d.start()
	out := func() string { b, _ := os.ReadFile(d.logPath); return string(b) }
	waitUntil(t, "both demo users' runs", time.Minute, func() bool {
		o := out()
		return strings.Contains(o, "demo: alice    run ") && strings.Contains(o, "demo: bob      run ")
	})
	for _, want := range []string{"run completed", "To turn the demo off"} {
		waitUntil(t, want, time.Minute, func() bool { return strings.Contains(out(), want) })
	}
	if code := d.call("GET", "/metrics", nil, nil); code != 200 {
		t.Errorf("/metrics: %d", code)
	}
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		if err != nil {
			t.Fatalf("exit after interrupt: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit within 30 s of the interrupt")
	}
	if left := pluginProcesses(t, d.bin); len(left) > 0 {
		t.Errorf("plugin processes outlived the daemon: %v", left)
	}
}

// childProcesses returns the children of pid (its plugins), pid -> cmdline.
func childProcesses(t *testing.T, pid int) map[string]string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
		if f := strings.Fields(rest); len(f) < 2 || f[1] != strconv.Itoa(pid) {
			continue
		}
		if cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil {
			out[e.Name()] = string(cmdline)
		}
	}
	return out
}

// pluginProcesses lists the pids of `BIN plugin serve ...` processes.
func pluginProcesses(t *testing.T, bin string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) >= 3 && args[0] == bin && args[1] == "plugin" && args[2] == "serve" {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
