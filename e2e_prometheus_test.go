package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/inboxd/inboxd/internal/testsvc"
)

const (
	dashboardPath = "contrib/grafana/inboxd.json"
	alertsPath    = "contrib/prometheus/alerts.yml"
)

// TestDashboardAndAlertsAgainstPrometheus runs the demo daemon under Debian's
// Prometheus, scraping every second with contrib/prometheus/alerts.yml loaded,
// and evaluates every Grafana panel expression and every alert expression
// through Prometheus' HTTP API: each must parse and every panel must return
// data, and every metric either names must have series. A plugin process is
// killed once so that the restart counter (which has no series before the
// first restart) exists, and at the end the daemon is killed to see
// InboxdDown go pending.
func TestDashboardAndAlertsAgainstPrometheus(t *testing.T) {
	promBin := testsvc.NeedBinary(t, "prometheus")
	promtool := testsvc.NeedBinary(t, "promtool")
	alerts, err := filepath.Abs(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", alerts).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}

	d := newDaemon(t)
	d.args = []string{"--demo"}
	d.start()
	target := strings.TrimPrefix(d.base, "http://")

	prom := startPrometheus(t, promBin, promtool, target, alerts)

	// Demo traffic: workflow runs and plugin calls.
	waitUntil(t, "demo workflow runs and plugin calls", 45*time.Second, func() bool {
		m := scrapeSums(t, d.base)
		return m["inboxd_workflow_runs_total"] > 0 && m["inboxd_plugin_calls_total"] > 0
	})
	// The restart counter has no series before a plugin's first restart:
	// crash one plugin of this daemon so the restart panel and alert have
	// something real to show.
	plugins := childPlugins(t, d.cmd.Process.Pid)
	if len(plugins) == 0 {
		t.Fatal("the demo daemon runs no plugin process")
	}
	if err := syscall.Kill(plugins[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the plugin restart to be counted", 15*time.Second, func() bool {
		return scrapeSums(t, d.base)["inboxd_plugin_restarts_total"] > 0
	})

	// At least ~20 s of scrapes overall, and the restart counter scraped
	// several times so that increase() over it has samples to work with.
	waitUntil(t, "20 scrapes in Prometheus", 45*time.Second, func() bool {
		return prom.scalar(t, `count_over_time(up{job="inboxd"}[1m])`) >= 20 &&
			prom.scalar(t, `count_over_time(inboxd_plugin_restarts_total[1m])`) >= 3 &&
			prom.scalar(t, `sum(inboxd_workflow_runs_total)`) > 0
	})

	names := prom.metricNames(t)
	checkNames := func(where, expr string) {
		t.Helper()
		for _, n := range metricNamesIn(expr) {
			if !names[n] {
				t.Errorf("%s: metric %s has no series in Prometheus (typo, or not exported before its first event)", where, n)
			}
		}
	}

	// The dashboard: the instance variable's query, then every panel target.
	var dash struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var haveDS, haveInstance bool
	for _, v := range dash.Templating.List {
		switch {
		case v.Name == "DS_PROMETHEUS" && v.Type == "datasource":
			haveDS = true
		case v.Name == "instance" && v.Type == "query":
			haveInstance = true
			m := regexp.MustCompile(`^label_values\((\w+), *(\w+)\)$`).FindStringSubmatch(v.Definition)
			if m == nil {
				t.Errorf("instance variable: unexpected query %q", v.Definition)
				continue
			}
			res := prom.query(t, fmt.Sprintf("count by (%s) (%s)", m[2], m[1]))
			if !slices.ContainsFunc(res, func(s promSample) bool { return s.Metric[m[2]] == target }) {
				t.Errorf("instance variable %q does not offer %s: %v", v.Definition, target, res)
			}
		}
	}
	if !haveDS || !haveInstance {
		t.Errorf("templating: datasource variable DS_PROMETHEUS present %v, instance variable present %v", haveDS, haveInstance)
	}

	vars := strings.NewReplacer(
		"$__rate_interval", "1m", "${__rate_interval}", "1m",
		"$__interval", "15s", "${__interval}", "15s",
		"$__range", "5m", "${__range}", "5m",
		"${instance}", target, "$instance", target,
	)
	panels, exprs := 0, 0
	for _, p := range flattenPanels(dash.Panels) {
		if p.Type == "row" {
			continue
		}
		panels++
		if p.Datasource.UID != "${DS_PROMETHEUS}" {
			t.Errorf("panel %q: datasource %+v, want the DS_PROMETHEUS variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		for _, tg := range p.Targets {
			exprs++
			where := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
			expr := vars.Replace(tg.Expr)
			if strings.TrimSpace(tg.Expr) == "" || strings.Contains(expr, "$") {
				t.Errorf("%s: empty expression or unknown variable: %q", where, tg.Expr)
				continue
			}
			res, err := prom.tryQuery(expr)
			if err != nil {
				t.Errorf("%s: %v\n  expr: %s", where, err, expr)
				continue
			}
			if len(res) == 0 {
				t.Errorf("%s: no data\n  expr: %s", where, expr)
			} else if allNaN(res) {
				t.Logf("%s: only NaN so far (no events of that kind in the demo)", where)
			}
			// A legend naming a label the result lacks means the
			// expression aggregates by the wrong label.
			for _, m := range legendLabelRE.FindAllStringSubmatch(tg.Legend, -1) {
				for _, s := range res {
					if _, ok := s.Metric[m[1]]; !ok {
						t.Errorf("%s: legend uses {{%s}} but the result %v has no such label", where, m[1], s.Metric)
						break
					}
				}
			}
			checkNames(where, tg.Expr)
		}
	}
	if panels < 20 {
		t.Errorf("only %d panels in the dashboard", panels)
	}

	// The alerts: every rule of the file is loaded, healthy, and evaluates.
	fileAlerts := alertNamesInFile(t, alerts)
	rules := prom.rules(t)
	waitUntil(t, "every rule to be evaluated", 10*time.Second, func() bool {
		rules = prom.rules(t)
		for _, r := range rules {
			if r.LastEvaluation.IsZero() || r.LastEvaluation.Year() < 2000 {
				return false
			}
		}
		return len(rules) > 0
	})
	loaded := map[string]promRule{}
	for _, r := range rules {
		loaded[r.Name] = r
	}
	for _, name := range fileAlerts {
		r, ok := loaded[name]
		if !ok {
			t.Errorf("alert %s is in %s but Prometheus did not load it", name, alertsPath)
			continue
		}
		if r.Health != "ok" || r.LastError != "" {
			t.Errorf("alert %s: health %q, error %q", name, r.Health, r.LastError)
		}
		if _, err := prom.tryQuery(r.Query); err != nil {
			t.Errorf("alert %s: %v\n  expr: %s", name, err, r.Query)
		}
		checkNames("alert "+name, r.Query)
		// The demo is healthy (one plugin restart is no crash loop): no
		// alert may be pending or firing.
		if r.State != "inactive" {
			t.Errorf("alert %s is %s on a healthy demo daemon: %s", name, r.State, r.Query)
		}
	}
	for _, want := range []string{"InboxdDown", "InboxdPollerStalled", "InboxdPollErrorRatioHigh", "InboxdPollLagHigh",
		"InboxdPluginCrashLoop", "InboxdLLMErrorRatioHigh", "InboxdWorkerQueueSaturated"} {
		if !slices.Contains(fileAlerts, want) {
			t.Errorf("alert %s missing from %s", want, alertsPath)
		}
	}
	t.Logf("%d panels, %d panel expressions, %d alerts evaluated against Prometheus", panels, exprs, len(fileAlerts))

	// InboxdDown's job selector matches the scrape job: killing the daemon
	// makes it pending.
	d.kill()
	waitUntil(t, "InboxdDown to go pending", 15*time.Second, func() bool {
		r, ok := ruleByName(prom.rules(t), "InboxdDown")
		return ok && r.State != "inactive"
	})
}

type dashPanel struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID  string `json:"refId"`
		Expr   string `json:"expr"`
		Legend string `json:"legendFormat"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // of a collapsed row
}

func flattenPanels(ps []dashPanel) []dashPanel {
	var out []dashPanel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flattenPanels(p.Panels)...)
	}
	return out
}

var (
	quotedRE      = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	metricNameRE  = regexp.MustCompile(`\b(?:inboxd|go|process)_[a-z0-9_]+|\bup\b`)
	legendLabelRE = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)
	alertNameRE   = regexp.MustCompile(`(?m)^\s*-\s*alert:\s*(\S+)\s*$`)
)

// metricNamesIn lists the metric names an expression selects, ignoring
// label values.
func metricNamesIn(expr string) []string {
	return metricNameRE.FindAllString(quotedRE.ReplaceAllString(expr, `""`), -1)
}

func alertNamesInFile(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range alertNameRE.FindAllStringSubmatch(string(raw), -1) {
		names = append(names, strings.Trim(m[1], `"'`))
	}
	if len(names) == 0 {
		t.Fatalf("%s: no alert rules", path)
	}
	return names
}

