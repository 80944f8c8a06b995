package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/inboxd/inboxd/daemon/api"
	"github.com/inboxd/inboxd/daemon/auth"
	"github.com/inboxd/inboxd/daemon/metrics"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/users"
	"github.com/inboxd/inboxd/daemon/workflow"
	"github.com/inboxd/inboxd/internal/testsvc"
)

// wfEnv is an API with the workflow store and a static tool table, and two
// plain users A and B in apikey mode. No runner runs: instances stay queued.
type wfEnv struct {
	*env
	a, b       users.User
	keyA, keyB string

	mu        sync.Mutex
	toolUsers []string // the user of every tool call, in order
}

func newWorkflowEnv(t *testing.T, withTools bool) *wfEnv {
	t.Helper()
	db, box := testsvc.SQLite(t), testsvc.SecretBox(t)
	store := kv.NewSQL(db)
	us := users.NewStore(db)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := auth.New(auth.Config{Mode: "apikey"}, us, box, logger)
	if err != nil {
		t.Fatal(err)
	}
	we := &wfEnv{}
	deps := api.Deps{
		Auth: a, Users: us, Settings: settings.NewStore(store, box),
		Workflows: workflow.NewStore(db),
		Metrics:   metrics.New("test"), Logger: logger,
	}
	if withTools {
		deps.Tools = tools.NewStatic().
			Add(tools.Spec{Name: "echo-say", Description: "says text back",
				InputSchema: json.RawMessage(`{"type":"object","properties":{"text":{"type":"string"}}}`)},
				func(_ context.Context, c tools.Call) (tools.Result, error) {
					we.mu.Lock()
					we.toolUsers = append(we.toolUsers, c.User.String())
					we.mu.Unlock()
					var args struct{ Text string }
					if err := json.Unmarshal(c.Arguments, &args); err != nil {
						return tools.Result{}, err
					}
					out, _ := json.Marshal(map[string]string{"said": args.Text, "user": c.User.String()})
					return tools.Result{Content: out}, nil
				}).
			Add(tools.Spec{Name: "echo-fail", Description: "always fails"},
				func(context.Context, tools.Call) (tools.Result, error) {
					return tools.Result{Content: json.RawMessage(`"no such message"`), IsError: true}, nil
				})
	}
	s := api.New(deps)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	we.env = &env{srv: srv, api: s, kv: store, users: us, box: box}
	we.a, we.keyA = we.newUser(t, "alice@example.com", false)
	we.b, we.keyB = we.newUser(t, "bob@example.com", false)
	return we
}

// call does a request and fails the test unless the status is want.
func (e *wfEnv) call(t *testing.T, key, method, path, body string, want int) map[string]any {
	t.Helper()
	code, got := e.do(t, request{method: method, path: path, body: body, bearer: key})
	if code != want {
		t.Fatalf("%s %s: %d %v, want %d", method, path, code, got, want)
	}
	return got
}

// badField asserts a 400 whose error names field (and, if set, mentions word).
func (e *wfEnv) badField(t *testing.T, key, method, path, body, field, word string) {
	t.Helper()
	code, got := e.do(t, request{method: method, path: path, body: body, bearer: key})
	errObj, _ := got["error"].(map[string]any)
	msg, _ := errObj["message"].(string)
	f, _ := errObj["field"].(string)
	if code != 400 || !strings.HasPrefix(f, field) || (word != "" && !strings.Contains(msg, word) && !strings.Contains(f, word)) {
		t.Errorf("%s %s %s: %d %v; want 400 with field %s mentioning %q", method, path, body, code, got, field, word)
	}
}

func wfSteps(w map[string]any) []map[string]any {
	var out []map[string]any
	list, _ := w["steps"].([]any)
	for _, s := range list {
		out = append(out, s.(map[string]any))
	}
	return out
}

func wfStepIDs(w map[string]any) []string {
	var ids []string
	for _, s := range wfSteps(w) {
		ids = append(ids, s["id"].(string))
	}
	return ids
}

