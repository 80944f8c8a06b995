package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/tools"
	"github.com/inboxd/inboxd/daemon/userid"
)

// callLog records tool calls.
type callLog struct {
	mu    sync.Mutex
	calls []tools.Call
}

func (c *callLog) add(call tools.Call) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
}

func (c *callLog) count(tool string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, x := range c.calls {
		if x.Tool == tool {
			n++
		}
	}
	return n
}

func (c *callLog) countFor(tool, instanceID string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, x := range c.calls {
		if x.Tool == tool && x.InstanceID == instanceID {
			n++
		}
	}
	return n
}

func (c *callLog) last(tool string) tools.Call {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.calls) - 1; i >= 0; i-- {
		if c.calls[i].Tool == tool {
			return c.calls[i]
		}
	}
	return tools.Call{}
}

// addTestTools registers t-echo (answers its arguments), t-fail (a
// tool-level error) and t-broken (a transport error).
func addTestTools(h *harness, calls *callLog) {
	h.tools.Add(tools.Spec{Name: "t-echo", Description: "echo"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
		calls.add(c)
		return tools.Result{Content: c.Arguments}, nil
	})
	h.tools.Add(tools.Spec{Name: "t-fail"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
		calls.add(c)
		return tools.Result{Content: json.RawMessage(`"no such message"`), IsError: true}, nil
	})
	h.tools.Add(tools.Spec{Name: "t-broken"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
		calls.add(c)
		return tools.Result{}, errors.New("plugin crashed")
	})
}

var testEmail = &Email{MessageID: "<m1@example.com>", From: "Ann <ann@customer.com>", To: "me@example.com", Subject: "Need a quote", Body: "Price for 10 widgets?"}

