// Package systemd holds inboxd's systemd unit and example environment file;
// its tests check the unit with systemd-analyze (verify and the offline
// security review) and that the examples cover every configuration key.
package systemd

import (
	"bufio"
	"bytes"
	"github.com/inboxd/inboxd/daemon/config"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/inboxd/inboxd/internal/testsvc"
)

const unitFile = "inboxd.service"

// maxExposure is the exposure level `systemd-analyze security --offline=true`
// (systemd 252) gave the unit when it was written: 1.1, "OK". What is left is
// inherent to a network daemon (network access, AF_UNIX for go-plugin, no
// root-directory jail) or deliberate (ProcSubset, see the unit). Raise it only
// with a reason in the unit file.
const maxExposure = 1.1

// configKeys lists every setting, from the config package's own table (the
// single declaration of settings): TOML key and its INBOXD_* twin.
func configKeys(t *testing.T) []struct{ toml, env string } {
	cfg, err := config.Load("", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	var out []struct{ toml, env string }
	for _, s := range cfg.Effective() {
		out = append(out, struct{ toml, env string }{s.Key, s.Env})
	}
	return out
}

// directives parses a unit file into section -> key -> values (in order).
// Comments and blank lines are skipped; continuation lines are not used here.
func directives(t *testing.T, data []byte) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a directive: %q", unitFile, n, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// TestUnitDirectives pins what the daemon relies on, so that hardening edits
// cannot quietly break notify, the watchdog, go-plugin or the state directory.
func TestUnitDirectives(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	svc := directives(t, data)["Service"]
	want := map[string]string{
		"Type":                    "notify",
		"NotifyAccess":            "main",
		"ExecStart":               "/usr/local/bin/inboxd serve",
		"EnvironmentFile":         "-/etc/inboxd/inboxd.env",
		"WatchdogSec":             "30s",
		"Restart":                 "on-failure",
		"KillMode":                "mixed",
		"DynamicUser":             "yes",
		"StateDirectory":          "inboxd",
		"StateDirectoryMode":      "0700",
		"ConfigurationDirectory":  "inboxd",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"NoNewPrivileges":         "yes",
		"CapabilityBoundingSet":   "",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", // AF_UNIX: go-plugin
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"UMask":                   "0077",
	}
	for k, v := range want {
		got := svc[k]
		if len(got) != 1 || got[0] != v {
			t.Errorf("[Service] %s = %q, want exactly %q", k, got, v)
		}
	}
	if f := svc["SystemCallFilter"]; len(f) == 0 || f[0] != "@system-service" {
		t.Errorf("SystemCallFilter = %q, want @system-service first", f)
	}
	if l := svc["LimitNOFILE"]; len(l) != 1 {
		t.Errorf("LimitNOFILE = %q, want one value", l)
	} else if n, err := strconv.Atoi(l[0]); err != nil || n < 65536 {
		t.Errorf("LimitNOFILE = %q, want a number >= 65536 (many IMAP connections)", l[0])
	}
}

// analyzeProblems returns systemd-analyze output lines that point at the unit
// file (unknown keys, unparsable values, missing binaries): systemd-analyze
// reports those on stderr but still exits 0.
func analyzeProblems(out []byte, unitPath string) []string {
	var bad []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, unitPath+":") || strings.HasPrefix(line, unitFile+": ") {
			bad = append(bad, line)
		}
	}
	return bad
}

