package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/inboxd/inboxd/internal/fakellm"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// TestThreeReplicasSurviveAKill is the scale-out proof: three daemon
// processes share PostgreSQL, Redis and one secret key; 300 users on one
// Dovecot each have IMAP settings and an active new_email workflow (every
// tenth user a second one); two mails per user are delivered over about 20 s
// and the replica holding the most poll leases is SIGKILLed halfway through.
//
// It asserts that
//   - every delivered mail has exactly one instance per matching workflow,
//     none is missing, none is extra, and every run completed (the killed
//     replica's claimed runs resumed elsewhere);
//   - the killed replica's users were taken over by the survivors, within
//     two lease periods of the kill (figures are logged);
//   - no user was polled by two replicas at the same moment.
//
// The last point is proven from a recording of Redis: see checkPollLeases.
func TestThreeReplicasSurviveAKill(t *testing.T) {
	if testing.Short() {
		t.Skip("scale-out test: three replicas, 300 users, about a minute")
	}
	const (
		nUsers       = 300
		mailsPerUser = 2
		leaseTTL     = 3 * time.Second
		deliverOver  = 20 * time.Second
	)
	began := time.Now()
	pgURL := testsvc.Postgres(t)
	redisURL := testsvc.Redis(t)
	mon := startRedisMonitor(t, redisURL)

	dovecotUsers := make(map[string]string, nUsers)
	for i := range nUsers {
		dovecotUsers[scaleIMAPName(i)] = fmt.Sprintf("pw-%03d", i)
	}
	dove := testsvc.Dovecot(t, dovecotUsers) // all 300 in one passwd file, written once

	llmSrv := fakellm.New(t)
	var llmCalls atomic.Int64
	llmSrv.SetHandler(func(fakellm.Request) fakellm.Reply { llmCalls.Add(1); return fakellm.Text("ok") })

	env := []string{
		"INBOXD_DATABASE_URL=" + pgURL, "INBOXD_KV_URL=" + redisURL, "INBOXD_AUTH_MODE=apikey",
		"INBOXD_POLL_INTERVAL=1s", "INBOXD_POLL_IDLE=false",
		"INBOXD_POLL_LEASE=" + leaseTTL.String(), "INBOXD_WORKFLOW_LEASE=" + leaseTTL.String(),
	}
	replicas := make([]*daemon, 3)
	for i := range replicas {
		replicas[i] = newDaemon(t, env...)
		if i > 0 { // one secret key: every replica decrypts every user's IMAP password
			replicas[i].dataDir = replicas[0].dataDir
			for j, e := range replicas[i].env {
				if strings.HasPrefix(e, "INBOXD_DATA_DIR=") {
					replicas[i].env[j] = "INBOXD_DATA_DIR=" + replicas[0].dataDir
				}
			}
		}
		replicas[i].start()
	}
	byPID := map[int]int{} // process id -> replica index
	for i, d := range replicas {
		byPID[d.cmd.Process.Pid] = i
	}
	replicaOf := func(owner string) int { // a lease owner is "host-PID-random"
		if m := ownerPID.FindStringSubmatch(owner); m != nil {
			pid, _ := strconv.Atoi(m[1])
			if i, ok := byPID[pid]; ok {
				return i
			}
		}
		return -1
	}

	// Users: one admin from the CLI, the rest through the admin API, spread
	// over the replicas (any replica serves any user).
	adminKey := scaleAddAdmin(t, replicas[0])
	t0 := time.Now()
	users, err := scaleCreateUsers(replicas, adminKey, nUsers, dove, llmSrv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("created %d users (admin API, settings, workflows) in %v", nUsers, time.Since(t0).Round(time.Millisecond))

	rdb := redis.NewClient(scaleRedisOptions(t, redisURL))
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()

	// Mail delivered before a user's first poll would only move the baseline:
	// wait until every inbox has one.
	keys := make([]string, nUsers)
	for i, u := range users {
		keys[i] = "user:" + u.id + ":last_email_uidvalidity"
	}
	waitUntil(t, "every inbox to have its baseline", 60*time.Second, func() bool {
		vals, err := rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return false
		}
		return !slices.Contains(vals, nil)
	})
	// The replicas balance the leases: each holds at most its fair share
	// (a third, plus the poller's slack of 5%).
	var leases map[int]int
	waitUntil(t, "the poll leases to be split across the replicas", 30*time.Second, func() bool {
		leases = scaleLeaseSplit(t, rdb, replicaOf)
		for i := range 3 {
			if leases[i] == 0 || leases[i] > 100+15 {
				return false
			}
		}
		return true
	})
	t.Logf("baselines after %v; poll leases per replica: %v", time.Since(t0).Round(time.Millisecond), leases)

	// Deliver 2 mails per user, interleaved (every user's first, then every
	// user's second), paced over deliverOver by four senders; kill a replica
	// halfway.
	type mailKey struct {
		user string
		uid  uint32
	}
	var (
		deliveredMu sync.Mutex
		delivered   = map[mailKey]bool{}
		sendTB      = &softTB{TB: t}
		queue       = make(chan int)
		senders     sync.WaitGroup
	)
	for range 4 {
		senders.Go(func() {
			for n := range queue {
				i, k := n%nUsers, n/nUsers
				u := users[i]
				raw := fmt.Sprintf("From: customer%d@example.com\r\nTo: %s@example.com\r\nSubject: mail %d of user %d\r\nMessage-ID: <scale-%d-%d@example.com>\r\n\r\nbody %d/%d\r\n",
					i, u.imapName, k, i, i, k, i, k)
				if uid := dove.Deliver(sendTB, u.imapName, []byte(raw)); uid != 0 {
					deliveredMu.Lock()
					delivered[mailKey{u.id, uid}] = true
					deliveredMu.Unlock()
				}
			}
		})
	}
	total := nUsers * mailsPerUser
	step := deliverOver / time.Duration(total)
	victim := -1
	var killedAt time.Time
	deliverStart := time.Now()
	for n := range total {
		if n == total/2 {
			leases = scaleLeaseSplit(t, rdb, replicaOf)
			victim = 0
			for i := range replicas {
				if leases[i] > leases[victim] {
					victim = i
				}
			}
			killedAt = time.Now()
			replicas[victim].kill()
			t.Logf("SIGKILLed replica %d holding %d of %d poll leases (split %v), after %d of %d mails, %v into the delivery",
				victim, leases[victim], nUsers, leases, n, total, time.Since(deliverStart).Round(time.Millisecond))
		}
		if wait := time.Until(deliverStart.Add(time.Duration(n) * step)); wait > 0 {
			time.Sleep(wait)
		}
		queue <- n
	}
	close(queue)
	senders.Wait()
	if err := sendTB.failure(); err != nil {
		t.Fatal(err)
	}
	t.Logf("delivered %d mails in %v", len(delivered), time.Since(deliverStart).Round(time.Millisecond))

	// Every mail: one completed run per matching workflow, read from PostgreSQL.
	wantInstances := 0
	for _, u := range users {
		wantInstances += mailsPerUser * len(u.workflows)
	}
	pg, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close(context.Background()) })
	var count, done int
	drainStart := time.Now()
	waitUntil(t, fmt.Sprintf("%d completed instances", wantInstances), 90*time.Second, func() bool {
		err := pg.QueryRow(ctx, "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'completed') FROM workflow_instances").Scan(&count, &done)
		return err == nil && count >= wantInstances && done == count
	})
	t.Logf("all %d instances completed %v after the last delivery", count, time.Since(drainStart).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // two more polls of every inbox: nothing more may appear

	type runKey struct {
		user, workflow string
		uid            uint32
	}
	runs := map[runKey]int{}
	rows, err := pg.Query(ctx, "SELECT user_id, workflow_id, status, trigger_input FROM workflow_instances")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var userID, wfID, status, input string
		if err := rows.Scan(&userID, &wfID, &status, &input); err != nil {
			t.Fatal(err)
		}
		var in struct {
			Email *struct {
				UID uint32 `json:"uid"`
			} `json:"email"`
		}
		if err := json.Unmarshal([]byte(input), &in); err != nil || in.Email == nil {
			t.Fatalf("instance of user %s without an email trigger: %s", userID, input)
		}
		if status != "completed" {
			t.Errorf("user %s uid %d workflow %s: status %s", userID, in.Email.UID, wfID, status)
		}
		runs[runKey{userID, wfID, in.Email.UID}]++
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	missing, dup := 0, 0
	for _, u := range users {
		for mk := range delivered {
			if mk.user != u.id {
				continue
			}
			for _, wf := range u.workflows {
				switch c := runs[runKey{u.id, wf, mk.uid}]; {
				case c == 0:
					missing++
					t.Errorf("user %s (%s) uid %d: no instance of workflow %s", u.id, u.imapName, mk.uid, wf)
				case c > 1:
					dup++
					t.Errorf("user %s (%s) uid %d: %d instances of workflow %s", u.id, u.imapName, mk.uid, c, wf)
				}
				delete(runs, runKey{u.id, wf, mk.uid})
			}
		}
	}
	for rk, c := range runs {
		t.Errorf("instance for no delivered mail: %+v (%d)", rk, c)
	}
	t.Logf("mails delivered %d, instances %d (want %d), missing %d, duplicated %d, LLM calls %d (re-run steps after the kill: %d)",
		len(delivered), n, wantInstances, missing, dup, llmCalls.Load(), llmCalls.Load()-int64(n))

	// No user polled by two replicas at once, and the takeover figures.
	events := mon.stop(rdb)
	rep := checkPollLeases(events, replicaOf)
	t.Logf("redis recording: %d events, %d lease holdings, %d polls checked (per replica %v), %d poll writes checked",
		len(events), rep.intervals, rep.polls, rep.pollsBy, rep.writes)
	for _, v := range rep.examples {
		t.Error(v)
	}
	for _, c := range slices.Sorted(maps.Keys(rep.counts)) {
		t.Errorf("%d× %s", rep.counts[c], c)
	}
	if rep.counts[violPollNoLease] > 0 {
		t.Errorf("polls outside the poller's own lease: %d, of which %d while another replica held it; latest %v after the lease had expired",
			rep.counts[violPollNoLease], rep.pollsWhileOther, time.Duration(rep.maxOvershoot)*time.Microsecond)
	}
	if rep.polls < nUsers {
		t.Errorf("only %d polls were recorded: the evidence is too thin", rep.polls)
	}

	// Takeover: the victim's users live at the kill must each have been
	// taken over by a survivor.
	var fromKill, fromExpiry []time.Duration
	for user, ivs := range rep.byUser {
		for j, iv := range ivs {
			if iv.replica != victim || iv.start > killedAt.UnixMicro() || iv.end < killedAt.UnixMicro() {
				continue
			}
			if j+1 >= len(ivs) {
				t.Errorf("user %s: held by the killed replica, never taken over", user)
				continue
			}
			next := ivs[j+1]
			fromKill = append(fromKill, time.Duration(next.start-killedAt.UnixMicro())*time.Microsecond)
			fromExpiry = append(fromExpiry, time.Duration(next.start-iv.end)*time.Microsecond)
		}
	}
	if len(fromKill) == 0 {
		t.Errorf("the killed replica held no lease at the kill")
	} else {
		slices.Sort(fromKill)
		slices.Sort(fromExpiry)
		pct := func(d []time.Duration, p int) time.Duration { return d[(len(d)-1)*p/100].Round(time.Millisecond) }
		t.Logf("takeover of the killed replica's %d users: after the kill min %v median %v max %v; after its last lease expired median %v max %v (lease %v, renewed every %v)",
			len(fromKill), pct(fromKill, 0), pct(fromKill, 50), pct(fromKill, 100), pct(fromExpiry, 50), pct(fromExpiry, 100), leaseTTL, leaseTTL/3)
		if slowest := fromKill[len(fromKill)-1]; slowest > 2*leaseTTL {
			t.Errorf("slowest takeover %v after the kill, want within %v", slowest, 2*leaseTTL)
		}
	}

	// The trigger state ends at each user's newest mail.
	lastKeys := make([]string, nUsers)
	for i, u := range users {
		lastKeys[i] = "user:" + u.id + ":last_email_uid"
	}
	vals, err := rdb.MGet(ctx, lastKeys...).Result()
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range users {
		var newest uint32
		for mk := range delivered {
			if mk.user == u.id {
				newest = max(newest, mk.uid)
			}
		}
		if s, _ := vals[i].(string); s != strconv.FormatUint(uint64(newest), 10) {
			t.Errorf("user %s: last_email_uid %v, want %d", u.id, vals[i], newest)
		}
	}
	t.Logf("whole test %v", time.Since(began).Round(time.Millisecond))
}