func TestRunnerSteps(t *testing.T) {
	type tc struct {
		name       string
		workflow   Workflow
		script     []func(context.Context, llm.Request) (llm.Response, error)
		noLLM      bool // the user has no LLM settings
		input      TriggerInput
		wantStatus string
		wantError  string // substring
		wantSteps  []string
		wantOut    []string // step outputs ("*" = anything)
		check      func(t *testing.T, h *harness, inst Instance, calls *callLog)
	}
	llmStep := func(name, prompt string) Step { return Step{Name: name, Kind: KindLLM, SystemPrompt: prompt} }
	toolStep := func(name, tool, args string) Step {
		return Step{Name: name, Kind: KindTool, Tool: tool, Arguments: json.RawMessage(args)}
	}
	checker := func(ref, mode string, values ...string) Step {
		return Step{Name: "check", Kind: KindStopChecker, StepToCheck: ref, Mode: mode, MatchValues: values}
	}
	gated := func(steps ...Step) Workflow {
		return Workflow{Name: "gated", Trigger: &Trigger{Type: TriggerNewEmail, TriggerPrompt: "Only quote requests from customers. Today is <<CURRENT_DATE>>."}, Steps: steps}
	}
	mail := TriggerInput{Markdown: "# Need a quote\nPrice for 10 widgets?", Email: testEmail}
	cases := []tc{
		{
			name: "llm then tool",
			workflow: Workflow{Name: "ok", Steps: []Step{
				llmStep("classify", "Classify mail from <<trigger.from>>."),
				toolStep("label", "t-echo", `{"id":"<<trigger.message_id>>","label":"<<step_output.classify>>","n":2}`),
			}},
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer("quote <<trigger_output>>", usage(10, 2))},
			input:      mail,
			wantStatus: StatusCompleted,
			wantSteps:  []string{StepCompleted, StepCompleted},
			wantOut:    []string{"quote <<trigger_output>>", `{"id":"<m1@example.com>","label":"quote <<trigger_output>>","n":2}`},
			check: func(t *testing.T, h *harness, inst Instance, calls *callLog) {
				req := h.llm.Requests()[0]
				if req.Model != "test-model" || req.Endpoint.APIKey != "sk-test" || len(req.Messages) != 2 ||
					req.Messages[0].Content != "Classify mail from Ann <ann@customer.com>." || req.Messages[1].Content != mail.Markdown {
					t.Errorf("llm request %+v", req)
				}
				c := calls.last("t-echo")
				if c.User != inst.UserID || c.WorkflowID != inst.WorkflowID || c.InstanceID != inst.ID || c.StepID != inst.Steps[1].StepID {
					t.Errorf("tool call ids %+v", c)
				}
				if inst.Steps[0].Usage != usage(10, 2) || inst.Steps[0].Input != "Classify mail from Ann <ann@customer.com>." {
					t.Errorf("step run %+v", inst.Steps[0])
				}
				rows := h.logs.byInstance(inst.ID)
				if len(rows) != 3 || rows[0].LogType != logs.TypeWorkflow || rows[1].LogType != logs.TypeCustomLLM || rows[2].LogType != logs.TypeTool {
					t.Fatalf("log rows %+v", rows)
				}
				wf := rows[0]
				if wf.ID != inst.LogID || wf.TotalTokens != 12 || wf.EndTime.IsZero() || wf.ReferenceString != "Need a quote" || wf.WorkflowName != "ok" {
					t.Errorf("workflow row %+v", wf)
				}
				if r := rows[1]; r.StepInstanceID != inst.Steps[0].ID || r.StepID != inst.Steps[0].StepID || r.Model != "test-model" ||
					r.PromptTokens != 10 || r.CompletionTokens != 2 || r.EndTime.IsZero() || !strings.Contains(string(r.Messages), `"role":"assistant"`) {
					t.Errorf("llm row %+v", r)
				}
			},
		},
		{
			name:       "failing tool fails the run",
			workflow:   Workflow{Name: "fail", Steps: []Step{toolStep("label", "t-fail", `{}`), llmStep("never", "x")}},
			input:      mail,
			wantStatus: StatusFailed,
			wantError:  `step "label" failed: tool t-fail answered with an error: no such message`,
			wantSteps:  []string{StepFailed, StepSkipped},
			check: func(t *testing.T, h *harness, inst Instance, _ *callLog) {
				if n := len(h.llm.Requests()); n != 0 {
					t.Errorf("%d llm calls after a failed step", n)
				}
				if inst.Steps[0].Error == "" {
					t.Errorf("no step error")
				}
			},
		},
		{
			name:       "tool transport error fails the run",
			workflow:   Workflow{Name: "broken", Steps: []Step{toolStep("label", "t-broken", `{}`)}},
			wantStatus: StatusFailed,
			wantError:  "plugin crashed",
			wantSteps:  []string{StepFailed},
		},
		{
			name:       "unknown tool fails the run",
			workflow:   Workflow{Name: "unknown", Steps: []Step{toolStep("label", "t-missing", `{}`)}},
			wantStatus: StatusFailed,
			wantError:  "unknown tool",
			wantSteps:  []string{StepFailed},
		},
		{
			name:     "llm error fails the run",
			workflow: Workflow{Name: "llm error", Steps: []Step{llmStep("a", "x"), llmStep("b", "y")}},
			script: []func(context.Context, llm.Request) (llm.Response, error){func(context.Context, llm.Request) (llm.Response, error) {
				return llm.Response{}, errors.New("429 too many")
			}},
			wantStatus: StatusFailed,
			wantError:  "429 too many",
			wantSteps:  []string{StepFailed, StepSkipped},
		},
		{
			name:       "no LLM configured",
			workflow:   Workflow{Name: "no llm", Steps: []Step{llmStep("a", "x")}},
			noLLM:      true,
			wantStatus: StatusFailed,
			wantError:  "no LLM configured: set llm_model/llm_api_key in settings",
			wantSteps:  []string{StepFailed},
		},
		{
			name:       "stop_if_output_contains stops",
			workflow:   Workflow{Name: "stop", Steps: []Step{llmStep("classify", "x"), checker("classify", StopIfOutputContains, "not a quote", "spam"), toolStep("label", "t-echo", `{}`)}},
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer("This is SPAM.", usage(1, 1))},
			wantStatus: StatusStopped,
			wantError:  `contains "spam"`,
			wantSteps:  []string{StepCompleted, StepCompleted, StepSkipped},
			check: func(t *testing.T, h *harness, inst Instance, calls *callLog) {
				if n := calls.countFor("t-echo", inst.ID); n != 0 {
					t.Errorf("tool ran after the stop")
				}
				rows := h.logs.byInstance(inst.ID)
				if len(rows) != 3 || rows[2].LogType != logs.TypeStopChecker {
					t.Errorf("log rows %+v", rows)
				}
			},
		},
		{
			name:       "stop_if_output_contains continues",
			workflow:   Workflow{Name: "go on", Steps: []Step{llmStep("classify", "x"), checker("classify", StopIfOutputContains, "spam"), toolStep("label", "t-echo", `{}`)}},
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer("a quote", usage(1, 1))},
			wantStatus: StatusCompleted,
			wantSteps:  []string{StepCompleted, StepCompleted, StepCompleted},
		},
		{
			name:       "continue_if_output_contains stops without a match",
			workflow:   Workflow{Name: "cont", Steps: []Step{llmStep("classify", "x"), checker("classify", ContinueIfOutputContains, "yes"), toolStep("label", "t-echo", `{}`)}},
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer("No", usage(1, 1))},
			wantStatus: StatusStopped,
			wantError:  `contains none of ["yes"]`,
			wantSteps:  []string{StepCompleted, StepCompleted, StepSkipped},
		},
		{
			name:       "continue_if_output_contains continues on a match",
			workflow:   Workflow{Name: "cont2", Steps: []Step{llmStep("classify", "x"), checker("classify", ContinueIfOutputContains, "yes"), toolStep("label", "t-echo", `{}`)}},
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer("YES!", usage(1, 1))},
			wantStatus: StatusCompleted,
			wantSteps:  []string{StepCompleted, StepCompleted, StepCompleted},
		},
		{
			name:       "gate says no",
			workflow:   gated(toolStep("label", "t-echo", `{}`)),
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer("```json\n{\"continue_processing\": false, \"reason\": \"not a customer\"}\n```", usage(5, 1))},
			input:      mail,
			wantStatus: StatusSkipped,
			wantError:  "not a customer",
			wantSteps:  []string{StepSkipped},
			check: func(t *testing.T, h *harness, inst Instance, calls *callLog) {
				req := h.llm.Requests()[0]
				if !req.JSONObject || !strings.HasPrefix(req.Messages[0].Content, "Only quote requests from customers. Today is 20") ||
					!strings.Contains(req.Messages[0].Content, "continue_processing") || req.Messages[1].Content != mail.Markdown {
					t.Errorf("gate request %+v", req)
				}
				if calls.countFor("t-echo", inst.ID) != 0 {
					t.Errorf("a step ran after the gate said no")
				}
				rows := h.logs.byInstance(inst.ID)
				if len(rows) != 2 || rows[1].LogType != logs.TypeTriggerCheck || rows[1].TotalTokens != 6 || !strings.Contains(string(rows[1].Messages), "not a customer") {
					t.Errorf("log rows %+v", rows)
				}
				if rows[0].TotalTokens != 6 {
					t.Errorf("workflow row tokens %d", rows[0].TotalTokens)
				}
			},
		},
		{
			name:       "gate says yes",
			workflow:   gated(toolStep("label", "t-echo", `{}`)),
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer(`{"continue_processing": "true", "reason": "customer"}`, usage(5, 1))},
			input:      mail,
			wantStatus: StatusCompleted,
			wantSteps:  []string{StepCompleted},
		},
		{
			name:       "gate answer unreadable",
			workflow:   gated(toolStep("label", "t-echo", `{}`)),
			script:     []func(context.Context, llm.Request) (llm.Response, error){answer(`maybe`, usage(5, 1))},
			input:      mail,
			wantStatus: StatusFailed,
			wantError:  "trigger check: the model's answer is not a JSON object",
			wantSteps:  []string{StepSkipped},
		},
		{
			name:       "no gate without an email",
			workflow:   gated(toolStep("label", "t-echo", `{}`)),
			input:      TriggerInput{Markdown: "manual text"},
			wantStatus: StatusCompleted,
			wantSteps:  []string{StepCompleted},
			check: func(t *testing.T, h *harness, _ Instance, _ *callLog) {
				if n := len(h.llm.Requests()); n != 0 {
					t.Errorf("%d llm calls", n)
				}
			},
		},
		{
			name:       "no steps",
			workflow:   Workflow{Name: "empty"},
			wantStatus: StatusCompleted,
			wantSteps:  []string{},
		},
	}
	forEachBackend(t, func(t *testing.T, _ string, db *sqldb.DB) {
		h := newHarness(t, db)
		calls := &callLog{}
		addTestTools(h, calls)
		user := newUser(t, db)
		start(t, h.runner(nil))
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				h.llm.mu.Lock()
				h.llm.script, h.llm.requests, h.llm.fallback = c.script, nil, nil
				h.llm.mu.Unlock()
				if c.noLLM {
					h.settings.set(user, settings.Settings{Timezone: "Europe/Amsterdam"})
					defer h.settings.set(user, h.settings.def)
				}
				w := h.create(user, c.workflow)
				inst := h.waitFinished(user, h.enqueue(user, w.ID, c.input).ID)
				if inst.Status != c.wantStatus || !strings.Contains(inst.Error, c.wantError) || (c.wantError == "" && inst.Error != "") {
					t.Errorf("status %s error %q; want %s %q", inst.Status, inst.Error, c.wantStatus, c.wantError)
				}
				if got := stepStatuses(inst); fmt.Sprint(got) != fmt.Sprint(c.wantSteps) {
					t.Errorf("step statuses %v, want %v", got, c.wantSteps)
				}
				for i, want := range c.wantOut {
					if want != "*" && inst.Steps[i].Output != want {
						t.Errorf("steps[%d] output %q, want %q", i, inst.Steps[i].Output, want)
					}
				}
				if inst.FinishedAt.IsZero() || inst.StartedAt.IsZero() || inst.Attempts != 1 {
					t.Errorf("timings/attempts %+v", inst)
				}
				if c.check != nil {
					c.check(t, h, inst, calls)
				}
			})
		}
	})
}

