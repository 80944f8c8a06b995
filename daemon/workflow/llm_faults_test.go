package workflow

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/internal/fakellm"
)

// faultKey is the user's provider key: it must show in no error and no log
// row, whatever the provider answers.
const faultKey = "sk-live-FAULT-0123456789abcdefghij"

// TestRunnerLLMFaults runs workflows against the real LLM client and a
// provider (fakellm) answering 429, 5xx or garbage, with the agent log in
// the SQL store. A provider that keeps failing fails the step and the run
// cleanly after a bounded number of retries: the run and the step record
// the provider's error (with the status, without the API key), the log rows
// are completed with the conversation so far, and the tokens and cost of
// the run are those of the completions that succeeded, never of the failed
// attempts. A provider that recovers within the retries does not fail the
// run at all.
func TestRunnerLLMFaults(t *testing.T) {
	const attempts = 3 // the client's MaxRetries is 2
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	calls := &callLog{}
	addTestTools(h, calls)
	store := logs.NewStore(db)
	srv := fakellm.New(t)
	srv.ExpectAPIKey(faultKey)
	client := llm.NewOpenAI(llm.Options{MaxRetries: attempts - 1, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	start(t, h.runner(func(c *RunnerConfig) {
		c.LLM, c.Logs = client, store
		c.StepTimeout = 30 * time.Second
	}))

	llmStep := Step{Name: "classify", Kind: KindLLM, SystemPrompt: "Classify this mail."}
	agentStep := Step{Name: "reply", Kind: KindAgent, SystemPrompt: "Answer the mail.", Tools: []string{"t-echo"}}
	toolStep := Step{Name: "label", Kind: KindTool, Tool: "t-echo", Arguments: json.RawMessage(`{"label":"<<step_output.classify>>"}`)}
	gated := &Trigger{Type: TriggerNewEmail, TriggerPrompt: "Only quote requests."}
	cost := 0.0125

	cases := []struct {
		name     string
		trigger  *Trigger
		steps    []Step
		replies  []fakellm.Reply
		status   string   // of the run
		wantErr  []string // substrings of the run's error
		stepErrs []string // the step runs' errors: "" none, else a substring
		// usage of the step log rows in step order (and of the trigger
		// check row first when gated) and of the run.
		rowUsage []llm.Usage
		runUsage llm.Usage
	}{
		{
			name:     "llm step: 429 every time",
			steps:    []Step{llmStep, toolStep},
			replies:  fakellm.Repeat(attempts, fakellm.Error(429, "Rate limit reached for requests")),
			status:   StatusFailed,
			wantErr:  []string{`step "classify" failed: `, ": 429 Rate limit reached for requests (gave up after 3 attempts)"},
			stepErrs: []string{"429 Rate limit reached for requests", ""},
			rowUsage: []llm.Usage{{}},
		},
		{
			name:     "llm step: 500 every time",
			steps:    []Step{llmStep},
			replies:  fakellm.Repeat(attempts, fakellm.Error(500, "The server had an error")),
			status:   StatusFailed,
			wantErr:  []string{`step "classify" failed: `, ": 500 The server had an error (gave up after 3 attempts)"},
			stepErrs: []string{"500 The server had an error"},
			rowUsage: []llm.Usage{{}},
		},
		{
			name:     "llm step: 502 and 503 from a proxy every time, echoing the key",
			steps:    []Step{llmStep},
			replies:  []fakellm.Reply{fakellm.Raw(502, "text/html", "<html>bad gateway</html>"), fakellm.Error(503, "key "+faultKey+" overloaded"), fakellm.Error(503, "key "+faultKey+" overloaded")},
			status:   StatusFailed,
			wantErr:  []string{": 503 key [redacted] overloaded (gave up after 3 attempts)"},
			stepErrs: []string{"503 key [redacted] overloaded"},
			rowUsage: []llm.Usage{{}},
		},
		{
			name:     "llm step: a body that is not JSON every time",
			steps:    []Step{llmStep},
			replies:  fakellm.Repeat(attempts, fakellm.Garbage("")),
			status:   StatusFailed,
			wantErr:  []string{": invalid response (HTTP 200): ", "(gave up after 3 attempts)"},
			stepErrs: []string{"invalid response (HTTP 200)"},
			rowUsage: []llm.Usage{{}},
		},
		{
			name:     "llm step: a completion cut short every time",
			steps:    []Step{llmStep},
			replies:  fakellm.Repeat(attempts, fakellm.Text("label: quote").Truncated()),
			status:   StatusFailed,
			wantErr:  []string{": invalid response (HTTP 200): ", "(gave up after 3 attempts)"},
			stepErrs: []string{"invalid response (HTTP 200)"},
			rowUsage: []llm.Usage{{}},
		},
		{
			name:  "llm step: no choices every time (usage reported)",
			steps: []Step{llmStep},
			replies: fakellm.Repeat(attempts, fakellm.Raw(200, "application/json",
				`{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":90,"completion_tokens":0,"total_tokens":90}}`)),
			status:   StatusFailed,
			wantErr:  []string{": invalid response: no choices (gave up after 3 attempts)"},
			stepErrs: []string{"invalid response: no choices"},
			rowUsage: []llm.Usage{{}},
		},
		{
			name:  "llm step: JSON of the wrong shape every time",
			steps: []Step{llmStep},
			replies: fakellm.Repeat(attempts, fakellm.Raw(200, "application/json",
				`{"id":"x","object":"chat.completion","choices":[{"index":0,"text":"legacy completion"}]}`)),
			status:   StatusFailed,
			wantErr:  []string{": invalid response: the choice has no message object (gave up after 3 attempts)"},
			stepErrs: []string{"the choice has no message object"},
			rowUsage: []llm.Usage{{}},
		},
		{
			name:  "llm step: 429 with Retry-After, garbage, then an answer",
			steps: []Step{llmStep, toolStep},
			replies: []fakellm.Reply{
				fakellm.Error(429, "slow down").WithRetryAfter("1"), fakellm.Garbage("<html>"),
				fakellm.Text("quote").WithUsage(40, 2).WithCost(cost),
			},
			status:   StatusCompleted,
			stepErrs: []string{"", ""},
			rowUsage: []llm.Usage{{PromptTokens: 40, CompletionTokens: 2, TotalTokens: 42, Cost: cost}, {}},
			runUsage: llm.Usage{PromptTokens: 40, CompletionTokens: 2, TotalTokens: 42, Cost: cost},
		},
		{
			name:  "agent step: a tool turn, then 503 every time",
			steps: []Step{agentStep},
			replies: append([]fakellm.Reply{
				fakellm.CallTools(fakellm.Call("t-echo", `{"q":"price"}`)).WithUsage(100, 10).WithCost(cost),
			}, fakellm.Repeat(attempts, fakellm.Error(503, "upstream overloaded"))...),
			status:   StatusFailed,
			wantErr:  []string{`step "reply" failed: `, ": 503 upstream overloaded (gave up after 3 attempts)"},
			stepErrs: []string{"503 upstream overloaded"},
			rowUsage: []llm.Usage{{PromptTokens: 100, CompletionTokens: 10, TotalTokens: 110, Cost: cost}},
			runUsage: llm.Usage{PromptTokens: 100, CompletionTokens: 10, TotalTokens: 110, Cost: cost},
		},
		{
			name:     "trigger check: 500 every time",
			trigger:  gated,
			steps:    []Step{llmStep},
			replies:  fakellm.Repeat(attempts, fakellm.Error(500, "boom")),
			status:   StatusFailed,
			wantErr:  []string{"trigger check: ", ": 500 boom (gave up after 3 attempts)"},
			stepErrs: []string{""}, // never started
			rowUsage: []llm.Usage{{}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			user := newUser(t, db)
			h.settings.set(user, settings.Settings{LLMBaseURL: srv.URL(), LLMAPIKey: faultKey, LLMModel: "test-model", Timezone: "UTC"})
			before := len(srv.Requests())
			srv.Enqueue(tc.replies...)
			w := h.create(user, Workflow{Name: "faults", Trigger: tc.trigger, Steps: tc.steps})
			in := TriggerInput{Markdown: "# Need a quote\nPrice for 10 widgets?"}
			if tc.trigger != nil {
				in.Email = testEmail
			}
			inst := h.waitFinished(user, h.enqueue(user, w.ID, in).ID)

			if got := len(srv.Requests()) - before; got != len(tc.replies) || srv.Pending() != 0 {
				t.Errorf("%d provider requests, %d replies unused; want %d", got, srv.Pending(), len(tc.replies))
			}
			if inst.Status != tc.status {
				t.Fatalf("status %s (%s), want %s", inst.Status, inst.Error, tc.status)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(inst.Error, want) {
					t.Errorf("run error %q\n does not contain %q", inst.Error, want)
				}
			}
			for i, want := range tc.stepErrs {
				sr := inst.Steps[i]
				switch {
				case want == "" && sr.Error != "":
					t.Errorf("step %d error %q, want none", i, sr.Error)
				case want != "" && (sr.Status != StepFailed || !strings.Contains(sr.Error, want)):
					t.Errorf("step %d: %s %q, want failed with %q", i, sr.Status, sr.Error, want)
				}
			}

			page, err := store.List(context.Background(), user, logs.Filter{InstanceID: inst.ID})
			if err != nil {
				t.Fatal(err)
			}
			rows := page.Items // newest first
			if len(rows) != len(tc.rowUsage)+1 {
				t.Fatalf("%d log rows, want a workflow row and %d more: %+v", len(rows), len(tc.rowUsage), rows)
			}
			run := rows[len(rows)-1]
			if run.LogType != logs.TypeWorkflow || run.EndTime.IsZero() {
				t.Errorf("workflow row %+v", run)
			}
			if got := rowUsage(run); got != tc.runUsage {
				t.Errorf("workflow row usage %+v, want %+v", got, tc.runUsage)
			}
			// The error is in the log rows: the run's on the workflow row,
			// the provider's on the row of the step (or check) that failed,
			// none on the others.
			wantRunErr := ""
			if tc.status == StatusFailed {
				wantRunErr = inst.Error
			}
			if run.Error != wantRunErr {
				t.Errorf("workflow row error %q, want %q", run.Error, wantRunErr)
			}
			for i, row := range rows[:len(rows)-1] {
				switch failed := i == 0 && tc.status == StatusFailed; {
				case failed && !strings.Contains(row.Error, tc.wantErr[len(tc.wantErr)-1]):
					t.Errorf("the failed %s row's error %q does not contain %q", row.LogType, row.Error, tc.wantErr[len(tc.wantErr)-1])
				case !failed && row.Error != "":
					t.Errorf("%s row error %q, want none", row.LogType, row.Error)
				}
			}
			for i, want := range tc.rowUsage {
				row := rows[len(rows)-2-i]
				if got := rowUsage(row); row.EndTime.IsZero() || got != want {
					t.Errorf("row %d (%s): end %v, usage %+v; want completed with usage %+v", i, row.LogType, row.EndTime, got, want)
				}
				if row.LogType == logs.TypeTool {
					continue
				}
				var msgs []llm.Message
				if err := json.Unmarshal(row.Messages, &msgs); err != nil || len(msgs) < 2 || msgs[0].Role != llm.RoleSystem || row.Model != "test-model" {
					t.Errorf("row %d (%s): model %q, messages %s (%v); want the conversation that was sent", i, row.LogType, row.Model, row.Messages, err)
				}
			}
			// The step's record agrees with its row (the gated run's step
			// never started: no usage, like the trigger check's row).
			if usage := inst.Steps[0].Usage; usage != tc.rowUsage[0] {
				t.Errorf("step run usage %+v, want %+v", usage, tc.rowUsage[0])
			}

			// No copy of the key in anything stored or shown.
			everything, _ := json.Marshal(map[string]any{"instance": inst, "rows": rows})
			if strings.Contains(string(everything), faultKey) {
				t.Errorf("the API key is stored: %s", everything)
			}
		})
	}
}

func rowUsage(e logs.Entry) llm.Usage {
	return llm.Usage{PromptTokens: e.PromptTokens, CompletionTokens: e.CompletionTokens, TotalTokens: e.TotalTokens, Cost: e.TotalCost}
}
