package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// initStatus is the "initialization" block of GET /api/v1/inbox/status.
type initStatus struct {
	Status   string `json:"status"`
	Progress struct {
		Done  int `json:"done"`
		Total int `json:"total"`
	} `json:"progress"`
	LastError string `json:"last_error"`
}

func (d *daemon) initStatus() initStatus {
	d.t.Helper()
	var st struct{ Initialization initStatus }
	if code := d.call("GET", "/api/v1/inbox/status", nil, &st); code != 200 {
		d.t.Fatalf("inbox status: %d", code)
	}
	return st.Initialization
}

// TestInitializationResumesAfterSIGKILL is issue #6's "kill the daemon
// mid-initialisation; after restart the job resumes and finishes without
// duplicate points", end to end: the real binary (embedded SQLite, offline
// embedder) initialises a Dovecot mailbox of 250 threads; it is SIGKILLed
// once some but not all threads are stored; a new process on the same data
// directory resumes the job by itself (the recovery sweep: no second
// POST), skips the threads already stored, and completes with exactly one
// point per thread.
//
// A SIGKILLed process leaves its job lease in the KV, and the recovery sweep
// resumes only a job whose lease is gone: the test runs with jobs.lease = 3s
// and waits for the real expiry.
func TestInitializationResumesAfterSIGKILL(t *testing.T) {
	const userAddr = "alice@example.com"
	dove := testsvc.Dovecot(t, map[string]string{"alice": "alice-pw"})
	seedStart := time.Now()
	want := seedThreads(t, dove, "alice", userAddr, 200, 50)
	t.Logf("seeded %d threads in %v", len(want), time.Since(seedStart).Round(time.Millisecond))

	const jobsLease = 5 * time.Second
	d := newDaemon(t, "INBOXD_JOBS_LEASE="+jobsLease.String())
	d.start()
	var me struct {
		ID string `json:"id"`
	}
	if code := d.call("GET", "/api/v1/me", nil, &me); code != 200 || me.ID == "" {
		t.Fatalf("me: %d %+v", code, me)
	}
	if code := d.call("PUT", "/api/v1/settings", map[string]any{
		"imap_server": dove.Host, "imap_port": dove.Port, "imap_security": "none", "imap_username": "alice", "imap_password": "alice-pw",
	}, nil); code != 200 {
		t.Fatalf("settings: %d", code)
	}
	if code := d.call("POST", "/api/v1/inbox/initialize", map[string]any{}, nil); code != 202 {
		t.Fatalf("initialize: %d", code)
	}
	initStart := time.Now()
	// Catch the job between its first and its last batch, then SIGKILL.
	var before initStatus
	for {
		before = d.initStatus()
		if before.Status != "running" {
			t.Fatalf("the initialisation ended before it could be killed mid-way: %+v", before)
		}
		if before.Progress.Done > 0 && before.Progress.Done < before.Progress.Total {
			break
		}
		if time.Since(initStart) > 60*time.Second {
			t.Fatalf("no progress within 60 s: %+v", before)
		}
		time.Sleep(2 * time.Millisecond)
	}
	d.kill()
	t.Logf("SIGKILLed %v after the start, at progress %d/%d", time.Since(initStart).Round(time.Millisecond), before.Progress.Done, before.Progress.Total)
	if before.Progress.Total != len(want) {
		t.Errorf("the job selected %d threads, want %d", before.Progress.Total, len(want))
	}

	// The dead process's state, read from the database file.
	db := openDB(t, d.dataDir)
	ctx := context.Background()
	kvValue := func(key string) (string, int64) {
		t.Helper()
		var v string
		var exp *int64
		if err := db.QueryRowContext(ctx, "SELECT value, expires_at FROM kv WHERE key = ?", key).Scan(&v, &exp); err != nil {
			t.Fatalf("kv %s: %v", key, err)
		}
		if exp == nil {
			return v, 0
		}
		return v, *exp
	}
	if status, _ := kvValue("user:" + me.ID + ":inbox_status"); status != "running" {
		t.Fatalf("inbox_status after the kill: %q, want running (to be resumed)", status)
	}
	stored := vectorRows(t, db, me.ID)
	if stored.rows < before.Progress.Done || stored.rows >= len(want) {
		t.Fatalf("%d points stored at the kill; progress said %d of %d", stored.rows, before.Progress.Done, len(want))
	}
	leaseKey := "lease:job:inbox_initialization:" + me.ID
	owner, expires := kvValue(leaseKey)
	left := time.Until(time.UnixMilli(expires))
	if left <= 0 || left > jobsLease {
		t.Fatalf("the dead process's lease (%s) expires in %v; want within jobs.lease (%v)", owner, left, jobsLease)
	}
	t.Logf("the dead process's lease %s expires in %v", owner, left.Round(time.Millisecond))

	// The second process: nothing is started by hand.
	logOffset := fileSize(t, d.logPath)
	restart := time.Now()
	d.start()
	lowest := before.Progress.Done
	var after initStatus
	waitUntil(t, "the resumed initialisation to complete", 60*time.Second, func() bool {
		after = d.initStatus()
		if after.Status == "running" || after.Status == "completed" {
			lowest = min(lowest, after.Progress.Done)
		}
		return after.Status != "running"
	})
	t.Logf("completed %v after the restart: %+v", time.Since(restart).Round(time.Millisecond), after)
	if after.Status != "completed" || after.Progress.Done != len(want) || after.Progress.Total != len(want) || after.LastError != "" {
		t.Fatalf("after the restart: %+v, want completed %d/%d", after, len(want), len(want))
	}
	if lowest < before.Progress.Done {
		t.Errorf("progress went back from %d to %d after the restart: the job started over", before.Progress.Done, lowest)
	}

	// The second process resumed the job and embedded only what was missing.
	// The first listing is the resumption. On a loaded machine the job may
	// lose its (short) lease to a slow store and be resumed again by the
	// next sweep: each later listing must then find at least as much stored.
	resumed, listed, lastStored := false, map[string]any(nil), 0
	for _, rec := range logRecords(t, d.logPath, logOffset) {
		switch rec["msg"] {
		case "jobs: resumed a job left running by a stopped process":
			resumed = resumed || rec["user_id"] == me.ID && rec["job"] == "inbox_initialization"
		case "jobs: initialisation listed threads":
			if rec["user_id"] != me.ID {
				continue
			}
			n := int(rec["already_stored"].(float64))
			if listed == nil {
				listed = rec
			} else {
				t.Logf("the job was resumed again (lease lost on a loaded machine): %v", rec)
				if n < lastStored {
					t.Errorf("a later resumption found %d stored, fewer than the %d before it", n, lastStored)
				}
			}
			lastStored = n
		}
	}
	if !resumed {
		t.Error("the second process's log has no recovery of the initialisation")
	}
	if listed == nil {
		t.Fatal("the second process's log has no listing of threads")
	}
	skipped, total := int(listed["already_stored"].(float64)), int(listed["threads"].(float64))
	t.Logf("the second process listed %d threads, %d already stored: it embedded %d", total, skipped, total-skipped)
	if total != len(want) || skipped != stored.rows {
		t.Errorf("the second process listed %d threads with %d already stored, want %d with the %d stored before the kill", total, skipped, len(want), stored.rows)
	}
	if v := metricValue(t, d.base, `inboxd_job_runs_total{job="inbox_initialization",result="ok"}`); v != 1 {
		t.Errorf("the second process's inboxd_job_runs_total{job=inbox_initialization,result=ok} = %v, want 1", v)
	}

	// One point per thread: exactly the seeded threads, none twice.
	final := vectorRows(t, db, me.ID)
	if final.rows != len(want) || final.points != final.rows || final.threads != final.rows {
		t.Errorf("points: %d rows, %d distinct point ids, %d distinct thread ids; want %d of each", final.rows, final.points, final.threads, len(want))
	}
	for _, id := range final.ids {
		if !want[strings.Trim(id, "<>")] {
			t.Errorf("a point for an unknown thread %q", id)
		}
	}
	t.Logf("figures: %d threads; the first process stored %d (progress %d) before the SIGKILL; the second embedded %d; test ran %v",
		len(want), stored.rows, before.Progress.Done, total-skipped, time.Since(seedStart).Round(time.Millisecond))
}

