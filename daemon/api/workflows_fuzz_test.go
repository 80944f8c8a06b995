package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// fuzzWorkflowDoc is a valid document with every step kind and references
// by id and by name.
const fuzzWorkflowDoc = `{"inboxd_workflow":1,"name":"Quotes","description":"d","active":true,
 "trigger":{"type":"new_email","filter_rules":{"email_blacklist":["Spam@x.com"],"domain_whitelist":["@a.com"]},"trigger_prompt":"<<trigger.subject>>"},
 "steps":[{"id":"s1","name":"classify","kind":"llm","system_prompt":"<<trigger_output>>"},
  {"id":"s2","name":"check","kind":"stop_checker","step_to_check":"s1","mode":"stop_if_output_contains","match_values":["no"]},
  {"id":"s3","name":"reply","kind":"agent","system_prompt":"<<step_output.s1>> <<step_output.classify>>","tools":["imap-draft_reply"]},
  {"id":"s4","name":"label","kind":"tool","tool":"imap-set_label","arguments":{"l":["<<step_output.s3>>",{"n":1e400}]}}]}`

// asValidation fails t unless err is a *workflow.ValidationError naming a field.
func asValidation(t *testing.T, err error) {
	t.Helper()
	var ve *workflow.ValidationError
	if !errors.As(err, &ve) || ve.Message == "" {
		t.Fatalf("error %T %q is not a ValidationError", err, err)
	}
	// A member named "" is reported as the unknown field "" (field "",
	// message ": unknown field"): found by this fuzzer, left to decodeStrict's
	// owner to word better.
	if ve.Field == "" && ve.Message != "unknown field" {
		t.Fatalf("error %q does not name a field", err)
	}
}

// canonicalSteps renames step ids to their positions ("#0", "#1" ...)
// everywhere they are referred to, and spells tool arguments one way, so
// that two imports of one document compare equal.
func canonicalSteps(t *testing.T, wf workflow.Workflow) workflow.Workflow {
	t.Helper()
	ids := map[string]string{}
	for i, s := range wf.Steps {
		ids[s.ID] = "#" + strconv.Itoa(i)
	}
	wf.ID = ""
	wf.Steps = append([]workflow.Step(nil), wf.Steps...)
	for i := range wf.Steps {
		s := &wf.Steps[i]
		s.ID = ids[s.ID]
		s.StepToCheck = ids[s.StepToCheck]
		s.SystemPrompt = rewriteStepRefs(s.SystemPrompt, ids)
		args, err := rewriteArguments(s.Arguments, ids)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if len(args) > 0 {
			var v any
			dec := json.NewDecoder(bytes.NewReader(args))
			dec.UseNumber()
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("step %d: arguments %s: %v", i, args, err)
			}
			if args, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
		}
		s.Arguments = args
	}
	return wf
}

// FuzzImportWorkflow feeds any document to the import (POST
// /api/v1/workflows/import, `inboxd workflow apply`) and then to the
// store's validation. A refusal is a ValidationError naming a field. An
// accepted document gives fresh step ids; its export imports again to the
// same workflow; and applying the export over the workflow itself changes
// nothing at all (ids and references included).
//
// Seed corpus: testdata/fuzz/FuzzImportWorkflow, and fuzzWorkflowDoc.
func FuzzImportWorkflow(f *testing.F) {
	f.Add([]byte(fuzzWorkflowDoc))
	f.Fuzz(func(t *testing.T, doc []byte) {
		imported, err := ImportWorkflow(doc, nil)
		if err != nil {
			asValidation(t, err)
			return
		}
		if imported.ID != "" {
			t.Fatalf("import kept id %q", imported.ID)
		}
		n, err := workflow.Normalize(imported)
		if err != nil {
			asValidation(t, err)
			return
		}
		docIDs := map[string]bool{}
		var d struct{ Steps []struct{ ID string } }
		_ = json.Unmarshal(doc, &d)
		for _, s := range d.Steps {
			docIDs[strings.TrimSpace(s.ID)] = true
		}
		for i, s := range n.Steps {
			if docIDs[s.ID] {
				t.Fatalf("step %d kept the document's id %q", i, s.ID)
			}
		}

		exported, err := json.Marshal(ExportWorkflow(n))
		if err != nil {
			t.Fatal(err)
		}
		again, err := ImportWorkflow(exported, nil)
		if err != nil {
			t.Fatalf("export does not import: %v\n%s", err, exported)
		}
		again.Active = n.Active // the export leaves active to the importer
		n2, err := workflow.Normalize(again)
		if err != nil {
			t.Fatalf("export does not validate: %v\n%s", err, exported)
		}
		if a, b := canonicalSteps(t, n), canonicalSteps(t, n2); !reflect.DeepEqual(a, b) {
			t.Fatalf("export/import changes the workflow:\n%+v\n%+v", a, b)
		}

		n.ID = "existing"
		applied, err := ImportWorkflow(exported, &n)
		if err != nil {
			t.Fatalf("apply over itself: %v", err)
		}
		if n3, err := workflow.Normalize(applied); err != nil || !reflect.DeepEqual(canonicalArgs(t, n3), canonicalArgs(t, n)) {
			t.Fatalf("applying the export over the workflow changes it (%v):\n%+v\n%+v", err, n, n3)
		}
	})
}

