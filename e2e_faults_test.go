package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/inboxd/inboxd/internal/fakellm"
	"github.com/inboxd/inboxd/internal/faultproxy"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// Fault injection between the real binary and its stores (issue #8): Redis
// restarted while polls run, PostgreSQL going away during workflow runs.

// persistentRedis is a redis-server that keeps its data across a restart,
// on the same port: an append-only file synced on every write, as a
// production Redis runs. (testsvc.Redis has no persistence and no restart.)
type persistentRedis struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

func newPersistentRedis(t *testing.T) *persistentRedis {
	t.Helper()
	r := &persistentRedis{t: t, bin: testsvc.NeedBinary(t, "redis-server"), dir: t.TempDir(), port: testsvc.FreePort(t)}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *persistentRedis) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }
func (r *persistentRedis) url() string  { return "redis://" + r.addr() + "/0" }

func (r *persistentRedis) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--dir", r.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", filepath.Join(r.dir, "redis.log"))
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the test binary
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	r.done = done
	go func() { r.cmd.Wait(); close(done) }()
	rdb := redis.NewClient(&redis.Options{Addr: r.addr()})
	defer rdb.Close()
	waitUntil(r.t, "redis to answer", 20*time.Second, func() bool {
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server exited:\n%s", tail(string(log), 2000))
		default:
		}
		return rdb.Ping(context.Background()).Err() == nil
	})
}

// stop shuts Redis down (SIGTERM: the append-only file is complete) and
// waits for it to exit.
func (r *persistentRedis) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

// mailWorkflows gives the daemon's default user the IMAP account login on
// dove, reached at imap (a proxy), and the LLM at llmURL, and creates one
// new_email workflow per name; it returns their ids once the inbox is
// baselined.
func mailWorkflows(t *testing.T, d *daemon, dove *testsvc.DovecotServer, imap *faultproxy.Proxy, login, llmURL string, names ...string) []string {
	t.Helper()
	st := map[string]any{"imap_server": imap.Host(), "imap_port": imap.Port(), "imap_security": "none", "imap_username": login,
		"imap_password": dove.Password(t, login), "llm_base_url": llmURL, "llm_model": "fake-model", "llm_api_key": "sk-test"}
	if code := d.call("PUT", "/api/v1/settings", st, nil); code != 200 {
		t.Fatalf("settings: %d", code)
	}
	ids := make([]string, 0, len(names))
	for _, name := range names {
		var wf struct{ ID string }
		step := map[string]any{"name": "reply", "kind": "llm", "system_prompt": name + ": <<trigger_output>>"}
		body := map[string]any{"name": name, "active": true, "trigger": map[string]any{"type": "new_email"}, "steps": []any{step}}
		if code := d.call("POST", "/api/v1/workflows", body, &wf); code != 201 {
			t.Fatalf("create workflow %s: %d", name, code)
		}
		ids = append(ids, wf.ID)
	}
	waitUntil(t, "the inbox baseline", 30*time.Second, func() bool {
		var s struct{ Poll struct{ State string } }
		d.call("GET", "/api/v1/inbox/status", nil, &s)
		return s.Poll.State == "active"
	})
	return ids
}

// instancesPerUID counts a workflow's instances by the UID of their mail.
func instancesPerUID(t *testing.T, d *daemon, wfID string) map[uint32]int {
	t.Helper()
	var list struct{ Items []instance }
	if code := d.call("GET", "/api/v1/workflows/"+wfID+"/instances?limit=1000", nil, &list); code != 200 {
		t.Fatalf("list instances: %d", code)
	}
	out := map[uint32]int{}
	for _, in := range list.Items {
		if in.Trigger.Email == nil {
			t.Fatalf("instance without an email: %+v", in)
		}
		out[in.Trigger.Email.UID]++
	}
	return out
}

