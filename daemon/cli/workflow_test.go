package cli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/daemon/workflow"
)

const quoteYAML = `# a workflow in YAML: prompts read better as block scalars
name: Quote requests
description: draft replies to quote requests
active: true
trigger:
  type: new_email
  filter_rules:
    domain_whitelist: [customer.example]
steps:
  - name: classify
    kind: llm
    model: m
    system_prompt: |
      Is this a quote request? Answer yes or no.
      <<trigger_output>>
  - name: stop?
    kind: stop_checker
    step_to_check: classify
    mode: stop_if_output_contains
    match_values: ["no"]
`

// A portable document (the export format) with its own step ids.
const exportJSON = `{"inboxd_workflow": 1, "name": "Digest", "description": "", "trigger": {"type": "schedule", "cron": "0 8 * * 1-5"},
 "steps": [
  {"id": "a1", "name": "gather", "kind": "llm", "system_prompt": "summarise"},
  {"id": "a2", "name": "send", "kind": "tool", "tool": "imap-draft_reply", "arguments": {"body": "<<step_output.a1>>"}}]}`

func writeWorkflowFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// userWorkflows reads a user's workflows straight from the store.
func userWorkflows(t *testing.T, vars map[string]string, user string) ([]workflow.Workflow, string) {
	t.Helper()
	ctx := context.Background()
	cfg, err := loadConfig(Env{Getenv: func(k string) string { return vars[k] }}, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStores(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	u, err := st.users.Lookup(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	list, err := workflow.NewStore(st.sql).ListWorkflows(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	return list, u.ID.String()
}

func TestWorkflowApplyAndList(t *testing.T) {
	vars := dataEnv(t)
	for _, email := range []string{"alice@example.com", "bob@example.com"} {
		if code, _, stderr := run(t, vars, "user", "add", "--email", email); code != 0 {
			t.Fatalf("user add: %q", stderr)
		}
	}
	yamlFile := writeWorkflowFile(t, "quote.yaml", quoteYAML)
	code, out, stderr := run(t, vars, "workflow", "apply", "-f", yamlFile, "--user", "alice@example.com")
	m := regexp.MustCompile(`^workflow ([0-9a-f-]{36}) created \("Quote requests", 2 steps, active true\)\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("apply: %d %q %q", code, out, stderr)
	}
	first, aliceID := userWorkflows(t, vars, "alice@example.com")
	if len(first) != 1 || first[0].ID != m[1] || !strings.Contains(first[0].Steps[0].SystemPrompt, "Answer yes or no.\n<<trigger_output>>") ||
		first[0].Steps[1].StepToCheck != first[0].Steps[0].ID {
		t.Fatalf("stored after apply: %+v", first)
	}

	// The same name again updates in place, keeping step ids by name.
	changed := writeWorkflowFile(t, "quote.yml", strings.Replace(quoteYAML, "draft replies to quote requests", "v2", 1))
	code, out, stderr = run(t, vars, "workflow", "apply", "-f", changed, "--user", aliceID)
	if code != 0 || out != "workflow "+m[1]+" updated (\"Quote requests\", 2 steps, active true)\n" {
		t.Fatalf("re-apply: %d %q %q", code, out, stderr)
	}
	second, _ := userWorkflows(t, vars, "alice@example.com")
	if len(second) != 1 || second[0].Description != "v2" || second[0].Steps[0].ID != first[0].Steps[0].ID || second[0].Steps[1].ID != first[0].Steps[1].ID {
		t.Errorf("after re-apply: %+v\nbefore: %+v", second, first)
	}

	// The export format, as JSON without a telling extension.
	code, out, stderr = run(t, vars, "workflow", "apply", "-f", writeWorkflowFile(t, "digest.txt", exportJSON), "--user", "alice@example.com")
	if code != 0 || !strings.Contains(out, `created ("Digest", 2 steps, active false)`) {
		t.Fatalf("apply export doc: %d %q %q", code, out, stderr)
	}
	all, _ := userWorkflows(t, vars, "alice@example.com")
	for _, w := range all {
		if w.Name == "Digest" && (w.Steps[0].ID == "a1" || !strings.Contains(string(w.Steps[1].Arguments), "<<step_output."+w.Steps[0].ID+">>")) {
			t.Errorf("imported ids not remapped: %+v", w.Steps)
		}
	}

	code, out, _ = run(t, vars, "workflow", "list", "--user", "alice@example.com")
	if code != 0 || !regexp.MustCompile(`(?m)^ID\s+NAME\s+ACTIVE\s+TRIGGER\s+STEPS$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^`+m[1]+`\s+Quote requests\s+true\s+new_email\s+2$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)\s+Digest\s+false\s+schedule 0 8 \* \* 1-5\s+2$`).MatchString(out) {
		t.Errorf("list:\n%s", out)
	}
	// Bob sees none of Alice's.
	code, out, _ = run(t, vars, "workflow", "list", "--user", "bob@example.com")
	if code != 0 || strings.Contains(out, "Quote") || strings.Contains(out, "Digest") || strings.Count(out, "\n") != 1 {
		t.Errorf("bob's list:\n%s", out)
	}
}

func TestWorkflowCommandErrors(t *testing.T) {
	vars := dataEnv(t)
	if code, _, stderr := run(t, vars, "user", "add", "--email", "alice@example.com"); code != 0 {
		t.Fatalf("user add: %q", stderr)
	}
	good := writeWorkflowFile(t, "w.yaml", quoteYAML)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"workflow"}, 2, "missing subcommand"},
		{[]string{"workflow", "delete"}, 2, `unknown subcommand "delete"`},
		{[]string{"workflow", "list"}, 2, "needs --user"},
		{[]string{"workflow", "apply", "--user", "alice@example.com"}, 2, "needs -f FILE"},
		{[]string{"workflow", "apply", "-f", good}, 2, "needs --user"},
		{[]string{"workflow", "list", "--user", "alice@example.com", "extra"}, 2, "takes no arguments"},
		{[]string{"workflow", "list", "--user", "nobody@example.com"}, 1, "not found"},
		{[]string{"workflow", "apply", "-f", filepath.Join(t.TempDir(), "missing.yaml"), "--user", "alice@example.com"}, 1, "no such file"},
		{[]string{"workflow", "apply", "-f", writeWorkflowFile(t, "bad.yaml", "name: [unclosed"), "--user", "alice@example.com"}, 1, "bad.yaml"},
		{[]string{"workflow", "apply", "-f", writeWorkflowFile(t, "typo.yaml", "name: x\nstepz: []\n"), "--user", "alice@example.com"}, 1, "stepz"},
		{[]string{"workflow", "apply", "-f", writeWorkflowFile(t, "ref.yaml", "name: x\nsteps:\n  - {name: a, kind: llm, system_prompt: '<<step_output.b>>'}\n  - {name: b, kind: llm, system_prompt: y}\n"), "--user", "alice@example.com"}, 1, "steps[0]"},
	}
	for _, tc := range cases {
		code, _, stderr := run(t, vars, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("inboxd %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	if list, _ := userWorkflows(t, vars, "alice@example.com"); len(list) != 0 {
		t.Errorf("failed applies stored workflows: %+v", list)
	}
}