// softTB lets testsvc's Deliver run off the test goroutine: a failure is
// recorded (Deliver then returns 0) instead of stopping the goroutine.
type softTB struct {
	testing.TB
	mu  sync.Mutex
	err error
}

func (s *softTB) Fatalf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = fmt.Errorf(format, args...)
	}
}

func (s *softTB) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

var ownerPID = regexp.MustCompile(`-(\d+)-[0-9a-f]{8}$`)

func scaleIMAPName(i int) string { return fmt.Sprintf("u%03d", i) }

type scaleUser struct {
	id, key, imapName string
	workflows         []string
}

// scaleAddAdmin creates the admin with `inboxd user add --admin` on the
// shared store and returns its API key.
func scaleAddAdmin(t *testing.T, d *daemon) string {
	t.Helper()
	cmd := exec.Command(d.bin, "user", "add", "--email", "admin@example.com", "--admin")
	cmd.Env = d.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("user add --admin: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if key, ok := strings.CutPrefix(line, "api key: "); ok {
			return strings.TrimSpace(key)
		}
	}
	t.Fatalf("user add printed no key: %s", out)
	return ""
}

// scaleHTTP allows the setup's concurrent calls to reuse connections.
var scaleHTTP = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// scaleCall is an API call that reports failure as an error, so that it can
// run off the test goroutine.
func scaleCall(base, key, method, path string, body, out any, want int) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := scaleHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// scaleCreateUsers creates n users through the admin API (user, API key,
// IMAP and LLM settings, one workflow; every tenth user two), eight at a time,
// round-robin over the replicas.
func scaleCreateUsers(replicas []*daemon, adminKey string, n int, dove *testsvc.DovecotServer, llmURL string) ([]scaleUser, error) {
	users := make([]scaleUser, n)
	errs := make(chan error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range next {
				base := replicas[i%len(replicas)].base
				u := scaleUser{imapName: scaleIMAPName(i)}
				var created struct{ ID string }
				if err := scaleCall(base, adminKey, "POST", "/api/v1/users", map[string]any{"email": fmt.Sprintf("user%03d@example.com", i)}, &created, 201); err != nil {
					errs <- err
					continue
				}
				u.id = created.ID
				var key struct {
					APIKey string `json:"api_key"`
				}
				if err := scaleCall(base, adminKey, "POST", "/api/v1/users/"+u.id+"/api-keys", map[string]any{"name": "scale"}, &key, 201); err != nil {
					errs <- err
					continue
				}
				u.key = key.APIKey
				if err := scaleCall(base, u.key, "PUT", "/api/v1/settings", map[string]any{
					"imap_server": dove.Host, "imap_port": dove.Port, "imap_security": "none",
					"imap_username": u.imapName, "imap_password": fmt.Sprintf("pw-%03d", i),
					"llm_base_url": llmURL, "llm_model": "fake-model", "llm_api_key": "sk-test",
				}, nil, 200); err != nil {
					errs <- err
					continue
				}
				nwf := 1
				if i%10 == 0 {
					nwf = 2
				}
				for w := range nwf {
					var wf struct{ ID string }
					if err := scaleCall(base, u.key, "POST", "/api/v1/workflows", map[string]any{
						"name": fmt.Sprintf("triage %d", w), "active": true, "trigger": map[string]any{"type": "new_email"},
						"steps": []map[string]any{{"name": "summarise", "kind": "llm", "system_prompt": "Summarise <<trigger_output>>"}},
					}, &wf, 201); err != nil {
						errs <- err
						break
					}
					u.workflows = append(u.workflows, wf.ID)
				}
				users[i] = u
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("creating users: %w (and %d more errors)", err, len(errs))
	}
	return users, nil
}

func scaleRedisOptions(t *testing.T, redisURL string) *redis.Options {
	t.Helper()
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	return opt
}

// scaleLeaseSplit counts the live poll leases per replica (index -1: an
// owner that is none of them).
func scaleLeaseSplit(t *testing.T, rdb *redis.Client, replicaOf func(string) int) map[int]int {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "lease:poll:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{0: 0, 1: 0, 2: 0}
	if len(keys) == 0 {
		return out
	}
	vals, err := rdb.MGet(ctx, keys...).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vals {
		if s, ok := v.(string); ok {
			out[replicaOf(s)]++
		}
	}
	return out
}

// A redisMonitor records, through MONITOR on a raw connection (go-redis
// cannot stream it), every command that touches a poll lease or a user's
// poll state, with Redis' own microsecond timestamp and the client address.
type redisMonitor struct {
	conn   net.Conn
	mu     sync.Mutex
	events []monitorEvent
	marker chan struct{} // closed when monitorMarker comes through
	done   chan struct{}
}

// monitorMarker is a key the test writes to know that the recording has
// caught up with everything before it.
const monitorMarker = "inboxd-scale-test:end-of-recording"

type monitorEvent struct {
	at     int64  // unix microseconds, Redis' clock
	client string // "ip:port", or "lua" for a command run by a script
	args   []string
}

func startRedisMonitor(t *testing.T, redisURL string) *redisMonitor {
	t.Helper()
	u, err := url.Parse(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(conn, 1<<20)
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("MONITOR: %q %v", line, err)
	}
	m := &redisMonitor{conn: conn, marker: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		marked := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if !marked && strings.Contains(line, monitorMarker) {
				marked = true
				close(m.marker)
			}
			if ev, ok := parseMonitorLine(strings.TrimRight(line, "\r\n")); ok && ev.relevant() {
				if ev.args[0] == "eval" { // keep which script, not its text
					if strings.Contains(ev.args[1], "DEL") {
						ev.args[1] = "cad"
					} else {
						ev.args[1] = "cas"
					}
				}
				m.mu.Lock()
				m.events = append(m.events, ev)
				m.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { m.conn.Close(); <-m.done })
	return m
}

// stop ends the recording once it has caught up with the present (a marker
// written through rdb has come through) and returns it, in Redis' execution
// order.
func (m *redisMonitor) stop(rdb *redis.Client) []monitorEvent {
	if err := rdb.Set(context.Background(), monitorMarker, "1", time.Minute).Err(); err == nil {
		select {
		case <-m.marker:
		case <-time.After(30 * time.Second):
		}
	}
	m.conn.Close()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.events
}

// The per-user keys a poll reads and writes (daemon/poller/poll.go, status.go).
var pollStateSuffixes = []string{":last_email_uid", ":last_email_uidvalidity", ":poll_status"}

func isPollStateKey(k string) bool {
	if !strings.HasPrefix(k, "user:") {
		return false
	}
	for _, s := range pollStateSuffixes {
		if strings.HasSuffix(k, s) {
			return true
		}
	}
	return false
}

func (ev monitorEvent) relevant() bool {
	if ev.args[0] == "mget" && len(ev.args) != 3 {
		return false // not a poll's readState (the test's own checks)
	}
	for _, a := range ev.args[1:] {
		if strings.HasPrefix(a, "lease:poll:") || isPollStateKey(a) {
			return true
		}
	}
	return false
}

// parseMonitorLine reads `+1700000000.123456 [0 127.0.0.1:5000] "set" "k" "v"`.
func parseMonitorLine(line string) (monitorEvent, bool) {
	var ev monitorEvent
	if !strings.HasPrefix(line, "+") {
		return ev, false
	}
	ts, rest, ok := strings.Cut(line[1:], " [")
	if !ok {
		return ev, false
	}
	sec, usec, ok := strings.Cut(ts, ".")
	s, err1 := strconv.ParseInt(sec, 10, 64)
	us, err2 := strconv.ParseInt(usec, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return ev, false
	}
	ev.at = s*1_000_000 + us
	who, rest, ok := strings.Cut(rest, "] ")
	if !ok {
		return ev, false
	}
	_, ev.client, _ = strings.Cut(who, " ")
	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
		if rest[0] != '"' {
			return ev, false
		}
		var b strings.Builder
		i := 1
		for ; i < len(rest) && rest[i] != '"'; i++ {
			c := rest[i]
			if c == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					c = '\n'
				case 'r':
					c = '\r'
				case 't':
					c = '\t'
				case 'a':
					c = '\a'
				case 'b':
					c = '\b'
				case 'x':
					if i+2 < len(rest) {
						if v, err := strconv.ParseUint(rest[i+1:i+3], 16, 8); err == nil {
							c = byte(v)
							i += 2
						}
					}
				default:
					c = rest[i]
				}
			}
			b.WriteByte(c)
		}
		ev.args = append(ev.args, b.String())
		rest = rest[min(i+1, len(rest)):]
	}
	if len(ev.args) == 0 {
		return ev, false
	}
	ev.args[0] = strings.ToLower(ev.args[0])
	return ev, true
}

