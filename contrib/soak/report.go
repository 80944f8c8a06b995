package main

// The summary: figures, verdicts, and why the soak failed.

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// sample is one progress line.
type sample struct {
	Elapsed     string  `json:"elapsed"`
	MailsIn     int     `json:"mails_in"`
	RunsDone    int     `json:"runs_done"`
	Goroutines  float64 `json:"goroutines"`
	RSSBytes    float64 `json:"rss_bytes"`
	PluginKills int     `json:"plugin_kills"`
	IMAPCuts    int     `json:"imap_cuts"`
	Load        string  `json:"load_average"`
}

func (s sample) line() string {
	return fmt.Sprintf("%-16s mails in %6d · runs done %6d · goroutines %6.0f · RSS %7.1f MiB · plugin kills %3d · IMAP cuts %3d · load %s",
		s.Elapsed, s.MailsIn, s.RunsDone, s.Goroutines, mib(s.RSSBytes), s.PluginKills, s.IMAPCuts, s.Load)
}

func mib(b float64) float64 { return b / (1 << 20) }

// figure is a gauge at the start and the end of the soak, and its range.
type figure struct {
	Start float64 `json:"start"`
	End   float64 `json:"end"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
}

func (f *figure) add(v float64, first bool) {
	if first {
		*f = figure{Start: v, End: v, Min: v, Max: v}
		return
	}
	f.End, f.Min, f.Max = v, min(f.Min, v), max(f.Max, v)
}

func (f figure) growth() float64 {
	if f.Start == 0 {
		return 0
	}
	return f.End/f.Start - 1
}

type report struct {
	Started      time.Time `json:"started"`
	Dir          string    `json:"dir"`
	Tenants      int       `json:"tenants"`
	Rate         float64   `json:"rate_per_second"`
	Warmup       string    `json:"warmup"`
	Duration     string    `json:"duration"`
	PollInterval string    `json:"poll_interval"`
	Tool         string    `json:"tool"`
	LoadStart    string    `json:"load_average_start"`
	LoadEnd      string    `json:"load_average_end"`

	SetupSeconds     float64 `json:"setup_seconds"`
	BaselinedSeconds float64 `json:"baselined_seconds"`
	DrainSeconds     float64 `json:"drain_seconds"`

	MailsIn         int      `json:"mails_in"`
	MailsFailed     int      `json:"mails_failed"`
	MailsUncertain  int      `json:"mails_uncertain"`
	DeliveryRetries int      `json:"delivery_retries"`
	DeliveryErrors  []string `json:"delivery_errors,omitempty"`

	Runs runCheck `json:"runs"`

	PluginKills       int      `json:"plugin_kills"`
	PluginProcsKilled int      `json:"plugin_processes_killed"`
	IMAPCuts          int      `json:"imap_cuts"`
	UsersCut          int      `json:"tenant_cuts"`
	FaultErrors       []string `json:"fault_errors,omitempty"`
	// PluginRestarts is, per plugin and kill, how many seconds passed
	// until its new process was there (-1: none when the runs had drained).
	PluginRestarts map[string][]float64 `json:"plugin_restart_seconds"`
	Faults         []fault              `json:"faults"`

	Goroutines   figure   `json:"goroutines"`
	RSSBytes     figure   `json:"rss_bytes"`
	GoroutineTol float64  `json:"goroutine_tolerance"`
	RSSTol       float64  `json:"rss_tolerance"`
	Samples      []sample `json:"samples"`

	Log logCheck `json:"log"`

	PluginsAtStop int      `json:"plugin_processes_at_sigterm"`
	DaemonExit    int      `json:"daemon_exit_code"`
	StrayPlugins  []string `json:"plugin_processes_left,omitempty"`

	Warnings []string `json:"warnings"`
	Failures []string `json:"failures"`
}

func newReport(o *options, dir string) *report {
	return &report{
		Started: time.Now().UTC().Truncate(time.Second), Dir: dir, Tenants: o.tenants, Rate: o.rate,
		Warmup: o.warmup.String(), Duration: o.duration.String(), PollInterval: o.pollInterval.String(), Tool: o.tool,
		LoadStart: loadAvg(), GoroutineTol: o.goroutineTol, RSSTol: o.rssTol, DaemonExit: -1,
		PluginRestarts: map[string][]float64{}, Warnings: []string{}, Failures: []string{},
	}
}

func (r *report) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

func (r *report) addSample(s sample) {
	first := len(r.Samples) == 0
	r.Goroutines.add(s.Goroutines, first)
	r.RSSBytes.add(s.RSSBytes, first)
	r.Samples = append(r.Samples, s)
}

func (r *report) setMail(m *mailer, in, failedN, uncertainN int) {
	r.MailsIn, r.MailsFailed, r.MailsUncertain = in, failedN, uncertainN
	r.DeliveryRetries = int(m.retries.Load())
	m.mu.Lock()
	r.DeliveryErrors = slices.Clone(m.errs)
	m.mu.Unlock()
}

func (r *report) setFaults(faults []fault) {
	r.Faults = faults
	for _, f := range faults {
		if f.Error != "" {
			r.FaultErrors = append(r.FaultErrors, f.At.Format(time.TimeOnly)+" "+f.Kind+": "+f.Error)
			continue
		}
		switch f.Kind {
		case faultPluginKill:
			r.PluginKills++
			r.PluginProcsKilled += len(f.Restarts)
			for _, rs := range f.Restarts {
				r.PluginRestarts[rs.Plugin] = append(r.PluginRestarts[rs.Plugin], rs.After)
			}
		case faultIMAPCut:
			r.IMAPCuts++
			r.UsersCut += len(f.Users)
		}
	}
}

// Thresholds of the warnings: they do not fail the soak.
const (
	warnFaultFailedShare = 0.05
	warnRestartSeconds   = 10
)

// judge lists what failed, and what deserves a look.
func (r *report) judge(o *options) {
	c := r.Runs
	if byFault := c.FailedBy[faultPluginKill] + c.FailedBy[faultIMAPCut]; c.RunsOut > 0 && float64(byFault) > warnFaultFailedShare*float64(c.RunsOut) {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%d runs (%.1f%%) failed because of an injected fault (over %.0f%%): %s",
			byFault, 100*float64(byFault)/float64(c.RunsOut), 100*warnFaultFailedShare, counts(c.FailedBy)))
	}
	for _, name := range slices.Sorted(maps.Keys(r.PluginRestarts)) {
		worst := slices.Max(r.PluginRestarts[name])
		if slices.Contains(r.PluginRestarts[name], -1) {
			r.Warnings = append(r.Warnings, fmt.Sprintf("plugin %s was not back after a kill when the runs had drained", name))
		} else if worst > warnRestartSeconds {
			r.Warnings = append(r.Warnings, fmt.Sprintf("plugin %s took up to %.1f s to come back after a kill (over %d s)", name, worst, warnRestartSeconds))
		}
	}
	for _, x := range []struct {
		n    int
		what string
	}{
		{c.Duplicates, "duplicate runs (a mail processed more than once)"},
		{c.Lost, "lost mails (delivered, never processed)"},
		{c.Unexpected, "runs for no mail delivered to their tenant"},
		{c.NotFinished, "runs not finished after the drain"},
		{c.FailedBy[causeOther], "failed runs that no injected fault explains"},
		{r.MailsFailed, "mails the soak could not deliver"},
		{r.Log.Unexplained, "daemon log lines at ERROR (or not JSON) that no injected fault explains"},
		{len(r.StrayPlugins), "plugin processes left after the daemon exited"},
	} {
		if x.n > 0 {
			r.fail("%d %s", x.n, x.what)
		}
	}
	if g := r.Goroutines.growth(); g > o.goroutineTol {
		r.fail("goroutines grew %+.1f%% (%.0f -> %.0f), over the %+.0f%% tolerance", 100*g, r.Goroutines.Start, r.Goroutines.End, 100*o.goroutineTol)
	}
	if g := r.RSSBytes.growth(); g > o.rssTol {
		r.fail("RSS grew %+.1f%% (%.1f -> %.1f MiB), over the %+.0f%% tolerance", 100*g, mib(r.RSSBytes.Start), mib(r.RSSBytes.End), 100*o.rssTol)
	}
	if r.DaemonExit != 0 {
		r.fail("the daemon exited with code %d after SIGTERM", r.DaemonExit)
	}
	if o.pluginKillEvery > 0 && o.duration >= o.pluginKillEvery && r.PluginKills == 0 {
		r.fail("no plugin kill was injected")
	}
	if o.imapCutEvery > 0 && o.duration >= o.imapCutEvery && r.IMAPCuts == 0 {
		r.fail("no IMAP cut was injected")
	}
	if r.MailsIn == 0 {
		r.fail("no mail was delivered")
	}
}

// counts prints a map as "k v, k v", largest first.
func counts(m map[string]int) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func (r *report) print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("inboxd soak, started %s UTC", r.Started.Format("2006-01-02 15:04:05"))
	p("  duration      %s after a %s warm-up; %d tenants; %g mails/s; poll interval %s with IDLE; tool %s",
		r.Duration, r.Warmup, r.Tenants, r.Rate, r.PollInterval, r.Tool)
	p("  load average  %s -> %s (1, 5, 15 min)", r.LoadStart, r.LoadEnd)
	p("  setup         %.1f s for the tenants, %.1f s until every inbox was baselined; drain %.1f s",
		r.SetupSeconds, r.BaselinedSeconds, r.DrainSeconds)
	p("  mails in      %d (delivery failed %d, uncertain %d, APPEND retries %d)", r.MailsIn, r.MailsFailed, r.MailsUncertain, r.DeliveryRetries)
	p("  runs out      %d: %s", r.Runs.RunsOut, counts(r.Runs.ByStatus))
	if len(r.Runs.FailedBy) > 0 {
		p("  failed runs   by cause: %s", counts(r.Runs.FailedBy))
	}
	p("  resumed runs  %d (claimed more than once)", r.Runs.Resumed)
	p("  duplicates    %d", r.Runs.Duplicates)
	p("  lost          %d", r.Runs.Lost)
	p("  unexpected    %d runs for no mail of their tenant; %d not finished", r.Runs.Unexpected, r.Runs.NotFinished)
	p("  plugin kills  %d (%d processes SIGKILLed)", r.PluginKills, r.PluginProcsKilled)
	for _, name := range slices.Sorted(maps.Keys(r.PluginRestarts)) {
		secs := make([]string, 0, len(r.PluginRestarts[name]))
		for _, v := range r.PluginRestarts[name] {
			if v < 0 {
				secs = append(secs, "-")
				continue
			}
			secs = append(secs, fmt.Sprintf("%.1f", v))
		}
		p("    %-11s back after %s s (kill by kill; -: not back when the runs had drained)", name, strings.Join(secs, ", "))
	}
	p("  IMAP cuts     %d (doveadm kick -f; %d times a tenant's connections were cut)", r.IMAPCuts, r.UsersCut)
	p("  goroutines    %.0f -> %.0f (%+.1f%%; min %.0f, max %.0f; tolerance %+.0f%%)",
		r.Goroutines.Start, r.Goroutines.End, 100*r.Goroutines.growth(), r.Goroutines.Min, r.Goroutines.Max, 100*r.GoroutineTol)
	p("  RSS           %.1f -> %.1f MiB (%+.1f%%; min %.1f, max %.1f; tolerance %+.0f%%)",
		mib(r.RSSBytes.Start), mib(r.RSSBytes.End), 100*r.RSSBytes.growth(), mib(r.RSSBytes.Min), mib(r.RSSBytes.Max), 100*r.RSSTol)
	p("  error lines   %d in %d log lines: explained %s; unexplained %d", r.Log.ErrorLines, r.Log.Lines, counts(r.Log.Explained), r.Log.Unexplained)
	p("  shutdown      SIGTERM with %d plugin processes: exit code %d, %d plugin processes left", r.PluginsAtStop, r.DaemonExit, len(r.StrayPlugins))
	p("")
	p("  progress:")
	for _, s := range r.Samples {
		p("    %s", s.line())
	}
	if len(r.Log.ErrorsByMsg) > 0 {
		p("  ERROR lines by message: %s", counts(r.Log.ErrorsByMsg))
	}
	if len(r.Log.WarnsByMsg) > 0 {
		p("  WARN lines by message: %s", counts(r.Log.WarnsByMsg))
	}
	list := func(title string, items []string) {
		if len(items) == 0 {
			return
		}
		p("  %s:", title)
		for _, it := range items {
			p("    %s", it)
		}
	}
	list("faults that could not be injected", r.FaultErrors)
	list("delivery errors (first 10)", r.DeliveryErrors)
	list("run problems (first 30)", r.Runs.Problems)
	list("unexplained log lines (first 30)", r.Log.Examples)
	list("plugin processes left", r.StrayPlugins)
	list("warnings (they do not fail the soak)", r.Warnings)
	p("")
	if len(r.Failures) == 0 {
		p("PASS: every mail processed exactly once, goroutines and RSS flat, no unexplained error line, clean stop")
		return
	}
	p("FAIL:")
	for _, f := range r.Failures {
		p("  - %s", f)
	}
}
