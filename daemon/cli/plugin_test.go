package cli

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// buildWordcount builds the example plugin into a fresh plugin directory.
func buildWordcount(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "wordcount"), "../../contrib/examples/plugin-wordcount").CombinedOutput()
	if err != nil {
		t.Fatalf("building the example plugin: %v\n%s", err, out)
	}
	return dir
}

func TestPluginCommands(t *testing.T) {
	vars := dataEnv(t)
	code, out, stderr := run(t, vars, "plugin", "list")
	if code != 0 || !regexp.MustCompile(`(?m)^imap +1\.0\.0 +9 +running +builtin$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^tone +1\.0\.0 +1 +running +builtin$`).MatchString(out) {
		t.Errorf("list of the built-in plugins: %d %q %q", code, out, stderr)
	}

	vars["INBOXD_PLUGINS_DIR"] = buildWordcount(t)
	code, out, stderr = run(t, vars, "plugin", "list")
	if code != 0 || !strings.Contains(out, "NAME") {
		t.Fatalf("list: %d %q %q", code, out, stderr)
	}
	if !regexp.MustCompile(`(?m)^wordcount +0\.1\.0 +3 +running +/`).MatchString(out) {
		t.Errorf("list row: %q", out)
	}

	code, out, stderr = run(t, vars, "plugin", "describe", "wordcount")
	if code != 0 || !strings.Contains(out, "wordcount-count_words") || !strings.Contains(out, `"required": [`) ||
		!strings.Contains(out, "Remembers a short note") {
		t.Errorf("describe: %d %q %q", code, out, stderr)
	}
	if code, _, stderr = run(t, vars, "plugin", "describe", "nope"); code != 1 || !strings.Contains(stderr, `no plugin "nope"`) {
		t.Errorf("describe nope: %d %q", code, stderr)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"plugin"}, "missing subcommand"},
		{[]string{"plugin", "frob"}, `unknown subcommand "frob"`},
		{[]string{"plugin", "list", "x"}, "takes no arguments"},
		{[]string{"plugin", "describe"}, "takes 1 argument"},
		{[]string{"plugin", "serve"}, "takes 1 argument"},
		{[]string{"plugin", "serve", "nope"}, `no built-in plugin "nope"`},
	} {
		if code, _, stderr := run(t, vars, tc.args...); code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("inboxd %v: %d %q, want exit 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
}
