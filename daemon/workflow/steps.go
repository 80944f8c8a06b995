package workflow

// The step kinds: what llm, agent, tool and stop_checker steps do, and the
// LLM gate of new_email triggers.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/tools"
)

// MaxToolCallsPerTurn is how many tool calls of one model turn an agent step
// runs (concurrently); the model's further calls in that turn are answered
// with an error message asking it to call them again.
const MaxToolCallsPerTurn = 5

// noLLMMessage is the error of a step that needs a model the user has not set.
const noLLMMessage = "no LLM configured: set llm_model/llm_api_key in settings"

// stepInput renders what the step works on: the system prompt (llm,
// agent), the arguments (tool), a description of the check (stop_checker).
// A prompt over MaxRenderedPrompt is returned with an ErrPromptTooLarge.
func (rn *run) stepInput(step Step) (string, error) {
	switch step.Kind {
	case KindLLM, KindAgent:
		prompt := render(step.SystemPrompt, &rn.env)
		return prompt, checkPromptSize("system prompt", prompt, rn.userMessage())
	case KindTool:
		args, err := renderArguments(step.Arguments, &rn.env)
		if err != nil {
			return "", err
		}
		return args, checkPromptSize("tool arguments", args, "")
	case KindStopChecker:
		return fmt.Sprintf("%s %q in the output of step %s", step.Mode, step.MatchValues, step.StepToCheck), nil
	}
	return "", fmt.Errorf("unknown step kind %q", step.Kind)
}

// renderArguments renders every string of a tool step's arguments.
func renderArguments(raw json.RawMessage, env *renderEnv) (string, error) {
	if len(raw) == 0 {
		return "{}", nil
	}
	v, err := decodeJSON(raw)
	if err != nil {
		return "", fmt.Errorf("arguments: %w", err)
	}
	v = mapStrings(v, func(s string) string { return render(s, env) })
	b, err := marshalJSON(v)
	if err != nil {
		return "", fmt.Errorf("arguments: %w", err)
	}
	return string(b), nil
}

func (rn *run) exec(ctx context.Context, step Step, input string, res *stepResult) error {
	switch step.Kind {
	case KindLLM:
		return rn.execLLM(ctx, step, input, res)
	case KindAgent:
		return rn.execAgent(ctx, step, input, res)
	case KindTool:
		return rn.execTool(ctx, step, input, res)
	case KindStopChecker:
		return rn.execStopChecker(step, res)
	}
	return fmt.Errorf("unknown step kind %q", step.Kind)
}

// endpoint picks the model (the step's, else the user's) and the user's
// endpoint.
func (rn *run) endpoint(model string) (string, llm.Endpoint, error) {
	if model == "" {
		model = rn.set.LLMModel
	}
	if model == "" || (rn.set.LLMAPIKey == "" && rn.set.LLMBaseURL == "") {
		return model, llm.Endpoint{}, errors.New(noLLMMessage)
	}
	return model, llm.Endpoint{BaseURL: rn.set.LLMBaseURL, APIKey: rn.set.LLMAPIKey}, nil
}

// userMessage is the user turn of llm and agent steps: the trigger output.
func (rn *run) userMessage() string {
	if strings.TrimSpace(rn.inst.Trigger.Markdown) == "" {
		return "(no input)"
	}
	return rn.inst.Trigger.Markdown
}

func (rn *run) execLLM(ctx context.Context, step Step, prompt string, res *stepResult) error {
	model, ep, err := rn.endpoint(step.Model)
	res.model = model
	res.messages = []llm.Message{{Role: llm.RoleSystem, Content: prompt}, {Role: llm.RoleUser, Content: rn.userMessage()}}
	if err != nil {
		return err
	}
	resp, err := rn.r.cfg.LLM.Chat(ctx, llm.Request{Endpoint: ep, Model: model, Messages: slices.Clip(res.messages)})
	if err != nil {
		return err // the client's error names the model and endpoint
	}
	res.usage = resp.Usage
	msg := resp.Message
	msg.Role = llm.RoleAssistant
	res.messages = append(res.messages, msg)
	res.output = msg.Content
	return nil
}