func TestRunnerAgent(t *testing.T) {
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	user := newUser(t, db)
	calls := &callLog{}
	var (
		inFlight, maxInFlight atomic.Int32
		release               = make(chan struct{})
	)
	for _, name := range []string{"imap-get_thread", "imap-set_label", "imap-draft_reply", "imap-slow", "tone-get_profile"} {
		h.tools.Add(tools.Spec{Name: name, Description: "the " + name + " tool", InputSchema: json.RawMessage(`{"type":"object","properties":{"id":{"type":"string"}}}`)},
			func(ctx context.Context, c tools.Call) (tools.Result, error) {
				calls.add(c)
				if c.Tool == "imap-slow" { // held until 5 run at once
					n := inFlight.Add(1)
					defer inFlight.Add(-1)
					for {
						m := maxInFlight.Load()
						if n <= m || maxInFlight.CompareAndSwap(m, n) {
							break
						}
					}
					if n == MaxToolCallsPerTurn {
						close(release)
					}
					select {
					case <-release:
					case <-time.After(5 * time.Second):
					case <-ctx.Done():
						return tools.Result{}, ctx.Err()
					}
				}
				return textResult(c.Tool + " result for " + string(c.Arguments)), nil
			})
	}
	start(t, h.runner(func(c *RunnerConfig) { c.Workers = 1 }))
	agent := func(maxCycles int, enabled ...string) Workflow {
		return Workflow{Name: "agent", Steps: []Step{{Name: "reply", Kind: KindAgent, Model: "agent-model", SystemPrompt: "Draft a reply to <<trigger.from>>.", Tools: enabled, MaxCycles: maxCycles}}}
	}
	tc := func(id, name, args string) llm.ToolCall {
		return llm.ToolCall{ID: id, Name: name, Arguments: json.RawMessage(args)}
	}

	t.Run("two tools, then one, then the answer", func(t *testing.T) {
		h.llm.script = []func(context.Context, llm.Request) (llm.Response, error){
			askTools(usage(100, 10), tc("c1", "imap-get_thread", `{"id":"m1"}`), tc("c2", "tone-get_profile", `{}`)),
			askTools(usage(200, 20), tc("c3", "imap-draft_reply", `{"id":"m1","body":"hi"}`)),
			answer("Drafted the reply.", usage(300, 30)),
		}
		w := h.create(user, agent(0, "imap-get_thread", "tone-get_profile", "imap-draft_reply"))
		inst := h.waitFinished(user, h.enqueue(user, w.ID, TriggerInput{Markdown: "# thread", Email: testEmail}).ID)
		if inst.Status != StatusCompleted || inst.Steps[0].Output != "Drafted the reply." {
			t.Fatalf("instance %+v", inst)
		}
		for _, n := range []string{"imap-get_thread", "tone-get_profile", "imap-draft_reply"} {
			if calls.count(n) != 1 {
				t.Errorf("%s called %d times", n, calls.count(n))
			}
			if c := calls.last(n); c.User != user || c.InstanceID != inst.ID || c.WorkflowID != w.ID || c.StepID != w.Steps[0].ID {
				t.Errorf("%s call ids %+v", n, c)
			}
		}
		reqs := h.llm.Requests()
		if len(reqs) != 3 || len(reqs[0].Tools) != 3 || reqs[0].Model != "agent-model" || reqs[0].Tools[0].Name != "imap-get_thread" ||
			string(reqs[0].Tools[0].Parameters) != `{"type":"object","properties":{"id":{"type":"string"}}}` {
			t.Fatalf("requests %+v", reqs)
		}
		// The second request carries both tool results, in call order.
		m := reqs[1].Messages
		if len(m) != 5 || m[2].Role != llm.RoleAssistant || len(m[2].ToolCalls) != 2 ||
			m[3].Role != llm.RoleTool || m[3].ToolCallID != "c1" || m[3].Content != `imap-get_thread result for {"id":"m1"}` ||
			m[4].ToolCallID != "c2" || m[4].Name != "tone-get_profile" {
			t.Errorf("second request messages %+v", m)
		}
		rows := h.logs.byInstance(inst.ID)
		if len(rows) != 2 || rows[1].LogType != logs.TypeCustomAgent {
			t.Fatalf("log rows %+v", rows)
		}
		row := rows[1]
		var msgs []llm.Message
		if err := json.Unmarshal(row.Messages, &msgs); err != nil {
			t.Fatal(err)
		}
		roles := []string{}
		for _, m := range msgs {
			roles = append(roles, m.Role)
		}
		if want := "[system user assistant tool tool assistant tool assistant]"; fmt.Sprint(roles) != want {
			t.Errorf("logged roles %v, want %s", roles, want)
		}
		if msgs[0].Content != "Draft a reply to Ann <ann@customer.com>." || len(msgs[2].ToolCalls) != 2 || msgs[2].ToolCalls[1].Name != "tone-get_profile" ||
			msgs[6].ToolCallID != "c3" || !strings.Contains(msgs[6].Content, "imap-draft_reply result") || msgs[7].Content != "Drafted the reply." {
			t.Errorf("logged conversation %+v", msgs)
		}
		if row.PromptTokens != 600 || row.CompletionTokens != 60 || row.TotalTokens != 660 || row.Model != "agent-model" || row.StepName != "reply" {
			t.Errorf("agent row %+v", row)
		}
		if inst.Steps[0].Usage.TotalTokens != 660 || rows[0].TotalTokens != 660 {
			t.Errorf("step usage %+v, workflow row %d", inst.Steps[0].Usage, rows[0].TotalTokens)
		}
	})

	t.Run("more than 5 calls in one turn", func(t *testing.T) {
		var seven []llm.ToolCall
		for i := range 7 {
			seven = append(seven, tc(fmt.Sprintf("s%d", i), "imap-slow", fmt.Sprintf(`{"i":%d}`, i)))
		}
		h.llm.script = []func(context.Context, llm.Request) (llm.Response, error){askTools(usage(1, 1), seven...), answer("ok", usage(1, 1))}
		w := h.create(user, agent(0, "imap-slow"))
		inst := h.waitFinished(user, h.enqueue(user, w.ID, TriggerInput{Markdown: "x"}).ID)
		if inst.Status != StatusCompleted {
			t.Fatalf("instance %+v", inst)
		}
		if n := calls.count("imap-slow"); n != 5 {
			t.Errorf("imap-slow ran %d times, want 5", n)
		}
		if m := maxInFlight.Load(); m != MaxToolCallsPerTurn {
			t.Errorf("at most %d calls ran at once, want %d", m, MaxToolCallsPerTurn)
		}
		m := h.llm.Requests()[len(h.llm.Requests())-1].Messages
		if len(m) != 10 {
			t.Fatalf("%d messages", len(m))
		}
		for i := 3; i < 10; i++ {
			tooMany := strings.Contains(m[i].Content, "too many tool calls")
			if m[i].ToolCallID != fmt.Sprintf("s%d", i-3) || tooMany != (i >= 8) {
				t.Errorf("answer %d: %+v", i-3, m[i])
			}
		}
	})

	t.Run("disabled tool and bad arguments are answered with errors", func(t *testing.T) {
		h.llm.script = []func(context.Context, llm.Request) (llm.Response, error){
			askTools(usage(1, 1), tc("x1", "imap-set_label", `{}`), tc("x2", "imap-get_thread", `not json`)),
			answer("gave up", usage(1, 1)),
		}
		before := calls.count("imap-set_label")
		w := h.create(user, agent(0, "imap-get_thread"))
		inst := h.waitFinished(user, h.enqueue(user, w.ID, TriggerInput{Markdown: "x"}).ID)
		m := h.llm.Requests()[len(h.llm.Requests())-1].Messages
		if inst.Status != StatusCompleted || calls.count("imap-set_label") != before ||
			!strings.Contains(m[3].Content, "not enabled") || !strings.Contains(m[4].Content, "not a JSON object") {
			t.Errorf("instance %+v, messages %+v", inst, m)
		}
	})

	t.Run("max_cycles exceeded fails the step", func(t *testing.T) {
		h.llm.script = nil
		h.llm.fallback = askTools(usage(1, 1), tc("loop", "imap-get_thread", `{}`))
		defer func() { h.llm.fallback = nil }()
		n0 := len(h.llm.Requests())
		w := h.create(user, agent(2, "imap-get_thread"))
		inst := h.waitFinished(user, h.enqueue(user, w.ID, TriggerInput{Markdown: "x"}).ID)
		if inst.Status != StatusFailed || !strings.Contains(inst.Error, "max_cycles (2") || inst.Steps[0].Status != StepFailed {
			t.Errorf("instance %+v", inst)
		}
		if n := len(h.llm.Requests()) - n0; n != 2 {
			t.Errorf("%d model turns, want 2", n)
		}
	})

	t.Run("unavailable tool fails the step", func(t *testing.T) {
		w := h.create(user, agent(0, "ghost-tool"))
		inst := h.waitFinished(user, h.enqueue(user, w.ID, TriggerInput{Markdown: "x"}).ID)
		if inst.Status != StatusFailed || !strings.Contains(inst.Error, `tool "ghost-tool" is not available`) {
			t.Errorf("instance %+v", inst)
		}
	})
}