// scrapeSums reads the daemon's /metrics and sums the samples of each metric
// name (a histogram's _count, _sum and _bucket are separate names).
func scrapeSums(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sums := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name = line[:i]
			rest = line[strings.LastIndexByte(line, '}')+1:]
		}
		if v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64); err == nil {
			sums[name] += v
		}
	}
	return sums
}

// childPlugins lists the pids of the plugin processes whose parent is ppid.
func childPlugins(t *testing.T, ppid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut after ')'.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(ppid) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if args := strings.Split(string(cmdline), "\x00"); len(args) >= 3 && args[1] == "plugin" && args[2] == "serve" {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

type promServer struct{ base string }

// startPrometheus writes a config scraping target every second with the
// rules loaded, checks it with promtool, and runs Prometheus until Cleanup.
func startPrometheus(t *testing.T, bin, promtool, target, rules string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: inboxd
    static_configs:
      - targets: [%q]
`, rules, target)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	logPath := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	port := testsvc.FreePort(t)
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("prometheus log (tail):\n%s", tail(string(log), 3000))
		}
	})
	p := &promServer{base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	waitUntil(t, "prometheus to be ready", 30*time.Second, func() bool {
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited:\n%s", tail(string(log), 3000))
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) float() float64 {
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return 0
	}
	return f
}

func allNaN(res []promSample) bool {
	for _, s := range res {
		if str, _ := s.Value[1].(string); str != "NaN" {
			return false
		}
	}
	return true
}

// get calls the HTTP API and decodes the data field of a success answer.
func (p *promServer) get(path string, params url.Values, data any) error {
	resp, err := http.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var env struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, raw)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: status %s: %s: %s", path, env.Status, env.ErrorType, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// tryQuery runs an instant query; a scalar answer becomes one sample.
func (p *promServer) tryQuery(expr string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	switch data.ResultType {
	case "vector":
		var res []promSample
		err := json.Unmarshal(data.Result, &res)
		return res, err
	case "scalar":
		var v [2]any
		err := json.Unmarshal(data.Result, &v)
		return []promSample{{Value: v}}, err
	default:
		return nil, fmt.Errorf("result type %s", data.ResultType)
	}
}

func (p *promServer) query(t *testing.T, expr string) []promSample {
	t.Helper()
	res, err := p.tryQuery(expr)
	if err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	return res
}

// scalar is the sum of an instant query's samples (0 when empty).
func (p *promServer) scalar(t *testing.T, expr string) float64 {
	t.Helper()
	var sum float64
	for _, s := range p.query(t, expr) {
		sum += s.float()
	}
	return sum
}

func (p *promServer) metricNames(t *testing.T) map[string]bool {
	t.Helper()
	var names []string
	if err := p.get("/api/v1/label/__name__/values", nil, &names); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	return set
}

type promRule struct {
	Name           string    `json:"name"`
	Query          string    `json:"query"`
	Type           string    `json:"type"`
	Health         string    `json:"health"`
	LastError      string    `json:"lastError"`
	State          string    `json:"state"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

func (p *promServer) rules(t *testing.T) []promRule {
	t.Helper()
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get("/api/v1/rules", url.Values{"type": {"alert"}}, &data); err != nil {
		t.Fatal(err)
	}
	var out []promRule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

func ruleByName(rules []promRule, name string) (promRule, bool) {
	for _, r := range rules {
		if r.Name == name {
			return r, true
		}
	}
	return promRule{}, false
}