func (rn *run) execAgent(ctx context.Context, step Step, prompt string, res *stepResult) error {
	model, ep, err := rn.endpoint(step.Model)
	res.model = model
	res.messages = []llm.Message{{Role: llm.RoleSystem, Content: prompt}, {Role: llm.RoleUser, Content: rn.userMessage()}}
	if err != nil {
		return err
	}
	defs, err := rn.toolDefs(ctx, step.Tools)
	if err != nil {
		return err
	}
	enabled := make(map[string]bool, len(step.Tools))
	for _, t := range step.Tools {
		enabled[t] = true
	}
	maxCycles := step.MaxCycles
	if maxCycles <= 0 {
		maxCycles = DefaultMaxCycles
	}
	for cycle := 1; ; cycle++ {
		resp, err := rn.r.cfg.LLM.Chat(ctx, llm.Request{Endpoint: ep, Model: model, Messages: slices.Clip(res.messages), Tools: defs})
		if err != nil {
			return err
		}
		res.usage = res.usage.Add(resp.Usage)
		msg := resp.Message
		msg.Role = llm.RoleAssistant
		res.messages = append(res.messages, msg)
		if len(msg.ToolCalls) == 0 {
			res.output = msg.Content
			return nil
		}
		if cycle >= maxCycles {
			return fmt.Errorf("agent did not finish within max_cycles (%d model turns): the model still asked for tools", maxCycles)
		}
		res.messages = append(res.messages, rn.callTools(ctx, step, msg.ToolCalls, enabled)...)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// toolDefs offers the step's enabled tools to the model; a tool that no
// plugin serves fails the step.
func (rn *run) toolDefs(ctx context.Context, names []string) ([]llm.ToolDef, error) {
	if len(names) == 0 {
		return nil, nil
	}
	specs, err := rn.r.cfg.Tools.Tools(ctx, rn.user)
	if err != nil {
		return nil, fmt.Errorf("list tools: %w", err)
	}
	byName := make(map[string]tools.Spec, len(specs))
	for _, s := range specs {
		byName[s.Name] = s
	}
	defs := make([]llm.ToolDef, 0, len(names))
	for _, n := range names {
		s, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("tool %q is not available (is its plugin installed and running?)", n)
		}
		params := s.InputSchema
		if len(params) == 0 {
			params = json.RawMessage(`{"type":"object"}`)
		}
		defs = append(defs, llm.ToolDef{Name: s.Name, Description: s.Description, Parameters: params})
	}
	return defs, nil
}

// callTools runs the first MaxToolCallsPerTurn calls concurrently and
// answers the others with an error; the answers are in the calls' order.
func (rn *run) callTools(ctx context.Context, step Step, calls []llm.ToolCall, enabled map[string]bool) []llm.Message {
	out := make([]llm.Message, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		if i >= MaxToolCallsPerTurn {
			out[i] = toolMessage(c, fmt.Sprintf("error: too many tool calls in one turn: only the first %d were run; call %s again in your next turn if you still need it",
				MaxToolCallsPerTurn, c.Name))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if p := recover(); p != nil { // a tool must not take the daemon down
					rn.log.Error("workflow: tool call panicked", "tool", c.Name, "panic", p)
					out[i] = toolMessage(c, "error: the tool failed unexpectedly")
				}
			}()
			out[i] = toolMessage(c, rn.callTool(ctx, step, c, enabled))
		}()
	}
	wg.Wait()
	return out
}

