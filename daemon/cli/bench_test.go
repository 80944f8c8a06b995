package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBenchIMAPServerProcess is not a test: it is the in-memory IMAP server
// process of TestBenchPoll. The bench re-executes the test binary (instead
// of an inboxd binary) to run `bench imapserver ...`, the arguments after
// "--", through the real command line.
func TestBenchIMAPServerProcess(t *testing.T) {
	if os.Getenv("INBOXD_BENCH_HELPER_PROCESS") != "1" {
		t.Skip("helper process of TestBenchPoll")
	}
	i := slices.Index(os.Args, "--")
	if i < 0 {
		t.Fatal("helper process: no -- in the arguments")
	}
	env := Env{Args: os.Args[i+1:], Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
	if code := Main(context.Background(), env); code != 0 {
		t.Fatalf("bench imapserver exited %d", code)
	}
}

// helperServer runs the in-memory server as a child process: this test
// binary, running only TestBenchIMAPServerProcess.
func helperServer(args []string) (*exec.Cmd, error) {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestBenchIMAPServerProcess$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "INBOXD_BENCH_HELPER_PROCESS=1")
	return cmd, nil
}

func TestBenchPoll(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the poller for several seconds")
	}
	cases := []struct {
		name string
		args []string
	}{
		{"poll", []string{"--interval", "1s"}},
		{"idle", []string{"--interval", "60s", "--idle"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			env := Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
			args := append([]string{"--users", "5", "--rate", "5", "--duration", "3s", "--json", "--setup-timeout", "2m", "--drain", "25s"}, tc.args...)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if err := runBenchPoll(ctx, env, args, helperServer); err != nil {
				t.Fatalf("bench poll %v: %v\nstderr:\n%s", args, err, errb.String())
			}
			var rep benchReport
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				t.Fatalf("report is not JSON: %v\n%s", err, out.String())
			}
			t.Logf("report:\n%s", out.String())
			defer func() {
				if t.Failed() {
					t.Logf("stderr:\n%s", errb.String())
				}
			}()

			if rep.Mode != tc.name || rep.Users != 5 || rep.Server != "memory" {
				t.Errorf("mode %q users %d server %q", rep.Mode, rep.Users, rep.Server)
			}
			// 5 mails/s for 3 s, minus nothing: the schedule is exact.
			if rep.Delivery.Delivered < 10 || rep.Delivery.Failed != 0 {
				t.Errorf("delivered %d, failed %d; want about 15 and 0", rep.Delivery.Delivered, rep.Delivery.Failed)
			}
			d := rep.Detection
			if d.DetectedOnce != rep.Delivery.Delivered || d.Missing != 0 || d.Duplicates != 0 || d.Misrouted != 0 || d.Unexpected != 0 {
				t.Errorf("detection %+v of %d delivered: want every mail detected exactly once", d, rep.Delivery.Delivered)
			}
			if d.P50Ms <= 0 || d.P99Ms < d.P50Ms || d.MaxMs < d.P99Ms {
				t.Errorf("latency p50 %v p99 %v max %v: want 0 < p50 <= p99 <= max", d.P50Ms, d.P99Ms, d.MaxMs)
			}
			// Generous bounds on the median only: the machine may be loaded,
			// -race is slow, and a poll that fails (see below) is retried
			// after a backoff of 5-10 s, which shows in the tail.
			limit := 1000*rep.IntervalSeconds*1.1 + 3000
			if tc.name == "idle" {
				limit = 3000 // the interval is a minute: only IDLE can be this fast
			}
			if d.P50Ms > limit {
				t.Errorf("p50 latency %.0f ms, want under %.0f ms", d.P50Ms, limit)
			}
			if rep.Checks.PerSecond <= 0 || rep.Checks.Count <= 0 {
				t.Errorf("checks %d (%v/s): want some", rep.Checks.Count, rep.Checks.PerSecond)
			}
			if rep.Checks.PollErrors != 0 {
				// Not the bench's doing: go-imap (v2.0.0-beta.8) wakes
				// Command.Wait before it updates Client.Mailbox(), so
				// daemon/mail may skip a SELECT after a racing UNSELECT
				// ("BAD ... only valid in the selected state"). The mail is
				// found on the retry, which the drain below waits for.
				t.Logf("%d poll errors:\n%s", rep.Checks.PollErrors, errb.String())
			}
			if rep.CPU.Seconds <= 0 || rep.CPU.ServerSeconds < 0 || rep.WindowSeconds < 2.9 {
				t.Errorf("cpu %v s, server %v s, window %v s", rep.CPU.Seconds, rep.CPU.ServerSeconds, rep.WindowSeconds)
			}
			if rep.Memory.RSSBeforeKiB <= 0 || rep.Memory.RSSAfterKiB <= 0 || rep.Memory.GoroutinesPerTenant <= 0 {
				t.Errorf("memory %+v", rep.Memory)
			}
			// One connection per tenant: a pooled one, or in IDLE mode the
			// IDLE connection, which its polls borrow (a tenant's first poll
			// may race the IDLE set-up and dial one pooled connection).
			if s := rep.Memory.SocketsPerTenant; s < 1 || (tc.name == "idle" && s >= 1.5) {
				t.Errorf("%.2f sockets per tenant, want 1", s)
			}

			var text bytes.Buffer
			if err := rep.writeText(&text); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"5 tenants", "latency     p50", "checks", "cpu", "KiB/tenant", "goal MET    every delivered mail"} {
				if !strings.Contains(text.String(), want) {
					t.Errorf("text report lacks %q:\n%s", want, text.String())
				}
			}
		})
	}
}

func TestBenchUsage(t *testing.T) {
	vars := dataEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench"}, "missing subcommand"},
		{[]string{"bench", "frob"}, `unknown subcommand "frob"`},
		{[]string{"bench", "poll", "--users", "0"}, "--users must be at least 1"},
		{[]string{"bench", "poll", "--rate", "0"}, "--rate must be positive"},
		{[]string{"bench", "poll", "extra"}, "takes no arguments"},
	} {
		code, _, stderr := run(t, vars, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("inboxd %v: exit %d, stderr %q; want 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestBenchPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(101-i)*time.Millisecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}} {
		if got := percentile(ds, tc.q); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}