// blockingTool registers name: it signals entered, then blocks until its
// context ends (or unblock is closed), counting calls.
type blockingTool struct {
	calls   atomic.Int32
	entered chan string // instance ids
	unblock chan struct{}
}

func newBlockingTool(h *harness, name string) *blockingTool {
	b := &blockingTool{entered: make(chan string, 10), unblock: make(chan struct{})}
	h.tools.Add(tools.Spec{Name: name}, func(ctx context.Context, c tools.Call) (tools.Result, error) {
		b.calls.Add(1)
		b.entered <- c.InstanceID
		select {
		case <-ctx.Done():
			return tools.Result{}, ctx.Err()
		case <-b.unblock:
			return textResult("unblocked"), nil
		}
	})
	return b
}

func threeSteps() Workflow {
	return Workflow{Name: "three", Steps: []Step{
		{Name: "first", Kind: KindTool, Tool: "t-count", Arguments: json.RawMessage(`{}`)},
		{Name: "second", Kind: KindTool, Tool: "t-block", Arguments: json.RawMessage(`{"prev":"<<step_output.first>>"}`)},
		{Name: "third", Kind: KindTool, Tool: "t-count3", Arguments: json.RawMessage(`{"prev":"<<step_output.second>>"}`)},
	}}
}

func TestRunnerResume(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string, db *sqldb.DB) {
		h := newHarness(t, db)
		user := newUser(t, db)
		var first, third atomic.Int32
		h.tools.Add(tools.Spec{Name: "t-count"}, func(context.Context, tools.Call) (tools.Result, error) {
			first.Add(1)
			return textResult("one"), nil
		})
		h.tools.Add(tools.Spec{Name: "t-count3"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
			third.Add(1)
			return tools.Result{Content: c.Arguments}, nil
		})
		block := newBlockingTool(h, "t-block")
		w := h.create(user, threeSteps())
		lease := 300 * time.Millisecond

		t.Run("shutdown mid-step, resumed by another process", func(t *testing.T) {
			inst := h.enqueue(user, w.ID, TriggerInput{Markdown: "x"})
			r1 := h.runner(func(c *RunnerConfig) { c.Lease, c.Owner = 5*time.Second, "runner-1" })
			stop1 := start(t, r1)
			<-block.entered
			stop1()
			mid := must[Instance](t)(h.store.GetInstance(context.Background(), user, inst.ID))
			if mid.Status != StatusRunning || fmt.Sprint(stepStatuses(mid)) != "[completed running pending]" || mid.Steps[0].Output != "one" {
				t.Fatalf("after shutdown: %s %v", mid.Status, stepStatuses(mid))
			}
			if c := countRows(t, db, "SELECT COUNT(*) FROM workflow_instances WHERE id = ? AND claimed_by = 'runner-1'", inst.ID); c != 1 {
				t.Errorf("claim not kept at shutdown")
			}
			// A second process (its own pool) resumes it at step 2.
			h2 := *h
			h2.db = openDB(t, url)
			h2.store = NewStore(h2.db)
			close(block.unblock)
			start(t, h2.runner(func(c *RunnerConfig) { c.Lease, c.Owner = 5*time.Second, "runner-2" }))
			done := h.waitFinished(user, inst.ID)
			if done.Status != StatusCompleted || done.Attempts != 2 || !done.StartedAt.Equal(mid.StartedAt) {
				t.Fatalf("resumed run: %+v", done)
			}
			if n := first.Load(); n != 1 {
				t.Errorf("step 1 ran %d times", n)
			}
			if n := block.calls.Load(); n != 2 {
				t.Errorf("step 2 ran %d times, want 2 (interrupted, then resumed)", n)
			}
			if third.Load() != 1 || done.Steps[2].Output != `{"prev":"unblocked"}` {
				t.Errorf("step 3: %d calls, output %q", third.Load(), done.Steps[2].Output)
			}
			rows := h.logs.byInstance(inst.ID)
			wfRows := 0
			for _, r := range rows {
				if r.LogType == logs.TypeWorkflow {
					wfRows++
					if r.EndTime.IsZero() {
						t.Errorf("workflow row not completed")
					}
				}
			}
			if wfRows != 1 {
				t.Errorf("%d workflow rows for one run", wfRows)
			}
		})

		t.Run("crashed runner: resumed after its lease", func(t *testing.T) {
			ctx := context.Background()
			inst := h.enqueue(user, w.ID, TriggerInput{Markdown: "x"})
			// A runner that completed step 1, started step 2, then died without a word.
			claimed, _ := must2(t)(h.store.Claim(ctx, "crashed", lease))
			if claimed == nil || claimed.ID != inst.ID {
				t.Fatalf("claimed %+v", claimed)
			}
			if err := h.store.StartStep(ctx, user, inst.ID, "crashed", 0, "{}"); err != nil {
				t.Fatal(err)
			}
			if err := h.store.FinishStep(ctx, user, inst.ID, "crashed", 0, StepCompleted, "from the crashed runner", "", llm.Usage{}); err != nil {
				t.Fatal(err)
			}
			if err := h.store.StartStep(ctx, user, inst.ID, "crashed", 1, "{}"); err != nil {
				t.Fatal(err)
			}
			before := first.Load()
			t0 := time.Now()
			start(t, h.runner(func(c *RunnerConfig) { c.Lease, c.Owner = 5*time.Second, "runner-3" }))
			done := h.waitFinished(user, inst.ID)
			if time.Since(t0) < lease/2 {
				t.Errorf("resumed before the lease ended")
			}
			if done.Status != StatusCompleted || done.Attempts != 2 || first.Load() != before {
				t.Fatalf("resumed run: %+v (step 1 ran %d more times)", done, first.Load()-before)
			}
			if got := lastInputOfStep2(t, h.db); got != `{"prev":"from the crashed runner"}` {
				t.Errorf("step 2 rendered with %s", got)
			}
		})
	})
}