// verify runs systemd-analyze verify on a copy of the unit in a temp dir with
// ExecStart pointing at an existing binary (this test binary), since verify
// insists the executable exists. edit may change the copy further.
func verify(t *testing.T, analyze string, edit func(string) string) (out []byte, unitPath string, err error) {
	t.Helper()
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^ExecStart=/usr/local/bin/inboxd\b`)
	if !re.Match(data) {
		t.Fatal("unit has no ExecStart=/usr/local/bin/inboxd line to rewrite")
	}
	unit := re.ReplaceAllLiteralString(string(data), "ExecStart="+self)
	if edit != nil {
		unit = edit(unit)
	}
	unitPath = filepath.Join(t.TempDir(), unitFile)
	if err := os.WriteFile(unitPath, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", unitPath)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_TARGET=console", "SYSTEMD_LOG_COLOR=0")
	out, err = cmd.CombinedOutput()
	return out, unitPath, err
}

func TestVerify(t *testing.T) {
	analyze := testsvc.NeedBinary(t, "systemd-analyze")
	out, unitPath, err := verify(t, analyze, nil)
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	if bad := analyzeProblems(out, unitPath); len(bad) > 0 {
		t.Fatalf("systemd-analyze verify reported problems:\n%s", strings.Join(bad, "\n"))
	}

	// The check above must be able to fail: a bogus key has to be caught.
	out, unitPath, _ = verify(t, analyze, func(u string) string {
		return strings.Replace(u, "[Service]\n", "[Service]\nInboxdNoSuchKey=1\n", 1)
	})
	if len(analyzeProblems(out, unitPath)) == 0 {
		t.Fatalf("systemd-analyze verify did not report an unknown key; output:\n%s", out)
	}
}

func TestSecurityExposure(t *testing.T) {
	analyze := testsvc.NeedBinary(t, "systemd-analyze")
	threshold := strconv.Itoa(int(math.Round(maxExposure * 10))) // --threshold is in tenths
	unitPath, err := filepath.Abs(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "security", "--offline=true", "--no-pager", "--threshold="+threshold, unitPath)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_TARGET=console", "SYSTEMD_LOG_COLOR=0", "SYSTEMD_COLORS=0")
	out, err := cmd.CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for ` + regexp.QuoteMeta(unitFile) + `: (\d+\.\d+) (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in systemd-analyze security output (%v):\n%s", err, out)
	}
	score, perr := strconv.ParseFloat(string(m[1]), 64)
	if perr != nil {
		t.Fatal(perr)
	}
	t.Logf("exposure level %.1f %s", score, m[2])
	if score > maxExposure {
		t.Errorf("exposure level %.1f %s, want at most %.1f; the items marked ✗:\n%s", score, m[2], maxExposure, failing(out))
	}
	if err != nil {
		t.Errorf("systemd-analyze security --threshold=%s: %v", threshold, err)
	}
	if bad := analyzeProblems(out, unitPath); len(bad) > 0 {
		t.Errorf("systemd-analyze security reported problems:\n%s", strings.Join(bad, "\n"))
	}
}

// failing keeps the ✗ lines of a security report.
func failing(out []byte) string {
	var b strings.Builder
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "✗") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// TestExamplesCoverConfigTable checks that the example environment file and
// the example TOML configuration show every key of the configuration table.
// Settings are commented out in both, as `#key = value` and `#INBOXD_KEY=value`
// (prose comments have a space after the '#'); uncommented, the TOML example
// must parse and hold every key in its table.
func TestExamplesCoverConfigTable(t *testing.T) {
	t.Parallel()
	envExample, err := os.ReadFile("inboxd.env.example")
	if err != nil {
		t.Fatal(err)
	}
	tomlExample, err := os.ReadFile(filepath.Join("..", "contrib", "examples", "inboxd.toml"))
	if err != nil {
		t.Fatal(err)
	}

	uncommented := regexp.MustCompile(`(?m)^#([a-z_]+ = )`).ReplaceAll(tomlExample, []byte("$1"))
	var cfg map[string]any
	if _, err := toml.Decode(string(uncommented), &cfg); err != nil {
		t.Fatalf("contrib/examples/inboxd.toml with its settings uncommented: %v", err)
	}
	known := map[string]bool{}
	for _, k := range configKeys(t) {
		known[k.toml], known[k.env] = true, true
		m, key := cfg, k.toml
		if table, rest, nested := strings.Cut(k.toml, "."); nested {
			sub, ok := cfg[table].(map[string]any)
			if !ok {
				t.Errorf("contrib/examples/inboxd.toml: no [%s] table", table)
				continue
			}
			m, key = sub, rest
		}
		if _, ok := m[key]; !ok {
			t.Errorf("contrib/examples/inboxd.toml: no #%s = ... line for %s", key, k.toml)
		}
		if !regexp.MustCompile(`(?m)^#` + k.env + `=`).Match(envExample) {
			t.Errorf("systemd/inboxd.env.example: no #%s=... line", k.env)
		}
	}
	// And nothing unknown: a misspelt key in an example is a trap for users.
	for table, v := range cfg {
		sub, ok := v.(map[string]any)
		if !ok {
			if !known[table] {
				t.Errorf("contrib/examples/inboxd.toml: %s is not in the configuration table", table)
			}
			continue
		}
		for key := range sub {
			if !known[table+"."+key] {
				t.Errorf("contrib/examples/inboxd.toml: %s.%s is not in the configuration table", table, key)
			}
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^#?\s*(INBOXD_[A-Z0-9_]+)=`).FindAllSubmatch(envExample, -1) {
		if !known[string(m[1])] {
			t.Errorf("systemd/inboxd.env.example: %s is not in the configuration table", m[1])
		}
	}
}