// callTool runs one tool call of the model and returns the text the model
// sees: the result, or an error message.
func (rn *run) callTool(ctx context.Context, step Step, c llm.ToolCall, enabled map[string]bool) string {
	if !enabled[c.Name] {
		return fmt.Sprintf("error: tool %q is not enabled for this step", c.Name)
	}
	args := c.Arguments
	if len(strings.TrimSpace(string(args))) == 0 {
		args = json.RawMessage("{}")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(args, &obj); err != nil {
		return "error: the arguments are not a JSON object: " + err.Error()
	}
	result, err := rn.r.cfg.Tools.Call(ctx, tools.Call{
		User: rn.user, WorkflowID: rn.inst.WorkflowID, InstanceID: rn.inst.ID, StepID: step.ID,
		Tool: c.Name, Arguments: args,
	})
	if err != nil {
		return "error: " + err.Error()
	}
	text, _ := capOutput(toolText(result.Content))
	if result.IsError {
		return "error: " + text
	}
	return text
}

func toolMessage(c llm.ToolCall, content string) llm.Message {
	return llm.Message{Role: llm.RoleTool, ToolCallID: c.ID, Name: c.Name, Content: content}
}

// toolText is a tool result as text: a JSON string is unquoted, anything
// else is the JSON itself.
func toolText(content json.RawMessage) string {
	var s string
	if err := json.Unmarshal(content, &s); err == nil {
		return s
	}
	return strings.TrimSpace(string(content))
}

func (rn *run) execTool(ctx context.Context, step Step, args string, res *stepResult) error {
	call := llm.ToolCall{ID: "step-" + step.ID, Name: step.Tool, Arguments: json.RawMessage(args)}
	res.messages = []llm.Message{{Role: llm.RoleAssistant, ToolCalls: []llm.ToolCall{call}}}
	result, err := rn.r.cfg.Tools.Call(ctx, tools.Call{
		User: rn.user, WorkflowID: rn.inst.WorkflowID, InstanceID: rn.inst.ID, StepID: step.ID,
		Tool: step.Tool, Arguments: json.RawMessage(args),
	})
	if err != nil {
		return fmt.Errorf("tool %s: %w", step.Tool, err)
	}
	text, _ := capOutput(toolText(result.Content))
	res.messages = append(res.messages, toolMessage(call, text))
	if result.IsError {
		return fmt.Errorf("tool %s answered with an error: %s", step.Tool, text)
	}
	res.output = text
	return nil
}

func (rn *run) execStopChecker(step Step, res *stepResult) error {
	checked, ok := rn.env.outputs[step.StepToCheck]
	if !ok {
		return fmt.Errorf("step %s has no output to check", step.StepToCheck)
	}
	name := step.StepToCheck
	for _, s := range rn.steps {
		if s.ID == step.StepToCheck {
			name = s.Name
		}
	}
	matched := ""
	lower := strings.ToLower(checked)
	for _, v := range step.MatchValues {
		if strings.Contains(lower, strings.ToLower(v)) {
			matched = v
			break
		}
	}
	switch step.Mode {
	case StopIfOutputContains:
		res.stop = matched != ""
		if res.stop {
			res.output = fmt.Sprintf("stopped: the output of step %q contains %q", name, matched)
		} else {
			res.output = fmt.Sprintf("continued: the output of step %q contains none of %q", name, step.MatchValues)
		}
	case ContinueIfOutputContains:
		res.stop = matched == ""
		if res.stop {
			res.output = fmt.Sprintf("stopped: the output of step %q contains none of %q", name, step.MatchValues)
		} else {
			res.output = fmt.Sprintf("continued: the output of step %q contains %q", name, matched)
		}
	default:
		return fmt.Errorf("unknown stop checker mode %q", step.Mode)
	}
	res.messages = []llm.Message{
		{Role: llm.RoleSystem, Content: fmt.Sprintf("%s %q", step.Mode, step.MatchValues)},
		{Role: llm.RoleUser, Content: checked},
		{Role: llm.RoleAssistant, Content: res.output},
	}
	return nil
}

// gateInstruction follows the trigger prompt in the LLM gate's system message.
const gateInstruction = "\n\nDecide whether the email below should be processed by this workflow. " +
	`Answer with a JSON object only: {"continue_processing": true or false, "reason": "a short reason"}.`

// gate asks the model whether the run should go on (the trigger's LLM gate).
func (rn *run) gate(ctx context.Context) (pass bool, reason string, err error) {
	t := rn.inst.WorkflowTrigger
	rn.env.now = rn.r.cfg.Now()
	entry := logs.Entry{
		UserID: rn.user, ReferenceString: rn.ref, LogType: logs.TypeTriggerCheck,
		WorkflowID: rn.inst.WorkflowID, WorkflowInstanceID: rn.inst.ID, WorkflowName: rn.inst.WorkflowName,
		StepName: "trigger check", StartTime: rn.r.cfg.Now().UTC(),
	}
	var (
		res  stepResult
		resp llm.Response
	)
	defer func() {
		rn.usage = rn.usage.Add(res.usage)
		entry.EndTime = rn.r.cfg.Now().UTC()
		if err != nil {
			entry.Error = err.Error()
		}
		entry.Messages = messagesJSON(res.messages)
		setUsage(&entry, res.usage)
		entry.Model = res.model
		wctx, cancel := writeCtx(ctx)
		defer cancel()
		if _, err := rn.r.cfg.Logs.Insert(wctx, rn.user, entry); err != nil {
			rn.log.Warn("workflow: write trigger check log", "error", err)
		}
	}()
	system := render(t.TriggerPrompt, &rn.env) + gateInstruction
	if err := checkPromptSize("trigger prompt", system, rn.userMessage()); err != nil {
		return false, "", err
	}
	model, ep, err := rn.endpoint(t.TriggerModel)
	res.model = model
	res.messages = []llm.Message{
		{Role: llm.RoleSystem, Content: system},
		{Role: llm.RoleUser, Content: rn.userMessage()},
	}
	if err != nil {
		return false, "", err
	}
	gctx, cancel := context.WithTimeout(ctx, rn.r.cfg.StepTimeout)
	defer cancel()
	resp, err = rn.r.cfg.LLM.Chat(gctx, llm.Request{Endpoint: ep, Model: model, Messages: slices.Clip(res.messages), JSONObject: true})
	if err != nil {
		return false, "", err
	}
	res.usage = resp.Usage
	msg := resp.Message
	msg.Role = llm.RoleAssistant
	res.messages = append(res.messages, msg)
	return parseGateAnswer(msg.Content)
}

// parseGateAnswer reads {"continue_processing": bool, "reason": string},
// leniently: code fences and text around the object are ignored, and the
// boolean may be the string "true" or "false".
func parseGateAnswer(s string) (bool, string, error) {
	i, j := strings.IndexByte(s, '{'), strings.LastIndexByte(s, '}')
	if i < 0 || j < i {
		return false, "", fmt.Errorf("the model's answer is not a JSON object: %q", truncateText(s, 200))
	}
	var ans struct {
		Continue json.RawMessage `json:"continue_processing"`
		Reason   string          `json:"reason"`
	}
	if err := json.Unmarshal([]byte(s[i:j+1]), &ans); err != nil {
		return false, "", fmt.Errorf("the model's answer is not a JSON object: %v", err)
	}
	switch strings.ToLower(strings.Trim(strings.TrimSpace(string(ans.Continue)), `"`)) {
	case "true":
		return true, ans.Reason, nil
	case "false":
		reason := strings.TrimSpace(ans.Reason)
		if reason == "" {
			reason = "the trigger check said no"
		}
		return false, reason, nil
	}
	return false, "", fmt.Errorf("the model's answer has no boolean continue_processing: %q", truncateText(s, 200))
}