// lastInputOfStep2 returns the rendered input of the latest run of a step
// at position 1.
func lastInputOfStep2(t *testing.T, db *sqldb.DB) string {
	t.Helper()
	var in string
	if err := db.QueryRowContext(context.Background(), "SELECT input FROM step_runs WHERE position = 1 ORDER BY started_at DESC LIMIT 1").Scan(&in); err != nil {
		t.Fatal(err)
	}
	return in
}

func TestRunnerCancel(t *testing.T) {
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	user := newUser(t, db)
	h.tools.Add(tools.Spec{Name: "t-count"}, func(context.Context, tools.Call) (tools.Result, error) { return textResult("one"), nil })
	h.tools.Add(tools.Spec{Name: "t-count3"}, func(context.Context, tools.Call) (tools.Result, error) { return textResult("three"), nil })
	block := newBlockingTool(h, "t-block")
	w := h.create(user, threeSteps())
	ctx := context.Background()

	queued := h.enqueue(user, w.ID, TriggerInput{Markdown: "x"})
	if c := must[Instance](t)(h.store.RequestCancel(ctx, user, queued.ID)); c.Status != StatusCancelled {
		t.Fatalf("queued cancel: %+v", c)
	}
	inst := h.enqueue(user, w.ID, TriggerInput{Markdown: "x"})
	// The lease is long: the cancel is seen by the cancel-request poll
	// (PollInterval), not only by the lease renewal.
	start(t, h.runner(func(c *RunnerConfig) { c.Lease, c.PollInterval = 30*time.Second, 50*time.Millisecond }))
	if id := <-block.entered; id != inst.ID {
		t.Fatalf("the cancelled instance ran: %s", id)
	}
	t0 := time.Now()
	if c := must[Instance](t)(h.store.RequestCancel(ctx, user, inst.ID)); c.Status != StatusRunning || !c.CancelRequested {
		t.Fatalf("running cancel: %+v", c)
	}
	done := h.waitFinished(user, inst.ID)
	if done.Status != StatusCancelled || fmt.Sprint(stepStatuses(done)) != "[completed cancelled cancelled]" {
		t.Fatalf("cancelled run: %s %v", done.Status, stepStatuses(done))
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("cancel took %s", d)
	}
	if block.calls.Load() != 1 {
		t.Errorf("blocking step ran %d times", block.calls.Load())
	}
}