// seedThreads fills login's INBOX and Sent over one IMAP connection:
// received threads (a contact's message in INBOX, the user's reply in Sent
// for one in four) and threads the user started (in Sent, with a contact's
// answer in INBOX for one in five), all dated within the last weeks. It
// returns the thread ids (root Message-IDs).
func seedThreads(t *testing.T, dove *testsvc.DovecotServer, login, addr string, received, started int) map[string]bool {
	t.Helper()
	c, err := imapclient.DialInsecure(dove.Addr(), &imapclient.Options{Dialer: &net.Dialer{Timeout: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(login, dove.Password(t, login)).Wait(); err != nil {
		t.Fatal(err)
	}
	put := func(folder, id, from, to, subject string, date time.Time, inReplyTo, body string) {
		t.Helper()
		var b strings.Builder
		fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s>\r\n", from, to, subject, date.Format(time.RFC1123Z), id)
		if inReplyTo != "" {
			fmt.Fprintf(&b, "In-Reply-To: <%s>\r\nReferences: <%s>\r\n", inReplyTo, inReplyTo)
		}
		b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
		b.WriteString(strings.ReplaceAll(body, "\n", "\r\n"))
		cmd := c.Append(folder, int64(b.Len()), &imap.AppendOptions{Time: date})
		if _, err := cmd.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := cmd.Wait(); err != nil {
			t.Fatalf("append to %s: %v", folder, err)
		}
	}
	words := strings.Fields("invoice garden piano bicycle kitchen roof tax holiday contract furniture painting window boiler insurance mortgage ladder")
	threads := map[string]bool{}
	now := time.Now().Add(-time.Hour)
	for i := range received + started {
		w1, w2 := words[i%len(words)], words[(i*7+3)%len(words)]
		contact := fmt.Sprintf("Contact %d <contact%d@clients.example>", i%9, i%9)
		root := fmt.Sprintf("thread-%d@e2e.example", i)
		date := now.Add(-time.Duration(received+started-i) * 2 * time.Hour)
		subject := fmt.Sprintf("%s and %s (%d)", w1, w2, i)
		threads[root] = true
		if i < received {
			put("INBOX", root, contact, addr, subject, date, "", fmt.Sprintf(
				"Hello,\n\ncould you send me the details about the %s and the %s? I would like to meet next week about it.\n\nThanks, Contact %d\n", w1, w2, i%9))
			if i%4 == 0 {
				put("Sent", fmt.Sprintf("reply-%d@e2e.example", i), "Me <"+addr+">", contact, "Re: "+subject, date.Add(time.Hour), root, fmt.Sprintf(
					"Hi Contact %d,\n\nthanks for your message about the %s. I will send the %s details tomorrow.\n\nCheers,\nMe\n", i%9, w1, w2))
			}
			continue
		}
		put("Sent", root, "Me <"+addr+">", contact, subject, date, "", fmt.Sprintf("Hello,\n\nis the %s still available, and what about the %s?\n\nMe\n", w1, w2))
		if i%5 == 0 {
			put("INBOX", fmt.Sprintf("answer-%d@e2e.example", i), contact, addr, "Re: "+subject, date.Add(time.Hour), root, "Yes, both are. Shall I reserve them?\n")
		}
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	return threads
}

// openDB opens the daemon's SQLite database (WAL: readable while it runs).
func openDB(t *testing.T, dataDir string) *sqldb.DB {
	t.Helper()
	db, err := sqldb.Open(context.Background(), "sqlite://"+filepath.Join(dataDir, "inboxd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// pointCounts is what the embedded vector store holds for one user.
type pointCounts struct {
	rows, points, threads int // rows, distinct point ids, distinct payload thread ids
	ids                   []string
}

func vectorRows(t *testing.T, db *sqldb.DB, userID string) pointCounts {
	t.Helper()
	var c pointCounts
	err := db.QueryRowContext(context.Background(),
		"SELECT count(*), count(DISTINCT point_id), count(DISTINCT json_extract(payload, '$.thread_id')) FROM vectors WHERE user_id = ?",
		userID).Scan(&c.rows, &c.points, &c.threads)
	if err != nil {
		t.Fatalf("count points: %v", err)
	}
	rows, err := db.QueryContext(context.Background(), "SELECT point_id FROM vectors WHERE user_id = ?", userID)
	if err != nil {
		t.Fatalf("list points: %v", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		c.ids = append(c.ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return c
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// logRecords reads the daemon's JSON log records from offset on.
func logRecords(t *testing.T, path string, offset int64) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil {
			out = append(out, rec)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// metricValue reads one sample (name{labels} exactly as exposed) from the
// daemon's /metrics; a missing sample fails the test.
func metricValue(t *testing.T, base, sample string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", sample, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no sample %s", sample)
	return 0
}
