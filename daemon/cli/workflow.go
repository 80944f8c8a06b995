package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/workflow"
)

const workflowUsage = `workflow apply -f FILE --user EMAIL|ID
       inboxd workflow list --user EMAIL|ID`

// runWorkflow manages a user's workflows directly on the configured store.
func runWorkflow(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 {
		return usagef("missing subcommand\nUsage: inboxd %s", workflowUsage)
	}
	sub, args := args[0], args[1:]
	fs, cfgPath := newFlags(env, "workflow "+sub, workflowUsage)
	user := fs.String("user", "", "the user whose workflows these are: email or id (required)")
	var file *string
	switch sub {
	case "apply":
		file = fs.String("f", "", "the workflow document: YAML or JSON (required)")
	case "list":
	default:
		return usagef("unknown subcommand %q\nUsage: inboxd %s", sub, workflowUsage)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("workflow %s takes no arguments, got %q\nUsage: inboxd %s", sub, fs.Args(), workflowUsage)
	}
	if *user == "" {
		return usagef("workflow %s needs --user EMAIL|ID", sub)
	}
	var doc []byte
	if sub == "apply" {
		if *file == "" {
			return usagef("workflow apply needs -f FILE")
		}
		// Read and parse before touching the stores: a bad file changes nothing.
		var err error
		if doc, err = readWorkflowFile(*file); err != nil {
			return err
		}
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	st, err := openStores(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	u, err := st.users.Lookup(ctx, *user)
	if err != nil {
		return fmt.Errorf("--user %s: %w", *user, err)
	}
	store := workflow.NewStore(st.sql)
	if sub == "list" {
		return listWorkflows(ctx, env, store, u.ID)
	}
	return applyWorkflow(ctx, env, store, u.ID, *file, doc)
}

// readWorkflowFile returns the document as JSON: YAML by extension
// (.yaml/.yml), JSON by extension (.json), else by content.
func readWorkflowFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-f: %w", err)
	}
	ext := strings.ToLower(filepath.Ext(path))
	isJSON := ext == ".json" || (ext != ".yaml" && ext != ".yml" && bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")))
	if isJSON {
		return raw, nil
	}
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	v, err = jsonable(v, "")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// jsonable turns a decoded YAML value into one encoding/json can write:
// mapping keys must be strings.
func jsonable(v any, at string) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			c, err := jsonable(e, at+"."+k)
			if err != nil {
				return nil, err
			}
			x[k] = c
		}
		return x, nil
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("%s: mapping key %v is not a string", strings.TrimPrefix(at, "."), k)
			}
			c, err := jsonable(e, at+"."+ks)
			if err != nil {
				return nil, err
			}
			m[ks] = c
		}
		return m, nil
	case []any:
		for i, e := range x {
			c, err := jsonable(e, fmt.Sprintf("%s[%d]", at, i))
			if err != nil {
				return nil, err
			}
			x[i] = c
		}
		return x, nil
	}
	return v, nil
}

// applyWorkflow creates the document's workflow, or replaces the user's
// workflow of the same name.
func applyWorkflow(ctx context.Context, env Env, store *workflow.Store, user userid.ID, path string, doc []byte) error {
	wf, err := api.ImportWorkflow(doc, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	list, err := store.ListWorkflows(ctx, user)
	if err != nil {
		return fmt.Errorf("list workflows: %w", err)
	}
	var same []workflow.Workflow
	for _, w := range list {
		if w.Name == wf.Name {
			same = append(same, w)
		}
	}
	verb := "created"
	switch len(same) {
	case 0:
		wf, err = store.CreateWorkflow(ctx, user, wf)
	case 1:
		if wf, err = api.ImportWorkflow(doc, &same[0]); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		wf, err = store.UpdateWorkflow(ctx, user, wf)
		verb = "updated"
	default:
		return fmt.Errorf("%s: the user has %d workflows named %q; rename or delete all but one", path, len(same), wf.Name)
	}
	if err != nil {
		var ve *workflow.ValidationError
		if errors.As(err, &ve) {
			return fmt.Errorf("%s: %s: %s", path, ve.Field, ve.Message)
		}
		return fmt.Errorf("%s workflow %q: %w", strings.TrimSuffix(verb, "d"), wf.Name, err)
	}
	fmt.Fprintf(env.Stdout, "workflow %s %s (%q, %d steps, active %t)\n", wf.ID, verb, wf.Name, len(wf.Steps), wf.Active)
	return nil
}

func listWorkflows(ctx context.Context, env Env, store *workflow.Store, user userid.ID) error {
	list, err := store.ListWorkflows(ctx, user)
	if err != nil {
		return fmt.Errorf("list workflows: %w", err)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tACTIVE\tTRIGGER\tSTEPS")
	for _, w := range list {
		fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%d\n", w.ID, w.Name, w.Active, triggerSummary(w.Trigger), len(w.Steps))
	}
	return tw.Flush()
}

// triggerSummary is a one-cell description of a trigger.
func triggerSummary(t *workflow.Trigger) string {
	switch {
	case t == nil:
		return "manual"
	case t.Type == workflow.TriggerSchedule:
		return "schedule " + t.Cron
	case t.TriggerPrompt != "":
		return t.Type + " (llm gate)"
	}
	return t.Type
}