func TestRunnerStepTimeout(t *testing.T) {
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	user := newUser(t, db)
	newBlockingTool(h, "t-block")
	w := h.create(user, Workflow{Name: "slow", Steps: []Step{{Name: "slow", Kind: KindTool, Tool: "t-block"}}})
	start(t, h.runner(func(c *RunnerConfig) { c.StepTimeout = 200 * time.Millisecond }))
	done := h.waitFinished(user, h.enqueue(user, w.ID, TriggerInput{}).ID)
	if done.Status != StatusFailed || !strings.Contains(done.Error, "step timed out after 200ms") {
		t.Errorf("run %s: %s", done.Status, done.Error)
	}
}

// TestRunnerClaimSafety: two processes (separate pools), 4 workers each,
// 200 queued runs: each runs exactly once, and all complete.
func TestRunnerClaimSafety(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string, db *sqldb.DB) {
		const n = 200
		ctx := context.Background()
		h := newHarness(t, db)
		var (
			mu     sync.Mutex
			counts = map[string]int{}
		)
		h.tools.Add(tools.Spec{Name: "t-once"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
			mu.Lock()
			counts[c.InstanceID]++
			mu.Unlock()
			return textResult("done"), nil
		})
		usersOf := map[string]userid.ID{}
		us := []userid.ID{newUser(t, db), newUser(t, db)}
		var ids []string
		for i, u := range us {
			w := h.create(u, Workflow{Name: fmt.Sprintf("w%d", i), Steps: []Step{{Name: "once", Kind: KindTool, Tool: "t-once"}}})
			for range n / len(us) {
				inst := h.enqueue(u, w.ID, TriggerInput{Markdown: "x"})
				ids = append(ids, inst.ID)
				usersOf[inst.ID] = u
			}
		}
		reg := prometheus.NewRegistry()
		var stops []func()
		for i := range 2 {
			p := *h
			p.db = openDB(t, url)
			p.store = NewStore(p.db)
			r := p.runner(func(c *RunnerConfig) {
				c.Workers, c.Lease, c.Owner = 4, 5*time.Second, fmt.Sprintf("process-%d", i)
				if i == 0 {
					c.Registerer = reg
				}
			})
			stops = append(stops, start(t, r))
		}
		waitFor(t, 40*time.Second, "all runs to finish", func() bool {
			return countRows(t, db, "SELECT COUNT(*) FROM workflow_instances WHERE status IN ('queued', 'running')") == 0
		})
		for _, s := range stops {
			s()
		}
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if counts[id] != 1 {
				t.Errorf("instance %s ran %d times", id, counts[id])
			}
		}
		if len(counts) != n {
			t.Errorf("%d instances ran, want %d", len(counts), n)
		}
		if c := countRows(t, db, "SELECT COUNT(*) FROM workflow_instances WHERE status = 'completed'"); c != n {
			t.Errorf("%d instances completed, want %d", c, n)
		}
		// A reclaim is legitimate when a runner could not renew its lease in
		// time; with PostgreSQL and a 5 s lease it should not happen. SQLite
		// writers of two processes wait on each other's file lock (busy
		// timeout), which under -race can outlast a lease.
		if c := countRows(t, db, "SELECT COUNT(*) FROM workflow_instances WHERE attempts > 1"); c > 0 {
			if db.Dialect == sqldb.Postgres {
				t.Errorf("%d instances were claimed more than once", c)
			} else {
				t.Logf("%d instances were reclaimed after a lease ran out (each still ran once)", c)
			}
		}
		byOwner := countRows(t, db, "SELECT COUNT(*) FROM workflow_instances WHERE claimed_by = 'process-0'")
		t.Logf("process-0 ran %d of %d", byOwner, n)
		inst := must[Instance](t)(h.store.GetInstance(ctx, usersOf[ids[0]], ids[0]))
		if inst.Steps[0].Status != StepCompleted || inst.Steps[0].Output != "done" {
			t.Errorf("step run %+v", inst.Steps[0])
		}
		if got := metricValue(t, reg, "inboxd_workflow_runs_total", "completed"); got != float64(byOwner) {
			t.Errorf("runs_total{completed} = %v, want %d", got, byOwner)
		}
		if got := metricValue(t, reg, "inboxd_worker_pool_queue_depth", "workflow"); got != 0 {
			t.Errorf("queue depth %v", got)
		}
	})
}