// leaseInterval is one continuous holding of a user's poll lease: from the
// SET NX that took it to its expiry (last renewal + TTL) or its release.
type leaseInterval struct {
	owner      string
	replica    int
	start, end int64 // unix microseconds
}

type leaseReport struct {
	byUser          map[string][]leaseInterval // user id -> holdings in order
	intervals       int
	polls           int
	pollsBy         map[int]int
	writes          int
	counts          map[string]int // violations by kind
	examples        []string       // the first few of each kind, explained
	pollsWhileOther int            // polls outside the lease while another replica held it
	maxOvershoot    int64          // µs: the latest poll after its replica's lease expired
}

// Kinds of violation found by checkPollLeases.
const (
	violLeaseConflict = "lease taken while another replica held it"
	violReplay        = "lease outcome the replay cannot explain"
	violUnknownClient = "poll-state command from a client that never touched a lease"
	violPollNoLease   = "poll (trigger-state read) by a replica not holding the user's lease"
	violWriteNoLease  = "trigger-state or status write outside the lease holding its poll began in"
)

// checkPollLeases proves, from the MONITOR recording, that no user was
// polled by two replicas at the same moment. The method, in two steps:
//
//  1. Rebuild each user's lease holdings. A script renewal (CAS) or release
//     (CAD) shows its outcome in the recording: the script's own SET or DEL
//     follows it. A SET NX's outcome is read from what its replica did next on
//     that key (daemon/poller/tenant.go): after a won SET NX the replica
//     renews with the CAS script, after a lost one it tries SET NX again; a
//     SET NX with no later command (the killed replica) is judged by the
//     lease's expiry. A holding lasts until its last renewal + TTL, or its
//     release. Check: no SET NX wins while another replica's holding is
//     live, no renewal succeeds outside a live holding of its own (so the
//     rebuilt timeline agrees with Redis).
//  2. Every poll reads the user's trigger state (one MGET) after the IMAP
//     STATUS and before creating any instance, and writes it (SET
//     last_email_uid, MSET baseline) after creating them. Check: each MGET
//     lies inside a holding of the replica that sent it (client address ->
//     replica, from the lease commands it sent), and each later state write
//     of that poll lies inside the same holding.
//
// Holdings of one user by different replicas never overlap (step 1), and
// each poll's effects (the span from its state read to its last state
// write, including the instances it creates) lie inside one holding of its
// own replica (step 2): so two replicas' polls of one user never overlap.
// A replica that polled without holding the lease, or whose lease expired
// in the middle of a poll, shows up as a violation.
func checkPollLeases(events []monitorEvent, replicaOf func(owner string) int) leaseReport {
	rep := leaseReport{byUser: map[string][]leaseInterval{}, pollsBy: map[int]int{}, counts: map[string]int{}}
	violate := func(kind, format string, a ...any) {
		rep.counts[kind]++
		if rep.counts[kind] <= 5 {
			rep.examples = append(rep.examples, fmt.Sprintf(format, a...))
		}
	}
	stamp := func(us int64) string { return time.UnixMicro(us).Format("15:04:05.000000") }

	// Lease operations per user, with the outcomes the recording shows.
	type leaseOp struct {
		at     int64
		owner  string
		kind   string // setnx | cas | cad
		ttl    int64  // µs
		result int    // 1 won, 0 lost, -1 unknown
	}
	ops := map[string][]*leaseOp{}
	addrOwner := map[string]string{}
	var lastScript *leaseOp
	for _, ev := range events {
		if ev.client == "lua" {
			if lastScript != nil && len(ev.args) > 0 {
				switch ev.args[0] {
				case "set":
					if lastScript.kind == "cas" {
						lastScript.result = 1
					}
				case "del":
					if lastScript.kind == "cad" {
						lastScript.result = 1
					}
				}
			}
			continue
		}
		lastScript = nil
		a := ev.args
		switch {
		case a[0] == "set" && len(a) >= 3 && strings.HasPrefix(a[1], "lease:poll:"):
			op := &leaseOp{at: ev.at, owner: a[2], kind: "setnx", result: -1}
			for i := 3; i+1 < len(a); i++ {
				n, _ := strconv.ParseInt(a[i+1], 10, 64)
				switch strings.ToLower(a[i]) {
				case "ex":
					op.ttl = n * 1_000_000
				case "px":
					op.ttl = n * 1_000
				}
			}
			ops[strings.TrimPrefix(a[1], "lease:poll:")] = append(ops[strings.TrimPrefix(a[1], "lease:poll:")], op)
			addrOwner[ev.client] = op.owner
		case a[0] == "eval" && len(a) >= 5 && strings.HasPrefix(a[3], "lease:poll:"):
			op := &leaseOp{at: ev.at, owner: a[4], kind: a[1]}
			if op.kind == "cas" && len(a) >= 7 {
				ms, _ := strconv.ParseInt(a[6], 10, 64)
				op.ttl = ms * 1_000
			}
			user := strings.TrimPrefix(a[3], "lease:poll:")
			ops[user] = append(ops[user], op)
			addrOwner[ev.client] = op.owner
			lastScript = op
		}
	}

	// Step 1: holdings per user.
	const slack = 2_000 // µs: Redis expires keys at millisecond precision
	for user, list := range ops {
		// A SET NX's outcome, from the same replica's next command on the key.
		for i, op := range list {
			if op.kind != "setnx" {
				continue
			}
			for _, later := range list[i+1:] {
				if later.owner != op.owner {
					continue
				}
				if later.kind == "setnx" {
					op.result = 0
				} else {
					op.result = 1
				}
				break
			}
		}
		var ivs []leaseInterval
		var cur *leaseInterval // the latest holding; live while at <= cur.end
		for _, op := range list {
			live := cur != nil && op.at <= cur.end
			switch op.kind {
			case "setnx":
				won := op.result == 1 || (op.result == -1 && !live)
				if !won {
					if cur == nil || op.at > cur.end+slack {
						if op.result == 0 {
							violate(violReplay, "user %s: SET NX by %s at %s lost with no live holder", user, op.owner, stamp(op.at))
						}
					}
					continue
				}
				if cur != nil && op.at <= cur.end-slack {
					violate(violLeaseConflict, "user %s: lease taken by %s at %s while %s held it until %s", user, op.owner, stamp(op.at), cur.owner, stamp(cur.end))
				}
				if cur != nil {
					cur.end = min(cur.end, op.at)
				}
				ivs = append(ivs, leaseInterval{owner: op.owner, replica: replicaOf(op.owner), start: op.at, end: op.at + op.ttl})
				cur = &ivs[len(ivs)-1]
			case "cas":
				if op.result == 1 {
					if cur == nil || cur.owner != op.owner || op.at > cur.end+slack {
						violate(violReplay, "user %s: renewal by %s at %s succeeded outside its holding", user, op.owner, stamp(op.at))
						continue
					}
					cur.end = op.at + op.ttl
				} else if cur != nil && cur.owner == op.owner {
					if op.at < cur.end-slack {
						violate(violReplay, "user %s: renewal by %s at %s failed inside its holding (until %s)", user, op.owner, stamp(op.at), stamp(cur.end))
					}
					cur.end = min(cur.end, op.at)
				}
			case "cad":
				if op.result == 1 && cur != nil && cur.owner == op.owner {
					cur.end = min(cur.end, op.at)
				}
			}
		}
		rep.byUser[user] = ivs
		rep.intervals += len(ivs)
	}

	// Step 2: polls inside their replica's holdings.
	holding := func(user, owner string, at int64) int {
		for i, iv := range rep.byUser[user] {
			if iv.owner == owner && iv.start <= at && at <= iv.end {
				return i
			}
		}
		return -1
	}
	type pollKey struct{ user, owner string }
	current := map[pollKey]int{} // the holding of the owner's latest poll of the user
	for _, ev := range events {
		if ev.client == "lua" {
			continue
		}
		a := ev.args
		var key string
		switch a[0] {
		case "mget": // readState: exactly last_email_uid and last_email_uidvalidity
			if len(a) == 3 && isPollStateKey(a[1]) && isPollStateKey(a[2]) {
				key = a[1]
			}
		case "set", "mset":
			if len(a) > 1 && isPollStateKey(a[1]) {
				key = a[1]
			}
		}
		if key == "" {
			continue
		}
		user := strings.TrimPrefix(key, "user:")
		user = user[:strings.IndexByte(user, ':')]
		owner, ok := addrOwner[ev.client]
		if !ok {
			violate(violUnknownClient, "user %s: %s at %s from %s, a client that never touched a lease", user, a[0], stamp(ev.at), ev.client)
			continue
		}
		h := holding(user, owner, ev.at)
		switch {
		case a[0] == "mget":
			rep.polls++
			rep.pollsBy[replicaOf(owner)]++
			current[pollKey{user, owner}] = h
			if h >= 0 {
				break
			}
			// Explain: this replica's last holding before the poll, and who
			// held the lease at the time, if anyone.
			why := "it had never held it"
			for _, iv := range slices.Backward(rep.byUser[user]) {
				if iv.owner == owner && iv.start <= ev.at {
					why = fmt.Sprintf("its holding %s-%s had expired %v before", stamp(iv.start), stamp(iv.end), time.Duration(ev.at-iv.end)*time.Microsecond)
					rep.maxOvershoot = max(rep.maxOvershoot, ev.at-iv.end)
					break
				}
			}
			for _, iv := range rep.byUser[user] {
				if iv.owner != owner && iv.start <= ev.at && ev.at <= iv.end {
					why += fmt.Sprintf("; replica %d held the lease %s-%s", iv.replica, stamp(iv.start), stamp(iv.end))
					rep.pollsWhileOther++
					break
				}
			}
			violate(violPollNoLease, "user %s: polled by replica %d at %s without its lease: %s", user, replicaOf(owner), stamp(ev.at), why)
		case strings.HasSuffix(key, ":poll_status"):
			rep.writes++
			if h < 0 {
				violate(violWriteNoLease, "user %s: poll status written by replica %d at %s without holding its lease", user, replicaOf(owner), stamp(ev.at))
			}
		default:
			rep.writes++
			p, ok := current[pollKey{user, owner}]
			if h < 0 || !ok || p != h {
				violate(violWriteNoLease, "user %s: trigger state written by replica %d at %s outside the lease holding its poll began in", user, replicaOf(owner), stamp(ev.at))
			}
		}
	}
	return rep
}
