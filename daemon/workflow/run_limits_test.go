package workflow

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/tools"
)

// TestRunLimits: a rendered prompt over MaxRenderedPrompt fails its step
// (or the trigger check) with an error naming the limit, before the model
// or tool is called; an output over MaxStepOutput is cut with a marker and
// recorded so, and later steps see the cut output.
func TestRunLimits(t *testing.T) {
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	user := newUser(t, db)
	calls := &callLog{}
	big := func(n int) string { return strings.Repeat("x", n) }
	h.tools.Add(tools.Spec{Name: "t-echo"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
		calls.add(c)
		return tools.Result{Content: c.Arguments}, nil
	})
	h.tools.Add(tools.Spec{Name: "t-big"}, func(_ context.Context, c tools.Call) (tools.Result, error) {
		calls.add(c)
		return textResult(big(MaxStepOutput + 100)), nil
	})
	start(t, h.runner(nil))

	const prompt = "Classify." // the system prompt of llm and agent steps
	atLimit := MaxRenderedPrompt - len(prompt)
	promptLimit := fmt.Sprintf("over the prompt size limit of %d bytes", MaxRenderedPrompt)
	outputMarker := fmt.Sprintf("over the step output limit of %d bytes ...]", MaxStepOutput)
	llmStep := Step{Name: "classify", Kind: KindLLM, SystemPrompt: prompt}
	tests := []struct {
		name       string
		workflow   Workflow
		markdown   string
		script     []func(context.Context, llm.Request) (llm.Response, error)
		wantStatus string
		wantError  string // substring of the run's error
		llmCalls   int
		toolCalls  int
		check      func(t *testing.T, inst Instance)
	}{
		{
			name: "llm prompt at the limit", workflow: Workflow{Steps: []Step{llmStep}}, markdown: big(atLimit),
			script: []func(context.Context, llm.Request) (llm.Response, error){answer("ok", usage(1, 1))}, wantStatus: StatusCompleted, llmCalls: 1,
		},
		{
			name: "llm prompt over the limit", workflow: Workflow{Steps: []Step{llmStep}}, markdown: big(atLimit + 1),
			wantStatus: StatusFailed, wantError: "prompt too large: the rendered system prompt (9 bytes) and the trigger input (1048568 bytes) take 1048577 bytes, " + promptLimit,
		},
		{
			name: "agent prompt over the limit", markdown: big(300000),
			workflow:   Workflow{Steps: []Step{{Name: "reply", Kind: KindAgent, SystemPrompt: strings.Repeat("<<trigger_output>>", 4)}}},
			wantStatus: StatusFailed, wantError: promptLimit,
			check: func(t *testing.T, inst Instance) {
				// The refused prompt is recorded cut, with a marker.
				if in := inst.Steps[0].Input; len(in) > MaxRenderedPrompt+200 || !strings.Contains(in, "over the prompt size limit") {
					t.Errorf("recorded input of %d bytes: ...%q", len(in), in[max(0, len(in)-100):])
				}
			},
		},
		{
			name: "tool arguments over the limit", markdown: big(MaxRenderedPrompt),
			workflow:   Workflow{Steps: []Step{{Name: "label", Kind: KindTool, Tool: "t-echo", Arguments: json.RawMessage(`{"a":"<<trigger_output>>"}`)}}},
			wantStatus: StatusFailed, wantError: "the rendered tool arguments take 1048584 bytes, " + promptLimit,
		},
		{
			name: "trigger check over the limit", markdown: big(MaxRenderedPrompt),
			workflow:   Workflow{Trigger: &Trigger{Type: TriggerNewEmail, TriggerPrompt: "Quotes only."}, Steps: []Step{llmStep}},
			wantStatus: StatusFailed, wantError: "trigger check: prompt too large: the rendered trigger prompt",
		},
		{
			name: "llm output over the limit", markdown: "m",
			workflow: Workflow{Steps: []Step{llmStep, {Name: "echo", Kind: KindTool, Tool: "t-echo", Arguments: json.RawMessage(`{"a":"<<step_output.classify>>"}`)}}},
			script:   []func(context.Context, llm.Request) (llm.Response, error){answer(big(MaxStepOutput+1), usage(1, 1))},
			llmCalls: 1, toolCalls: 1, wantStatus: StatusCompleted,
			check: func(t *testing.T, inst Instance) {
				want := big(MaxStepOutput) + "\n\n[... truncated: 262145 bytes, " + outputMarker
				if inst.Steps[0].Output != want {
					t.Errorf("output of %d bytes, want %d ending in the marker", len(inst.Steps[0].Output), len(want))
				}
				if c := calls.last("t-echo"); !strings.Contains(string(c.Arguments), outputMarker) {
					t.Errorf("the next step saw %d bytes without the marker", len(c.Arguments))
				}
			},
		},
		{
			name: "tool output over the limit", markdown: "m",
			workflow:   Workflow{Steps: []Step{{Name: "big", Kind: KindTool, Tool: "t-big"}}},
			wantStatus: StatusCompleted, toolCalls: 1,
			check: func(t *testing.T, inst Instance) {
				if out := inst.Steps[0].Output; len(out) > MaxStepOutput+200 || !strings.HasSuffix(out, outputMarker) {
					t.Errorf("output of %d bytes: ...%q", len(out), out[max(0, len(out)-100):])
				}
			},
		},
		{
			name: "agent reads a cut tool result", markdown: "m",
			workflow: Workflow{Steps: []Step{{Name: "reply", Kind: KindAgent, SystemPrompt: prompt, Tools: []string{"t-big"}}}},
			script: []func(context.Context, llm.Request) (llm.Response, error){
				askTools(usage(1, 1), llm.ToolCall{ID: "c1", Name: "t-big", Arguments: json.RawMessage(`{}`)}),
				answer("done", usage(1, 1)),
			},
			wantStatus: StatusCompleted, llmCalls: 2, toolCalls: 1,
			check: func(t *testing.T, inst Instance) {
				reqs := h.llm.Requests()
				msgs := reqs[len(reqs)-1].Messages
				if got := msgs[len(msgs)-1]; got.Role != llm.RoleTool || len(got.Content) > MaxStepOutput+200 || !strings.HasSuffix(got.Content, outputMarker) {
					t.Errorf("the model read a tool result of %d bytes", len(got.Content))
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.llm.mu.Lock()
			h.llm.script, h.llm.requests, h.llm.fallback = tt.script, nil, nil
			h.llm.mu.Unlock()
			calls.mu.Lock()
			calls.calls = nil
			calls.mu.Unlock()
			tt.workflow.Name = tt.name
			w := h.create(user, tt.workflow)
			inst := h.waitFinished(user, h.enqueue(user, w.ID, TriggerInput{Markdown: tt.markdown, Email: testEmail}).ID)
			if inst.Status != tt.wantStatus || !strings.Contains(inst.Error, tt.wantError) {
				t.Errorf("status %s, error %q; want %s %q", inst.Status, inst.Error, tt.wantStatus, tt.wantError)
			}
			if n := len(h.llm.Requests()); n != tt.llmCalls {
				t.Errorf("%d model calls, want %d", n, tt.llmCalls)
			}
			calls.mu.Lock()
			n := len(calls.calls)
			calls.mu.Unlock()
			if n != tt.toolCalls {
				t.Errorf("%d tool calls, want %d", n, tt.toolCalls)
			}
			if tt.check != nil {
				tt.check(t, inst)
			}
		})
	}
}

func TestCapText(t *testing.T) {
	tests := []struct {
		in    string
		limit int
		want  string
	}{
		{"short", 5, "short"},
		{"longer", 5, "longe\n\n[... truncated: 6 bytes, over the x limit of 5 bytes ...]"},
		{"ééé", 5, "éé\n\n[... truncated: 6 bytes, over the x limit of 5 bytes ...]"}, // not inside a rune
		{"é", 1, "\n\n[... truncated: 2 bytes, over the x limit of 1 bytes ...]"},
	}
	for _, tt := range tests {
		got, cut := capText(tt.in, tt.limit, "x")
		if got != tt.want || cut != (tt.in != tt.want) {
			t.Errorf("capText(%q, %d) = %q, %v; want %q", tt.in, tt.limit, got, cut, tt.want)
		}
	}
}
