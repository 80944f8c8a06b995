package main

// The checks at the end: every mail processed exactly once, failed runs
// explained by an injected fault, no error log line but the faults'.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/workflow"
)

// Windows within which a fault explains a failed run or an error line.
const (
	// A killed plugin is restarted after 0.5-60 s of backoff, and an open
	// circuit keeps it down for a minute or more; calls fail meanwhile.
	pluginWindow = 3 * time.Minute
	// A cut connection is noticed at its next use; IDLE and pooled
	// connections are used at least every poll interval.
	cutWindow = 2 * time.Minute
)

// Causes of failed runs, besides the fault kinds.
const causeOther = "other"

// runCheck is the verdict on the runs.
type runCheck struct {
	RunsOut     int            `json:"runs_out"`
	ByStatus    map[string]int `json:"runs_by_status"`
	FailedBy    map[string]int `json:"failed_runs_by_cause"`
	Resumed     int            `json:"runs_resumed"`
	Duplicates  int            `json:"duplicates"`
	Lost        int            `json:"lost"`
	Unexpected  int            `json:"unexpected_runs"`
	NotFinished int            `json:"runs_not_finished"`
	Problems    []string       `json:"problems,omitempty"`
}

func (c *runCheck) problem(format string, args ...any) {
	if len(c.Problems) < 30 {
		c.Problems = append(c.Problems, fmt.Sprintf(format, args...))
	}
}

func finished(status string) bool {
	switch status {
	case workflow.StatusCompleted, workflow.StatusStopped, workflow.StatusFailed, workflow.StatusCancelled, workflow.StatusSkipped:
		return true
	}
	return false
}

// checkRuns matches the runs of every tenant against the mail delivered to
// it: each delivered mail must have exactly one run, for its tenant; a mail
// whose delivery is uncertain may have one or none.
func checkRuns(m *mailer, tenants []tenant, runs [][]instance, faults []fault) runCheck {
	c := runCheck{ByStatus: map[string]int{}, FailedBy: map[string]int{}}
	m.mu.Lock()
	owner := make(map[int]int, len(m.done))
	for _, d := range m.done {
		owner[d.Seq] = d.User
	}
	states := m.states
	m.mu.Unlock()
	seen := map[int]int{} // seq -> runs
	for i, list := range runs {
		user := tenants[i].imapUser
		for _, in := range list {
			c.RunsOut++
			c.ByStatus[in.Status]++
			if in.Attempts > 1 {
				c.Resumed++
			}
			if !finished(in.Status) {
				c.NotFinished++
				c.problem("run %s of %s still %s", in.ID, user, in.Status)
			}
			if in.Status == workflow.StatusFailed {
				cause := failureCause(in, user, faults)
				c.FailedBy[cause]++
				if cause == causeOther {
					c.problem("run %s of %s failed with no injected fault to explain it: %s", in.ID, user, in.Error)
				}
			}
			seq, ok := m.seqOf(in)
			switch {
			case !ok:
				c.Unexpected++
				c.problem("run %s of %s is for no soak mail of this run", in.ID, user)
				continue
			case states[seq] == uncertain:
			case states[seq] != delivered:
				c.Unexpected++
				c.problem("run %s of %s is for mail %d, whose delivery failed", in.ID, user, seq)
				continue
			case owner[seq] != i:
				c.Unexpected++
				c.problem("run %s of %s is for mail %d, delivered to %s", in.ID, user, seq, imapUser(owner[seq]))
				continue
			}
			seen[seq]++
		}
	}
	m.mu.Lock()
	done := slices.Clone(m.done)
	m.mu.Unlock()
	for _, d := range done {
		switch n := seen[d.Seq]; {
		case n == 0:
			c.Lost++
			c.problem("mail %d to %s (delivered %s) has no run", d.Seq, imapUser(d.User), d.At.Format(time.TimeOnly))
		case n > 1:
			c.Duplicates += n - 1
			c.problem("mail %d to %s has %d runs", d.Seq, imapUser(d.User), n)
		}
	}
	return c
}

// seqOf reads the mail's sequence number from the run's trigger.
func (m *mailer) seqOf(in instance) (int, bool) {
	if in.Trigger.Email == nil {
		return 0, false
	}
	sub := subjectRE.FindStringSubmatch(in.Trigger.Email.Subject)
	if sub == nil || sub[2] != m.runID {
		return 0, false
	}
	seq, err := strconv.Atoi(sub[1])
	return seq, err == nil
}