func wfItems(t *testing.T, body map[string]any) []map[string]any {
	t.Helper()
	list, ok := body["items"].([]any)
	if !ok {
		t.Fatalf("no items list: %v", body)
	}
	out := make([]map[string]any, 0, len(list))
	for _, it := range list {
		out = append(out, it.(map[string]any))
	}
	return out
}

// quoteWorkflow refers between steps by name; the server resolves to ids.
const quoteWorkflow = `{
	"name": "Quote requests", "description": "draft replies to quote requests", "active": true,
	"trigger": {"type": "new_email", "filter_rules": {"domain_whitelist": ["customer.example"]}},
	"steps": [
		{"name": "classify", "kind": "llm", "model": "m", "system_prompt": "Is this a quote request? <<trigger_output>>"},
		{"name": "stop?", "kind": "stop_checker", "step_to_check": "classify", "mode": "stop_if_output_contains", "match_values": ["no"]},
		{"name": "label", "kind": "tool", "tool": "echo-say", "arguments": {"text": "<<step_output.classify>> for <<trigger.subject>>"}}
	]}`

func TestWorkflowCRUD(t *testing.T) {
	e := newWorkflowEnv(t, true)
	created := e.call(t, e.keyA, "POST", "/api/v1/workflows", quoteWorkflow, 201)
	id, _ := created["id"].(string)
	if id == "" || created["name"] != "Quote requests" || created["active"] != true || len(wfSteps(created)) != 3 {
		t.Fatalf("created: %v", created)
	}
	ids := wfStepIDs(created)
	for _, sid := range ids {
		if sid == "" {
			t.Fatalf("a step has no id: %v", created)
		}
	}
	if got := wfSteps(created)[1]["step_to_check"]; got != ids[0] {
		t.Errorf("step_to_check by name resolved to %v, want %s", got, ids[0])
	}

	got := e.call(t, e.keyA, "GET", "/api/v1/workflows/"+id, "", 200)
	if got["name"] != "Quote requests" || !slices.Equal(wfStepIDs(got), ids) {
		t.Errorf("GET: %v", got)
	}
	if list := wfItems(t, e.call(t, e.keyA, "GET", "/api/v1/workflows", "", 200)); len(list) != 1 || list[0]["id"] != id {
		t.Errorf("list: %v", list)
	}

	patched := e.call(t, e.keyA, "PATCH", "/api/v1/workflows/"+id, `{"name":"Quotes","active":false}`, 200)
	if patched["name"] != "Quotes" || patched["active"] != false || patched["description"] != "draft replies to quote requests" ||
		!slices.Equal(wfStepIDs(patched), ids) || patched["trigger"] == nil {
		t.Errorf("PATCH changed more or less than asked: %v", patched)
	}
	e.badField(t, e.keyA, "PATCH", "/api/v1/workflows/"+id, `{"owner":"bob"}`, "owner", "")
	e.badField(t, e.keyA, "PATCH", "/api/v1/workflows/"+id, `{"id":"x"}`, "id", "")
	e.badField(t, e.keyA, "PATCH", "/api/v1/workflows/"+id, `{"name": 5}`, "name", "")
	e.badField(t, e.keyA, "PATCH", "/api/v1/workflows/"+id, `[]`, "body", "")
	// PATCH of trigger null removes it: the workflow then runs only manually.
	if p := e.call(t, e.keyA, "PATCH", "/api/v1/workflows/"+id, `{"trigger":null}`, 200); p["trigger"] != nil {
		t.Errorf("trigger not removed: %v", p["trigger"])
	}

	e.call(t, e.keyA, "DELETE", "/api/v1/workflows/"+id, "", 204)
	e.call(t, e.keyA, "GET", "/api/v1/workflows/"+id, "", 404)
	e.call(t, e.keyA, "DELETE", "/api/v1/workflows/"+id, "", 404)
	if list := wfItems(t, e.call(t, e.keyA, "GET", "/api/v1/workflows", "", 200)); len(list) != 0 {
		t.Errorf("list after delete: %v", list)
	}
}