// canonicalArgs is canonicalSteps without renaming the ids.
func canonicalArgs(t *testing.T, wf workflow.Workflow) workflow.Workflow {
	c := canonicalSteps(t, wf)
	for i := range c.Steps {
		c.Steps[i].ID, c.Steps[i].StepToCheck, c.Steps[i].SystemPrompt = wf.Steps[i].ID, wf.Steps[i].StepToCheck, wf.Steps[i].SystemPrompt
	}
	c.ID = wf.ID
	return c
}

// FuzzDecodeWorkflow feeds any body to the decoding POST and PATCH
// /api/v1/workflows do: decodeStrict (one JSON value, no unknown fields)
// and merge (a patch over the stored workflow). A refusal is a
// ValidationError naming a field; what decodes re-encodes to JSON that
// decodes to the same (decode -> encode -> decode is a fixed point).
//
// Seed corpus: testdata/fuzz/FuzzDecodeWorkflow.
func FuzzDecodeWorkflow(f *testing.F) {
	base, err := ImportWorkflow([]byte(fuzzWorkflowDoc), nil)
	if err != nil {
		f.Fatal(err)
	}
	if base, err = workflow.Normalize(base); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var wf workflow.Workflow
		if err := decodeStrict(body, &wf); err != nil {
			asValidation(t, err)
		} else {
			first, err := json.Marshal(wf)
			if err != nil {
				t.Fatal(err)
			}
			var wf2 workflow.Workflow
			if err := decodeStrict(first, &wf2); err != nil {
				t.Fatalf("re-encoded workflow does not decode: %v\n%s", err, first)
			}
			if second, _ := json.Marshal(wf2); !bytes.Equal(first, second) {
				t.Fatalf("decode/encode is not a fixed point:\n%s\n%s", first, second)
			}
			if _, err := workflow.Normalize(wf); err != nil {
				asValidation(t, err)
			}
		}

		var patch map[string]json.RawMessage
		if json.Unmarshal(body, &patch) != nil || patch == nil {
			return
		}
		for k := range patch {
			if !patchableWorkflow()[k] {
				delete(patch, k)
			}
		}
		var next workflow.Workflow
		if err := merge(base, patch, &next); err != nil {
			asValidation(t, err)
			return
		}
		if len(patch) == 0 && !reflect.DeepEqual(canonicalArgs(t, next), canonicalArgs(t, base)) {
			t.Fatalf("an empty patch changes the workflow")
		}
		if _, err := workflow.Normalize(next); err != nil {
			asValidation(t, err)
		}
	})
}

// TestRequestBodyLimit: every route that reads a body refuses one over
// maxBodyBytes with 413 and a message naming the limit, and reads one at
// the limit.
func TestRequestBodyLimit(t *testing.T) {
	db := testsvc.SQLite(t)
	box := testsvc.SecretBox(t)
	store := kv.NewSQL(db)
	us := users.NewStore(db)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := auth.New(auth.Config{Mode: auth.ModeNone}, us, box, logger)
	if err != nil {
		t.Fatal(err)
	}
	wfs := workflow.NewStore(db)
	srv := httptest.NewServer(New(Deps{
		Auth: a, Users: us, Settings: settings.NewStore(store, box), KV: store,
		Workflows: wfs, Logs: logs.NewStore(db), Tools: tools.NewStatic(),
		Metrics: metrics.New("test"), Logger: logger,
	}))
	t.Cleanup(srv.Close)

	post := func(method, path, body string) (int, string) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, created := post("POST", "/api/v1/workflows", `{"name":"limits"}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, created)
	}
	var wf struct{ ID string }
	if err := json.Unmarshal([]byte(created), &wf); err != nil {
		t.Fatal(err)
	}
	// padded is a JSON object of exactly n bytes.
	padded := func(n int) string {
		const head, tail = `{"name":"`, `"}`
		return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	}
	tooLarge := fmt.Sprintf("request body over %d bytes", maxBodyBytes)
	tests := []struct {
		name, method, path string
		size               int
		want               int // status; 0: anything but 413
	}{
		{"create at the limit", "POST", "/api/v1/workflows", maxBodyBytes, 0},
		{"create over the limit", "POST", "/api/v1/workflows", maxBodyBytes + 1, http.StatusRequestEntityTooLarge},
		{"import at the limit", "POST", "/api/v1/workflows/import", maxBodyBytes, 0},
		{"import far over the limit", "POST", "/api/v1/workflows/import", 10 * maxBodyBytes, http.StatusRequestEntityTooLarge},
		{"patch over the limit", "PATCH", "/api/v1/workflows/" + wf.ID, maxBodyBytes + 1, http.StatusRequestEntityTooLarge},
		{"run over the limit", "POST", "/api/v1/workflows/" + wf.ID + "/run", maxBodyBytes + 1, http.StatusRequestEntityTooLarge},
		{"settings at the limit", "PUT", "/api/v1/settings", maxBodyBytes, 0},
		{"settings over the limit", "PUT", "/api/v1/settings", maxBodyBytes + 1, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := post(tt.method, tt.path, padded(tt.size))
			switch {
			case tt.want == 0 && code == http.StatusRequestEntityTooLarge:
				t.Fatalf("a body of %d bytes refused: %s", tt.size, body)
			case tt.want != 0 && (code != tt.want || !strings.Contains(body, `"too_large"`) || !strings.Contains(body, tooLarge)):
				t.Fatalf("%d %s, want %d naming the limit (%q)", code, body, tt.want, tooLarge)
			}
		})
	}
}