// metricValue returns the value of the counter or gauge name in reg whose
// first label has the value label ("" for the only series).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s}", name, label)
	return 0
}

func TestRunnerMetricsRegistration(t *testing.T) {
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	reg := prometheus.NewRegistry()
	// The poller registers the same gauge name with pool="poll".
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "inboxd_worker_pool_queue_depth", Help: "Work waiting for a worker, by pool.", ConstLabels: prometheus.Labels{"pool": "poll"}}))
	h.runner(func(c *RunnerConfig) { c.Registerer = reg })
	if _, err := NewRunner(RunnerConfig{Store: h.store, LLM: h.llm, Tools: h.tools, Logs: h.logs, Settings: h.settings, Registerer: reg}); err == nil {
		t.Errorf("a second runner on one registry registered its metrics")
	}
	if _, err := NewRunner(RunnerConfig{Store: h.store}); err == nil {
		t.Errorf("incomplete config accepted")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	if want := 5 + 12 + 2 + 1; n != want {
		t.Errorf("%d series, want %d", n, want)
	}
}

// TestRunnerResumeDecided: a runner died after a step decided the run's
// end (a stop checker said stop, a step failed) but before it ended the run;
// the next runner ends it the same way without running anything.
func TestRunnerResumeDecided(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	calls := &callLog{}
	addTestTools(h, calls)
	user := newUser(t, db)
	w := h.create(user, Workflow{Name: "decided", Steps: []Step{
		{Name: "classify", Kind: KindLLM, SystemPrompt: "x"},
		{Name: "check", Kind: KindStopChecker, StepToCheck: "classify", Mode: StopIfOutputContains, MatchValues: []string{"spam"}},
		{Name: "label", Kind: KindTool, Tool: "t-echo"},
	}})
	crash := func(outputs ...string) Instance {
		inst := h.enqueue(user, w.ID, TriggerInput{Markdown: "x"})
		claimed, _ := must2(t)(h.store.Claim(ctx, "crashed", 300*time.Millisecond))
		if claimed == nil || claimed.ID != inst.ID {
			t.Fatalf("claimed %+v", claimed)
		}
		for i, out := range outputs {
			status, errMsg := StepCompleted, ""
			if out == "FAIL" {
				status, out, errMsg = StepFailed, "", "the model refused"
			}
			if err := h.store.StartStep(ctx, user, inst.ID, "crashed", i, ""); err != nil {
				t.Fatal(err)
			}
			if err := h.store.FinishStep(ctx, user, inst.ID, "crashed", i, status, out, errMsg, llm.Usage{}); err != nil {
				t.Fatal(err)
			}
		}
		return inst
	}
	stopped := crash("this is SPAM", "stopped: ...")
	failed := crash("FAIL")
	time.Sleep(300 * time.Millisecond) // the crashed runner's lease ends
	start(t, h.runner(nil))
	if got := h.waitFinished(user, stopped.ID); got.Status != StatusStopped || fmt.Sprint(stepStatuses(got)) != "[completed completed skipped]" {
		t.Errorf("stopped run resumed as %s %v", got.Status, stepStatuses(got))
	}
	if got := h.waitFinished(user, failed.ID); got.Status != StatusFailed || got.Error != `step "classify" failed: the model refused` ||
		fmt.Sprint(stepStatuses(got)) != "[failed skipped skipped]" {
		t.Errorf("failed run resumed as %s %q %v", got.Status, got.Error, stepStatuses(got))
	}
	if n := len(h.llm.Requests()); n != 0 || calls.count("t-echo") != 0 {
		t.Errorf("resumed runs ran steps: %d llm calls, %d tool calls", n, calls.count("t-echo"))
	}
}