func TestWorkflowValidation(t *testing.T) {
	e := newWorkflowEnv(t, true)
	post := func(body, field, word string) {
		t.Helper()
		e.badField(t, e.keyA, "POST", "/api/v1/workflows", body, field, word)
	}
	post(`{"name":"x","steps":[{"name":"a","kind":"llm","system_prompt":"<<bogus_placeholder>>"}]}`, "steps[0]", "bogus_placeholder")
	post(`{"name":"x","steps":[
		{"name":"first","kind":"llm","system_prompt":"<<step_output.second>>"},
		{"name":"second","kind":"llm","system_prompt":"hi"}]}`, "steps[0]", "second")
	post(`{"name":"x","steps":[{"name":"a","kind":"llm","system_prompt":"<<step_output.nowhere>>"}]}`, "steps[0]", "nowhere")
	post(`{"name":"x","steps":[{"name":"a","kind":"teleport"}]}`, "steps[0]", "")
	post(`{"name":"x","trigger":{"type":"schedule","cron":"not a cron"}}`, "trigger", "")
	post(`{"name":"x","colour":"red"}`, "colour", "")
	post(`{"name":"x","steps":[{"name":"a","kind":"llm","temperature":1}]}`, "temperature", "")
	post(`{"name":"x","active":"yes"}`, "active", "")
	post(`{"name":"x"} {}`, "body", "")
	post(`{"name":"x"}}`, "body", "")
	post(`{"name":"x"}]`, "body", "")
	if list := wfItems(t, e.call(t, e.keyA, "GET", "/api/v1/workflows", "", 200)); len(list) != 0 {
		t.Errorf("refused creates left workflows: %v", list)
	}
}