// TestRedisRestartWhilePolling: with the KV on Redis, Redis is restarted
// while the daemon polls and handles a batch of mail (slowed down by a
// proxy in front of Dovecot, so that the restart falls in the middle of
// it); more mail arrives while Redis is down and after it is back. No
// trigger state is lost (no re-baseline: the mail delivered during the
// outage is not skipped, old mail is not re-run), polls resume, and every
// delivered mail has exactly one instance per workflow.
func TestRedisRestartWhilePolling(t *testing.T) {
	rs := newPersistentRedis(t)
	dove := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	llmSrv := fakellm.New(t)
	llmSrv.SetHandler(func(fakellm.Request) fakellm.Reply { return fakellm.Text("ok") })
	d := newDaemon(t, "INBOXD_KV_URL="+rs.url(), "INBOXD_POLL_INTERVAL=1s", "INBOXD_POLL_LEASE=3s")
	d.start()
	imap := faultproxy.New(t, dove.Addr())
	wfIDs := mailWorkflows(t, d, dove, imap, "alice", llmSrv.URL(), "first", "second")

	delivered := map[uint32]bool{}
	deliver := func(phase string, n int) {
		for i := range n {
			raw := fmt.Sprintf("From: customer%d@example.com\r\nTo: alice@example.com\r\nSubject: %s %d\r\nMessage-ID: <%s-%d@example.com>\r\n\r\nbody\r\n", i, phase, i, phase, i)
			delivered[dove.Deliver(t, "alice", []byte(raw))] = true
		}
	}
	total := func() int {
		n := 0
		for _, id := range wfIDs {
			for _, c := range instancesPerUID(t, d, id) {
				n += c
			}
		}
		return n
	}

	imap.Slow(20 * time.Millisecond) // some 100 ms a mail
	deliver("before", 10)
	waitUntil(t, "the batch to be under way", 30*time.Second, func() bool { return total() > 0 })
	logOffset := fileSize(t, d.logPath)
	rs.stop()
	t.Logf("redis stopped with %d of 20 instances created", total())
	deliver("during", 5)
	waitUntil(t, "the poller to meet the missing Redis", 30*time.Second, func() bool {
		for _, rec := range logRecords(t, d.logPath, logOffset) {
			msg, _ := rec["msg"].(string)
			if e, _ := rec["error"].(string); strings.HasPrefix(msg, "poller: ") && strings.Contains(e, rs.addr()) {
				return true
			}
		}
		return false
	})
	rs.start()
	imap.Slow(0)
	deliver("after", 5)

	want := 2 * len(delivered)
	waitUntil(t, fmt.Sprintf("all %d instances", want), 90*time.Second, func() bool { return total() >= want })
	okPolls := metricValue(t, d.base, `inboxd_polls_total{result="ok"}`)
	waitUntil(t, "more polls", 30*time.Second, func() bool {
		return metricValue(t, d.base, `inboxd_polls_total{result="ok"}`) >= okPolls+3
	})
	for _, id := range wfIDs {
		seen := instancesPerUID(t, d, id)
		if len(seen) != len(delivered) {
			t.Errorf("workflow %s: instances for %d distinct mails, want %d", id, len(seen), len(delivered))
		}
		for uid, n := range seen {
			if !delivered[uid] || n != 1 {
				t.Errorf("workflow %s: uid %d has %d instances (delivered: %v)", id, uid, n, delivered[uid])
			}
		}
	}

	// The trigger state in Redis is the newest mail's; it was never reset.
	var me struct{ ID string }
	d.call("GET", "/api/v1/me", nil, &me)
	rdb := redis.NewClient(&redis.Options{Addr: rs.addr()})
	defer rdb.Close()
	last, err := rdb.Get(context.Background(), "user:"+me.ID+":last_email_uid").Result()
	if err != nil {
		t.Fatal(err)
	}
	newest := uint32(0)
	for uid := range delivered {
		newest = max(newest, uid)
	}
	if last != strconv.Itoa(int(newest)) {
		t.Errorf("last_email_uid = %s, want %d", last, newest)
	}
	if v := metricValue(t, d.base, "inboxd_uidvalidity_resets_total"); v != 0 {
		t.Errorf("inboxd_uidvalidity_resets_total = %v", v)
	}
	for _, rec := range logRecords(t, d.logPath, 0) {
		if msg, _ := rec["msg"].(string); strings.Contains(msg, "re-baselining") {
			t.Errorf("the trigger state was re-baselined: %v", rec)
		}
	}
	var st struct {
		Poll struct{ State, LastError string }
	}
	d.call("GET", "/api/v1/inbox/status", nil, &st)
	if st.Poll.State != "active" {
		t.Errorf("poll status after the restart: %+v", st.Poll)
	}
}