// TestRunnerGrace: at shutdown a run under way may finish within the grace
// period; without one it is interrupted and left to resume.
func TestRunnerGrace(t *testing.T) {
	for _, tc := range []struct {
		name   string
		grace  time.Duration
		status string
	}{
		{"finishes within the grace period", 5 * time.Second, StatusCompleted},
		{"interrupted without one", 0, StatusRunning},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
			h := newHarness(t, db)
			user := newUser(t, db)
			entered := make(chan struct{}, 1)
			h.tools.Add(tools.Spec{Name: "t-slow"}, func(ctx context.Context, _ tools.Call) (tools.Result, error) {
				entered <- struct{}{}
				select {
				case <-time.After(400 * time.Millisecond):
					return textResult("slow done"), nil
				case <-ctx.Done():
					return tools.Result{}, ctx.Err()
				}
			})
			h.tools.Add(tools.Spec{Name: "t-count"}, func(context.Context, tools.Call) (tools.Result, error) { return textResult("one"), nil })
			w := h.create(user, Workflow{Name: "graceful", Steps: []Step{
				{Name: "slow", Kind: KindTool, Tool: "t-slow", Arguments: json.RawMessage(`{}`)},
				{Name: "after", Kind: KindTool, Tool: "t-count", Arguments: json.RawMessage(`{}`)},
			}})
			stop := start(t, h.runner(func(c *RunnerConfig) { c.Grace = tc.grace }))
			inst := h.enqueue(user, w.ID, TriggerInput{Markdown: "x"})
			<-entered
			stop() // returns once the runner has drained or interrupted
			got := must[Instance](t)(h.store.GetInstance(context.Background(), user, inst.ID))
			if got.Status != tc.status {
				t.Errorf("after shutdown: %s %v, want %s", got.Status, stepStatuses(got), tc.status)
			}
		})
	}
}