func TestWorkflowSteps(t *testing.T) {
	e := newWorkflowEnv(t, true)
	wf := e.call(t, e.keyA, "POST", "/api/v1/workflows", quoteWorkflow, 201)
	base := "/api/v1/workflows/" + wf["id"].(string)
	ids := wfStepIDs(wf) // classify, stop?, label

	// Append, then insert at the front.
	added := e.call(t, e.keyA, "POST", base+"/steps", `{"name":"summary","kind":"llm","system_prompt":"sum <<step_output.classify>>"}`, 201)
	if added["id"] == "" || added["name"] != "summary" || added["system_prompt"] != "sum <<step_output."+ids[0]+">>" {
		t.Errorf("appended step: %v", added)
	}
	first := e.call(t, e.keyA, "POST", base+"/steps", `{"name":"intro","kind":"llm","system_prompt":"hello","position":0}`, 201)
	got := e.call(t, e.keyA, "GET", base, "", 200)
	want := append([]string{first["id"].(string)}, append(slices.Clone(ids), added["id"].(string))...)
	if !slices.Equal(wfStepIDs(got), want) {
		t.Fatalf("steps after adds: %v, want %v", wfStepIDs(got), want)
	}
	e.badField(t, e.keyA, "POST", base+"/steps", `{"name":"far","kind":"llm","system_prompt":"x","position":9}`, "position", "")
	e.badField(t, e.keyA, "POST", base+"/steps", `{"name":"early","kind":"llm","system_prompt":"<<step_output.summary>>","position":0}`, "steps[0]", "summary")

	// Patch: only the given fields change; the id cannot.
	p := e.call(t, e.keyA, "PATCH", base+"/steps/"+first["id"].(string), `{"system_prompt":"hello <<trigger.from>>"}`, 200)
	if p["system_prompt"] != "hello <<trigger.from>>" || p["name"] != "intro" || p["kind"] != "llm" || p["id"] != first["id"] {
		t.Errorf("patched step: %v", p)
	}
	e.badField(t, e.keyA, "PATCH", base+"/steps/"+first["id"].(string), `{"id":"`+ids[0]+`"}`, "id", "")
	e.badField(t, e.keyA, "PATCH", base+"/steps/"+first["id"].(string), `{"system_prompt":"<<nope>>"}`, "steps[0]", "nope")
	e.call(t, e.keyA, "PATCH", base+"/steps/"+userid.New().String(), `{"name":"x"}`, 404)

	// Reorder: a permutation, and references must still point backwards.
	cur := wfStepIDs(e.call(t, e.keyA, "GET", base, "", 200)) // intro, classify, stop?, label, summary
	order := func(ids ...string) string {
		b, _ := json.Marshal(map[string]any{"step_ids": ids})
		return string(b)
	}
	e.badField(t, e.keyA, "PUT", base+"/steps/order", order(cur[1:]...), "step_ids", "")
	e.badField(t, e.keyA, "PUT", base+"/steps/order", order(cur[0], cur[0], cur[2], cur[3], cur[4]), "step_ids", "")
	e.badField(t, e.keyA, "PUT", base+"/steps/order", order(cur[0], cur[1], cur[2], cur[3], "nope"), "step_ids", "")
	e.badField(t, e.keyA, "PUT", base+"/steps/order", order(cur[2], cur[1], cur[0], cur[3], cur[4]), "steps[0]", "in the new order")
	reordered := e.call(t, e.keyA, "PUT", base+"/steps/order", order(cur[1], cur[0], cur[2], cur[4], cur[3]), 200)
	if !slices.Equal(wfStepIDs(reordered), []string{cur[1], cur[0], cur[2], cur[4], cur[3]}) {
		t.Errorf("reordered: %v", wfStepIDs(reordered))
	}

	// Delete: refused while a later step refers to it.
	e.badField(t, e.keyA, "DELETE", base+"/steps/"+ids[0], "", "steps", "\"classify\" cannot be removed")
	after := e.call(t, e.keyA, "DELETE", base+"/steps/"+cur[0], "", 200)
	if slices.Contains(wfStepIDs(after), cur[0]) || len(wfStepIDs(after)) != 4 {
		t.Errorf("after delete: %v", wfStepIDs(after))
	}
	e.call(t, e.keyA, "DELETE", base+"/steps/"+cur[0], "", 404)
}

func TestWorkflowTriggerAndStatus(t *testing.T) {
	e := newWorkflowEnv(t, true)
	wf := e.call(t, e.keyA, "POST", "/api/v1/workflows", `{"name":"t","steps":[{"name":"a","kind":"llm","system_prompt":"x"}]}`, 201)
	base := "/api/v1/workflows/" + wf["id"].(string)
	if wf["trigger"] != nil || wf["active"] != false {
		t.Fatalf("created: %v", wf)
	}
	got := e.call(t, e.keyA, "PUT", base+"/trigger", `{"type":"new_email","filter_rules":{"email_blacklist":["spam@example.com"]}}`, 200)
	tr, _ := got["trigger"].(map[string]any)
	if tr["type"] != "new_email" || !strings.Contains(wfJSON(t, tr["filter_rules"]), "spam@example.com") {
		t.Errorf("PUT trigger: %v", got)
	}
	got = e.call(t, e.keyA, "PATCH", base+"/trigger", `{"trigger_prompt":"Is it a quote request?","trigger_model":"m"}`, 200)
	tr, _ = got["trigger"].(map[string]any)
	if tr["type"] != "new_email" || tr["trigger_prompt"] != "Is it a quote request?" || !strings.Contains(wfJSON(t, tr), "spam@example.com") {
		t.Errorf("PATCH trigger: %v", tr)
	}
	e.badField(t, e.keyA, "PUT", base+"/trigger", `{"type":"schedule","cron":"61 * * * *"}`, "trigger", "")
	e.badField(t, e.keyA, "PUT", base+"/trigger", `{"type":"carrier_pigeon"}`, "trigger", "")
	e.badField(t, e.keyA, "PUT", base+"/trigger", `{"type":"schedule","when":"daily"}`, "when", "")
	got = e.call(t, e.keyA, "PUT", base+"/trigger", `{"type":"schedule","cron":"0 8 * * 1-5"}`, 200)
	if tr, _ := got["trigger"].(map[string]any); tr["type"] != "schedule" || tr["cron"] != "0 8 * * 1-5" || tr["trigger_prompt"] != nil {
		t.Errorf("replaced trigger: %v", got["trigger"])
	}
	if got = e.call(t, e.keyA, "DELETE", base+"/trigger", "", 200); got["trigger"] != nil {
		t.Errorf("DELETE trigger: %v", got)
	}

	if got = e.call(t, e.keyA, "PUT", base+"/status", `{"active":true}`, 200); got["active"] != true {
		t.Errorf("status on: %v", got)
	}
	if got = e.call(t, e.keyA, "GET", base, "", 200); got["active"] != true {
		t.Errorf("status not stored: %v", got)
	}
	e.badField(t, e.keyA, "PUT", base+"/status", `{}`, "active", "")
	e.badField(t, e.keyA, "PUT", base+"/status", `{"active":"on"}`, "active", "")
	if got = e.call(t, e.keyA, "PUT", base+"/status", `{"active":false}`, 200); got["active"] != false {
		t.Errorf("status off: %v", got)
	}
}