// TestPostgresOutageDuringRuns: with the database on PostgreSQL (through a
// fault proxy), every connection is cut and new ones are refused for two
// seconds — what clients see of a PostgreSQL restart — while workflow runs
// are under way: a step is waiting for its model answer, so it ends during
// the outage. Every run resumes and completes, none is lost, and no step
// runs twice (each step's model call is made exactly once).
func TestPostgresOutageDuringRuns(t *testing.T) {
	pg, err := url.Parse(testsvc.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	px := faultproxy.New(t, pg.Host)
	pg.Host = px.Addr()

	const runs, steps, outageAt = 8, 3, 6 // the outage starts with the 6th model call
	var (
		mu      sync.Mutex
		calls   = map[string]int{} // "run 03/STEP2" -> model calls
		n       int
		outages = make(chan struct{})
	)
	llmSrv := fakellm.New(t)
	llmSrv.SetHandler(func(r fakellm.Request) fakellm.Reply {
		step := strings.Fields(r.Messages[0].Content)[0]
		mu.Lock()
		calls[r.LastUserMessage()+"/"+step]++
		n++
		outage := n == outageAt
		mu.Unlock()
		reply := fakellm.Text("output of " + step).WithDelay(100 * time.Millisecond)
		if outage {
			px.Refuse(true)
			cut := px.Cut()
			t.Logf("database outage: %d connections cut", cut)
			time.AfterFunc(2*time.Second, func() {
				px.Refuse(false)
				close(outages)
			})
			reply = reply.WithDelay(500 * time.Millisecond) // the step ends while the database is away
		}
		return reply
	})
	d := newDaemon(t, "INBOXD_DATABASE_URL="+pg.String(), "INBOXD_WORKFLOW_WORKERS=2", "INBOXD_WORKFLOW_LEASE=10s")
	d.start()
	if code := d.call("PUT", "/api/v1/settings", map[string]any{"llm_base_url": llmSrv.URL(), "llm_model": "m", "llm_api_key": "sk"}, nil); code != 200 {
		t.Fatalf("settings: %d", code)
	}
	var wf struct{ ID string }
	if code := d.call("POST", "/api/v1/workflows", map[string]any{
		"name": "three steps", "steps": []map[string]any{
			{"name": "one", "kind": "llm", "system_prompt": "STEP1 first"},
			{"name": "two", "kind": "llm", "system_prompt": "STEP2 after <<step_output.one>>"},
			{"name": "three", "kind": "llm", "system_prompt": "STEP3 after <<step_output.two>>"},
		},
	}, &wf); code != 201 {
		t.Fatalf("workflow: %d", code)
	}
	ids := make([]string, runs)
	for i := range runs {
		var inst instance
		if code := d.call("POST", "/api/v1/workflows/"+wf.ID+"/run", map[string]any{"input": fmt.Sprintf("run %02d", i)}, &inst); code != 202 {
			t.Fatalf("run %d: %d", i, code)
		}
		ids[i] = inst.ID
	}
	select {
	case <-outages:
	case <-time.After(60 * time.Second):
		t.Fatal("the runs never reached the outage")
	}
	start := time.Now()
	for _, id := range ids {
		var inst instance
		waitUntil(t, "run "+id+" to end", 90*time.Second, func() bool {
			d.call("GET", "/api/v1/instances/"+id, nil, &inst)
			return inst.Status != "queued" && inst.Status != "running"
		})
		if inst.Status != "completed" || len(inst.Steps) != steps || inst.Steps[steps-1].Output != "output of STEP3" {
			t.Errorf("run %s: %s %q, steps %+v", id, inst.Status, inst.Error, inst.Steps)
		}
	}
	t.Logf("all runs ended %v after the outage; proxy %+v", time.Since(start).Round(time.Millisecond), px.Stats())
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != runs*steps {
		t.Errorf("%d distinct steps reached the model, want %d", len(calls), runs*steps)
	}
	for key, c := range calls {
		if c != 1 {
			t.Errorf("%s: %d model calls, want 1", key, c)
		}
	}
}