// failureCause explains a failed run of user by an injected fault, or
// says causeOther.
func failureCause(in instance, user string, faults []fault) string {
	e := strings.ToLower(in.Error)
	at := in.FinishedAt
	if at.IsZero() {
		at = in.CreatedAt
	}
	switch {
	case pluginFailure(e) && near(faults, faultPluginKill, at, "", pluginWindow):
		return faultPluginKill
	case connectionLoss(e) && near(faults, faultIMAPCut, at, user, cutWindow):
		return faultIMAPCut
	}
	return causeOther
}

// pluginFailure: the error of a call to a plugin that was killed
// (pluginhost's wording).
func pluginFailure(lower string) bool {
	return containsAny(lower, "crashed or went away during the call", "is restarting after a crash",
		"is starting", "circuit open", "circuit half-open", "plugin unavailable")
}

// connectionLoss: the error of an IMAP connection that was cut.
func connectionLoss(lower string) bool {
	return containsAny(lower, "eof", "connection reset", "broken pipe", "use of closed network connection",
		"server shutting down", "bye", "connection closed", "closed by the server")
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// near reports whether a fault of kind (that cut user, when user is set)
// was injected at most window before at.
func near(faults []fault, kind string, at time.Time, user string, window time.Duration) bool {
	for _, f := range faults {
		if f.Kind != kind || f.Error != "" {
			continue
		}
		// The fault's time is taken just before it is injected, on the
		// same clock as the daemon's; a second of slack for rounding.
		if at.Before(f.At.Add(-time.Second)) || at.After(f.At.Add(window)) {
			continue
		}
		if user != "" && !slices.Contains(f.Users, user) {
			continue
		}
		return true
	}
	return false
}

// logCheck is the verdict on the daemon's log.
type logCheck struct {
	Lines        int            `json:"lines"`
	ErrorLines   int            `json:"error_lines"`
	Explained    map[string]int `json:"error_lines_explained"`
	Unexplained  int            `json:"unexplained_error_lines"`
	Examples     []string       `json:"unexplained_examples,omitempty"`
	ErrorsByMsg  map[string]int `json:"error_lines_by_message"`
	WarnsByMsg   map[string]int `json:"warn_lines_by_message"`
	NotJSONLines int            `json:"lines_not_json"`
}

// Error lines that a plugin kill explains (pluginhost's and go-plugin's
// messages).
var pluginKillMessages = []string{
	"plugin crashed; restarting",
	"plugin process exited",
	"plugin keeps crashing: circuit open, not restarting it until the cool-down ends",
}

// checkLog reads the daemon's JSON log: every ERROR line must be explained
// by an injected fault; a line that is not JSON (a panic, the runtime's
// fatal errors) counts as unexplained. userOf maps user ids to IMAP users.
func checkLog(path string, faults []fault, userOf map[string]string) (logCheck, error) {
	c := logCheck{Explained: map[string]int{}, ErrorsByMsg: map[string]int{}, WarnsByMsg: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("soak: daemon log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	unexplained := func(line string) {
		c.Unexplained++
		if len(c.Examples) < 30 {
			c.Examples = append(c.Examples, tailText(line, 600))
		}
	}
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		c.Lines++
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			c.NotJSONLines++
			unexplained(line)
			continue
		}
		msg := field(rec, "msg")
		switch field(rec, "level") {
		case "WARN":
			c.WarnsByMsg[msg]++
			continue
		case "ERROR":
		default:
			continue
		}
		c.ErrorLines++
		c.ErrorsByMsg[msg]++
		if kind, ok := explain(rec, faults, userOf); ok {
			c.Explained[kind]++
			continue
		}
		unexplained(line)
	}
	if err := sc.Err(); err != nil {
		return c, fmt.Errorf("soak: read the daemon log: %w", err)
	}
	return c, nil
}

// explain names the injected fault an ERROR record is about.
func explain(rec map[string]any, faults []fault, userOf map[string]string) (string, bool) {
	at, err := time.Parse(time.RFC3339Nano, field(rec, "time"))
	if err != nil {
		return "", false
	}
	msg := field(rec, "msg")
	text := strings.ToLower(msg + " " + field(rec, "error"))
	if (slices.Contains(pluginKillMessages, msg) || strings.Contains(text, "signal: killed")) &&
		near(faults, faultPluginKill, at, "", pluginWindow) {
		return faultPluginKill, true
	}
	user := ""
	if id := field(rec, "user_id"); id != "" {
		if user = userOf[id]; user == "" {
			return "", false // not a soak tenant: nothing was cut for it
		}
	}
	if connectionLoss(text) && near(faults, faultIMAPCut, at, user, cutWindow) {
		return faultIMAPCut, true
	}
	return "", false
}

// field is a record's value at key as text.
func field(rec map[string]any, key string) string {
	switch v := rec[key].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}