func wfJSON(t *testing.T, v any) string {
	t.Helper()
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // placeholders stay readable: <<...>>
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func TestWorkflowRunAndInstances(t *testing.T) {
	e := newWorkflowEnv(t, true)
	wf := e.call(t, e.keyA, "POST", "/api/v1/workflows", quoteWorkflow, 201)
	base := "/api/v1/workflows/" + wf["id"].(string)

	inst := e.call(t, e.keyA, "POST", base+"/run", `{"input":"hello there"}`, 202)
	if inst["status"] != "queued" || inst["workflow_id"] != wf["id"] || inst["id"] == "" {
		t.Fatalf("run: %v", inst)
	}
	got := e.call(t, e.keyA, "GET", "/api/v1/instances/"+inst["id"].(string), "", 200)
	trig, _ := got["trigger"].(map[string]any)
	if got["status"] != "queued" || trig["markdown"] != "hello there" {
		t.Errorf("GET instance: %v", got)
	}
	if _, ok := got["steps"].([]any); !ok {
		t.Errorf("instance has no steps list: %v", got)
	}

	byEmail := e.call(t, e.keyA, "POST", base+"/run", `{"email":{"from":"Carol <carol@customer.example>","to":"alice@example.com","subject":"Quote for 40 chairs","body":"Could you send a quote?\n# 40, not 4"}}`, 202)
	trig, _ = byEmail["trigger"].(map[string]any)
	md, _ := trig["markdown"].(string)
	email, _ := trig["email"].(map[string]any)
	for _, want := range []string{"# Email Thread\n", "\n## Message 1\n", "- **Subject:** Quote for 40 chairs\n",
		"- **From:** Carol <carol@customer.example>\n", "- **CC:** (none)\n", "\nCould you send a quote?\n\\# 40, not 4\n"} {
		if !strings.Contains(md, want) {
			t.Errorf("email markdown lacks %q:\n%s", want, md)
		}
	}
	if email["subject"] != "Quote for 40 chairs" || email["from"] != "Carol <carol@customer.example>" || email["date"] == "" {
		t.Errorf("structured email: %v", email)
	}

	// One idempotency key, one instance.
	k1 := e.call(t, e.keyA, "POST", base+"/run", `{"input":"x","idempotency_key":"manual-1"}`, 202)
	k2 := e.call(t, e.keyA, "POST", base+"/run", `{"input":"x","idempotency_key":"manual-1"}`, 200)
	if k1["id"] != k2["id"] {
		t.Errorf("same idempotency key gave %v and %v", k1["id"], k2["id"])
	}
	e.badField(t, e.keyA, "POST", base+"/run", `{"input":"x","email":{"subject":"y"}}`, "input", "")
	e.badField(t, e.keyA, "POST", base+"/run", `{"text":"x"}`, "text", "")
	e.badField(t, e.keyA, "POST", base+"/run", `{"email":{"cc":"x"}}`, "cc", "")

	list := wfItems(t, e.call(t, e.keyA, "GET", base+"/instances", "", 200))
	if len(list) != 3 {
		t.Errorf("instances: %d, want 3", len(list))
	}
	if list := wfItems(t, e.call(t, e.keyA, "GET", base+"/instances?limit=1", "", 200)); len(list) != 1 {
		t.Errorf("limit=1: %d", len(list))
	}
	for _, bad := range []string{"0", "-1", "x", "100000"} {
		e.badField(t, e.keyA, "GET", base+"/instances?limit="+bad, "", "limit", "")
	}

	c := e.call(t, e.keyA, "POST", "/api/v1/instances/"+inst["id"].(string)+"/cancel", "", 200)
	if c["status"] != "cancelled" && c["cancel_requested"] != true {
		t.Errorf("cancel: %v", c)
	}
	if got := e.call(t, e.keyA, "GET", "/api/v1/instances/"+inst["id"].(string), "", 200); got["status"] != "cancelled" && got["cancel_requested"] != true {
		t.Errorf("after cancel: %v", got)
	}
	e.call(t, e.keyA, "GET", "/api/v1/instances/"+userid.New().String(), "", 404)
	e.call(t, e.keyA, "GET", "/api/v1/instances/not-an-id", "", 404)
}

func TestWorkflowExportImport(t *testing.T) {
	e := newWorkflowEnv(t, true)
	wf := e.call(t, e.keyA, "POST", "/api/v1/workflows", quoteWorkflow, 201)
	orig := wfStepIDs(wf)
	doc := e.call(t, e.keyA, "GET", "/api/v1/workflows/"+wf["id"].(string)+"/export", "", 200)
	if doc["inboxd_workflow"] != 1.0 || doc["name"] != "Quote requests" || doc["id"] != nil || doc["active"] != nil || !slices.Equal(wfStepIDs(doc), orig) {
		t.Fatalf("export: %v", doc)
	}

	imported := e.call(t, e.keyA, "POST", "/api/v1/workflows/import", wfJSON(t, doc), 201)
	fresh := wfStepIDs(imported)
	if imported["id"] == wf["id"] || len(fresh) != 3 || imported["name"] != "Quote requests" || imported["active"] != false {
		t.Fatalf("import: %v", imported)
	}
	for i := range fresh {
		if slices.Contains(orig, fresh[i]) {
			t.Errorf("imported step %d kept the id %s", i, fresh[i])
		}
	}
	st := wfSteps(imported)
	if st[1]["step_to_check"] != fresh[0] {
		t.Errorf("step_to_check not rewritten: %v, want %s", st[1]["step_to_check"], fresh[0])
	}
	if args := wfJSON(t, st[2]["arguments"]); !strings.Contains(args, "<<step_output."+fresh[0]+">>") || strings.Contains(args, orig[0]) {
		t.Errorf("tool arguments not rewritten: %s", args)
	}
	if tr, _ := imported["trigger"].(map[string]any); tr["type"] != "new_email" {
		t.Errorf("trigger lost in import: %v", imported["trigger"])
	}

	// A hand-written document with its own ids referenced in prompts.
	handDoc := `{"inboxd_workflow":1,"name":"hand","description":"","trigger":null,"active":true,"steps":[
		{"id":"s1","name":"one","kind":"llm","system_prompt":"x"},
		{"id":"s2","name":"two","kind":"llm","system_prompt":"after <<step_output.s1>>"}]}`
	hand := e.call(t, e.keyA, "POST", "/api/v1/workflows/import", handDoc, 201)
	hs := wfSteps(hand)
	if hand["active"] != true || hs[0]["id"] == "s1" || hs[1]["system_prompt"] != "after <<step_output."+hs[0]["id"].(string)+">>" {
		t.Errorf("hand import: %v", hand)
	}
	// The API's workflow shape imports too.
	if again := e.call(t, e.keyA, "POST", "/api/v1/workflows/import", wfJSON(t, wf), 201); again["id"] == wf["id"] || again["active"] != true {
		t.Errorf("import of the API shape: %v", again)
	}
	e.badField(t, e.keyA, "POST", "/api/v1/workflows/import", `{"inboxd_workflow":2,"name":"x"}`, "inboxd_workflow", "")
	e.badField(t, e.keyA, "POST", "/api/v1/workflows/import", `{"inboxd_workflow":1,"name":"x","steps":[{"id":"a","name":"a","kind":"llm","system_prompt":"x"},{"id":"a","name":"b","kind":"llm","system_prompt":"y"}]}`, "steps[1].id", "")
	e.badField(t, e.keyA, "POST", "/api/v1/workflows/import", `{"inboxd_workflow":1,"name":"x","extra":1}`, "extra", "")
	e.badField(t, e.keyA, "POST", "/api/v1/workflows/import", `[1]`, "body", "")
	if list := wfItems(t, e.call(t, e.keyA, "GET", "/api/v1/workflows", "", 200)); len(list) != 4 {
		t.Errorf("workflows after imports: %d, want 4", len(list))
	}
}

// TestWorkflowIsolation walks the router's own route list: B gets 404 for
// every route given A's workflow, instance or step ids, and A's objects are
// unchanged afterwards and absent from B's lists.
func TestWorkflowIsolation(t *testing.T) {
	e := newWorkflowEnv(t, true)
	wfA := e.call(t, e.keyA, "POST", "/api/v1/workflows", quoteWorkflow, 201)
	instA := e.call(t, e.keyA, "POST", "/api/v1/workflows/"+wfA["id"].(string)+"/run", `{"input":"A's mail"}`, 202)
	wfB := e.call(t, e.keyB, "POST", "/api/v1/workflows", `{"name":"B's","steps":[{"name":"b1","kind":"llm","system_prompt":"x"}]}`, 201)
	instB := e.call(t, e.keyB, "POST", "/api/v1/workflows/"+wfB["id"].(string)+"/run", `{"input":"B's mail"}`, 202)
	stepA, stepB := wfStepIDs(wfA)[0], wfStepIDs(wfB)[0]
	beforeA := wfJSON(t, e.call(t, e.keyA, "GET", "/api/v1/workflows/"+wfA["id"].(string), "", 200))

	type ids struct{ id, step string }
	checked := 0
	for _, pattern := range e.api.Routes() {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok || !strings.Contains(path, "{id}") {
			continue
		}
		var cases []ids
		for _, id := range []string{wfA["id"].(string), instA["id"].(string)} {
			cases = append(cases, ids{id, stepA}, ids{id, stepB})
		}
		if strings.Contains(path, "{step_id}") { // B's own workflow, A's step
			cases = append(cases, ids{wfB["id"].(string), stepA})
		}
		for _, c := range cases {
			p := strings.NewReplacer("{id}", c.id, "{step_id}", c.step).Replace(path)
			for _, body := range []string{"{}", `{"input":"x","active":true,"step_ids":[]}`} {
				if code, got := e.do(t, request{method: method, path: p, body: body, bearer: e.keyB}); code != 404 {
					t.Errorf("B: %s %s %s = %d %v, want 404", method, p, body, code, got)
				}
			}
		}
		checked++
	}
	if checked < 15 {
		t.Fatalf("only %d routes with {id} checked", checked)
	}
	if after := wfJSON(t, e.call(t, e.keyA, "GET", "/api/v1/workflows/"+wfA["id"].(string), "", 200)); after != beforeA {
		t.Errorf("B's requests changed A's workflow:\n%s\n%s", beforeA, after)
	}
	if got := e.call(t, e.keyA, "GET", "/api/v1/instances/"+instA["id"].(string), "", 200); got["status"] != "queued" || got["cancel_requested"] == true {
		t.Errorf("B's requests changed A's instance: %v", got)
	}

	listB := wfJSON(t, e.call(t, e.keyB, "GET", "/api/v1/workflows", "", 200))
	instancesB := wfJSON(t, e.call(t, e.keyB, "GET", "/api/v1/workflows/"+wfB["id"].(string)+"/instances", "", 200))
	for _, leak := range []string{wfA["id"].(string), instA["id"].(string), stepA, "Quote requests", "A's mail"} {
		if strings.Contains(listB+instancesB, leak) {
			t.Errorf("B's lists show A's %q", leak)
		}
	}
	if !strings.Contains(instancesB, instB["id"].(string)) {
		t.Errorf("B's instances lack B's own run: %s", instancesB)
	}
	if list := wfItems(t, e.call(t, e.keyA, "GET", "/api/v1/workflows", "", 200)); len(list) != 1 || list[0]["id"] != wfA["id"] {
		t.Errorf("A's list: %v", list)
	}
}

func TestToolsAPI(t *testing.T) {
	e := newWorkflowEnv(t, true)
	list := wfItems(t, e.call(t, e.keyA, "GET", "/api/v1/tools", "", 200))
	if len(list) != 2 || list[0]["name"] != "echo-fail" || list[1]["name"] != "echo-say" || list[1]["description"] != "says text back" {
		t.Fatalf("tools: %v", list)
	}
	if schema, _ := list[1]["input_schema"].(map[string]any); schema["type"] != "object" {
		t.Errorf("input_schema: %v", list[1]["input_schema"])
	}

	for _, who := range []struct {
		key string
		id  userid.ID
	}{{e.keyA, e.a.ID}, {e.keyB, e.b.ID}} {
		got := e.call(t, who.key, "POST", "/api/v1/tools/echo/say", `{"text":"hi"}`, 200)
		content, _ := got["content"].(map[string]any)
		if got["is_error"] != false || content["said"] != "hi" || content["user"] != who.id.String() {
			t.Errorf("call as %s: %v", who.id, got)
		}
	}
	e.mu.Lock()
	seen := slices.Clone(e.toolUsers)
	e.mu.Unlock()
	if !slices.Equal(seen, []string{e.a.ID.String(), e.b.ID.String()}) {
		t.Errorf("the tool saw users %v", seen)
	}

	if got := e.call(t, e.keyA, "POST", "/api/v1/tools/echo/fail", `{}`, 200); got["is_error"] != true || got["content"] != "no such message" {
		t.Errorf("failing tool: %v", got)
	}
	e.call(t, e.keyA, "POST", "/api/v1/tools/echo/nope", `{}`, 404)
	e.call(t, e.keyA, "POST", "/api/v1/tools/nope/say", `{}`, 404)
	e.call(t, e.keyA, "POST", "/api/v1/tools/ec-ho/say", `{}`, 404)
	e.badField(t, e.keyA, "POST", "/api/v1/tools/echo/say", `["hi"]`, "body", "")
	e.badField(t, e.keyA, "POST", "/api/v1/tools/echo/say", `"hi"`, "body", "")

	none := newWorkflowEnv(t, false)
	if list := wfItems(t, none.call(t, none.keyA, "GET", "/api/v1/tools", "", 200)); len(list) != 0 {
		t.Errorf("tools without a caller: %v", list)
	}
	none.call(t, none.keyA, "POST", "/api/v1/tools/echo/say", `{}`, 404)
}
