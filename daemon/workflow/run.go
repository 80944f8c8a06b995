package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/logs"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/userid"
)

// Limits of a run.
const (
	// MaxRenderedPrompt caps what a step sends: the rendered system prompt
	// and the trigger input (llm and agent steps, the trigger check), the
	// rendered arguments (tool steps). A step over it fails with an
	// ErrPromptTooLarge, without calling the model or the tool.
	MaxRenderedPrompt = 1 << 20
	// MaxStepOutput caps a step's recorded output (what later steps see as
	// <<step_output.STEP>>) and each tool result an agent reads; a longer
	// one is cut, with a marker saying so.
	MaxStepOutput = 256 << 10
)

// ErrPromptTooLarge: a step's rendered prompt is over MaxRenderedPrompt.
var ErrPromptTooLarge = errors.New("prompt too large")

// checkPromptSize refuses a rendered prompt (what names it) that, with the
// input sent along with it, is over MaxRenderedPrompt.
func checkPromptSize(what, rendered, input string) error {
	n := len(rendered) + len(input)
	switch {
	case n <= MaxRenderedPrompt:
		return nil
	case input == "":
		return fmt.Errorf("%w: the rendered %s take %d bytes, over the prompt size limit of %d bytes",
			ErrPromptTooLarge, what, n, MaxRenderedPrompt)
	}
	return fmt.Errorf("%w: the rendered %s (%d bytes) and the trigger input (%d bytes) take %d bytes, over the prompt size limit of %d bytes",
		ErrPromptTooLarge, what, len(rendered), len(input), n, MaxRenderedPrompt)
}

// capOutput cuts s to MaxStepOutput bytes (on a UTF-8 boundary) and marks
// the cut; it reports whether it cut.
func capOutput(s string) (string, bool) {
	return capText(s, MaxStepOutput, "step output")
}

// capText cuts s to limit bytes and appends a marker naming the limit.
func capText(s string, limit int, what string) (string, bool) {
	if len(s) <= limit {
		return s, false
	}
	n := limit
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + fmt.Sprintf("\n\n[... truncated: %d bytes, over the %s limit of %d bytes ...]", len(s), what, limit), true
}

// run is the state of one claimed instance in this process.
type run struct {
	r     *Runner
	inst  *Instance
	steps []Step
	log   *slog.Logger
	user  userid.ID
	set   settings.Settings
	env   renderEnv
	usage llm.Usage // of the whole run, for the workflow log row
	ref   string    // the log rows' reference_string
}

// stepResult is what a step produced, also when it failed.
type stepResult struct {
	output   string
	usage    llm.Usage
	messages []llm.Message
	model    string
	stop     bool // a stop checker ends the run as stopped
}

// do runs the instance from its first unfinished step. ctx is the run's
// context; parent is the runner's (its end is a shutdown).
func (rn *run) do(ctx, parent context.Context) {
	inst := rn.inst
	rn.ref = referenceString(inst.Trigger)
	for _, sr := range inst.Steps {
		rn.usage = rn.usage.Add(sr.Usage)
	}
	rn.startWorkflowLog(ctx)
	switch {
	case inst.Attempts > rn.r.cfg.MaxAttempts:
		rn.finish(parent, StatusFailed, fmt.Sprintf("gave up after %d attempts: the run was interrupted each time", inst.Attempts-1))
		return
	case inst.CancelRequested:
		rn.finish(parent, StatusCancelled, "cancelled")
		return
	case len(rn.steps) != len(inst.Steps):
		rn.finish(parent, StatusFailed, fmt.Sprintf("internal error: %d steps in the snapshot, %d step runs", len(rn.steps), len(inst.Steps)))
		return
	}
	set, err := rn.r.cfg.Settings.Get(ctx, rn.user)
	if err != nil {
		if ctx.Err() != nil {
			rn.interrupted(ctx, parent, -1)
			return
		}
		rn.finish(parent, StatusFailed, "read settings: "+err.Error())
		return
	}
	rn.set = set
	loc, err := loadZone(set.Timezone)
	if err != nil {
		loc = time.UTC
	}
	rn.env = renderEnv{trigger: inst.Trigger, outputs: map[string]string{}, loc: loc}

	// Resume after the completed steps. A previous runner may have ended
	// a step and died before ending the run: a completed stop checker is
	// decided again (it is a pure function of earlier outputs), a failed or
	// cancelled step ends the run as it would have.
	first := 0
	for first < len(inst.Steps) && inst.Steps[first].Status == StepCompleted {
		if step := rn.steps[first]; step.Kind == KindStopChecker {
			var res stepResult
			if err := rn.execStopChecker(step, &res); err == nil && res.stop {
				rn.finish(parent, StatusStopped, res.output)
				return
			}
		}
		rn.env.outputs[inst.Steps[first].StepID] = inst.Steps[first].Output
		first++
	}
	if first < len(inst.Steps) {
		switch sr := inst.Steps[first]; sr.Status {
		case StepFailed:
			rn.finish(parent, StatusFailed, fmt.Sprintf("step %q failed: %s", sr.Name, sr.Error))
			return
		case StepCancelled:
			rn.finish(parent, StatusCancelled, "cancelled")
			return
		}
	}
	if rn.needsGate() {
		pass, reason, err := rn.gate(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			rn.interrupted(ctx, parent, -1)
			return
		case err != nil:
			rn.finish(parent, StatusFailed, "trigger check: "+err.Error())
			return
		case !pass:
			rn.finish(parent, StatusSkipped, reason)
			return
		}
	}

	for pos := first; pos < len(rn.steps); pos++ {
		cancelRequested, err := rn.r.cfg.Store.CancelRequested(ctx, rn.user, inst.ID, rn.r.cfg.Owner)
		switch {
		case ctx.Err() != nil:
			rn.interrupted(ctx, parent, -1)
			return
		case errors.Is(err, ErrLostClaim):
			rn.log.Warn("workflow: claim lost, stopping the run")
			return
		case err != nil:
			rn.log.Warn("workflow: check for a cancel request", "error", err) // the next write decides
		case cancelRequested:
			rn.finish(parent, StatusCancelled, "cancelled")
			return
		}
		if !rn.runStep(ctx, parent, pos) {
			return
		}
	}
	rn.finish(parent, StatusCompleted, "")
}

// needsGate: the trigger has a prompt, the run has an email, and no step
// has started yet (a resumed run passed the gate before).
func (rn *run) needsGate() bool {
	t := rn.inst.WorkflowTrigger
	if t == nil || t.Type != TriggerNewEmail || strings.TrimSpace(t.TriggerPrompt) == "" || rn.inst.Trigger.Email == nil {
		return false
	}
	for _, sr := range rn.inst.Steps {
		if sr.Status != StepPending {
			return false
		}
	}
	return true
}

// runStep runs the step at pos and records it; it reports whether the run
// goes on to the next step.
func (rn *run) runStep(ctx, parent context.Context, pos int) bool {
	step := rn.steps[pos]
	sr := &rn.inst.Steps[pos]
	log := rn.log.With("step_id", step.ID, "position", pos)
	rn.env.now = rn.r.cfg.Now()
	input, inputErr := rn.stepInput(step)
	input, _ = capText(input, MaxRenderedPrompt, "prompt size") // the record of a refused prompt

	wctx, cancel := writeCtx(parent)
	err := retryWrite(wctx, parent, func() error {
		return rn.r.cfg.Store.StartStep(wctx, rn.user, rn.inst.ID, rn.r.cfg.Owner, pos, input)
	})
	cancel()
	if err != nil {
		rn.storeFailed(log, "start step", err)
		return false
	}
	entry := rn.startStepLog(ctx, step, sr)

	var res stepResult
	if inputErr != nil {
		err = inputErr
	} else {
		stepCtx, cancelStep := context.WithTimeoutCause(ctx, rn.r.cfg.StepTimeout, errStepTimeout)
		err = rn.exec(stepCtx, step, input, &res)
		if err != nil && ctx.Err() == nil && errors.Is(context.Cause(stepCtx), errStepTimeout) {
			err = fmt.Errorf("step timed out after %s", rn.r.cfg.StepTimeout)
		}
		cancelStep()
	}
	rn.usage = rn.usage.Add(res.usage)
	if out, cut := capOutput(res.output); cut {
		log.Info("workflow: step output truncated", "bytes", len(res.output), "limit", MaxStepOutput)
		res.output = out
	}
	if err != nil && ctx.Err() != nil {
		rn.endStepLog(parent, entry, res, "")
		rn.interrupted(ctx, parent, pos)
		return false
	}
	status, errMsg := StepCompleted, ""
	if err != nil {
		status, errMsg = StepFailed, err.Error()
	}
	wctx, cancel = writeCtx(parent)
	err = retryWrite(wctx, parent, func() error {
		return rn.r.cfg.Store.FinishStep(wctx, rn.user, rn.inst.ID, rn.r.cfg.Owner, pos, status, res.output, errMsg, res.usage)
	})
	cancel()
	rn.endStepLog(parent, entry, res, errMsg)
	if err != nil {
		rn.storeFailed(log, "finish step", err)
		return false
	}
	rn.r.m.steps.WithLabelValues(step.Kind, status).Inc()
	log.Debug("workflow: step ended", "status", status, "error", errMsg)
	switch {
	case status == StepFailed:
		rn.finish(parent, StatusFailed, fmt.Sprintf("step %q failed: %s", step.Name, errMsg))
		return false
	case res.stop:
		rn.finish(parent, StatusStopped, res.output)
		return false
	}
	rn.env.outputs[step.ID] = res.output
	return true
}

// storeFailed handles a failed write of the run's state: with the claim
// lost, another runner owns the run; otherwise (the database is away) the
// run stops here and is resumed when its lease ends.
func (rn *run) storeFailed(log *slog.Logger, what string, err error) {
	if errors.Is(err, ErrLostClaim) {
		log.Warn("workflow: claim lost, stopping the run", "during", what)
		return
	}
	log.Error("workflow: "+what+" failed; the run resumes when its lease ends", "error", err)
}

// interrupted ends this process's part of a run whose context ended: a
// requested cancel ends the run (and the step at pos, if any) as cancelled;
// a lost claim leaves it to its new owner; a shutdown leaves it running,
// with the lease ended so that the next runner resumes it at once.
func (rn *run) interrupted(ctx, parent context.Context, pos int) {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errCancelRequested):
		if pos >= 0 {
			wctx, cancel := writeCtx(parent)
			err := rn.r.cfg.Store.FinishStep(wctx, rn.user, rn.inst.ID, rn.r.cfg.Owner, pos, StepCancelled, "", "cancelled", llm.Usage{})
			cancel()
			if err == nil {
				rn.r.m.steps.WithLabelValues(rn.steps[pos].Kind, StepCancelled).Inc()
			}
		}
		rn.finish(parent, StatusCancelled, "cancelled")
	case errors.Is(cause, ErrLostClaim):
		rn.log.Warn("workflow: claim lost, stopping the run")
	default:
		wctx, cancel := writeCtx(parent)
		err := rn.r.cfg.Store.ReleaseClaim(wctx, rn.user, rn.inst.ID, rn.r.cfg.Owner)
		cancel()
		if err != nil {
			rn.log.Warn("workflow: release claim at shutdown", "error", err)
		}
		rn.log.Info("workflow: run interrupted by shutdown; it resumes at its unfinished step")
	}
}

// finish records the end of the run. The workflow log row is completed
// first, so that whoever sees the run finished also sees its totals.
func (rn *run) finish(parent context.Context, status, errMsg string) {
	wctx, cancel := writeCtx(parent)
	defer cancel()
	logErr := ""
	if status == StatusFailed {
		logErr = errMsg // a stopped run's message is the stop checker's output, not an error
	}
	rn.endWorkflowLog(wctx, logErr)
	err := retryWrite(wctx, parent, func() error {
		return rn.r.cfg.Store.FinishInstance(wctx, rn.user, rn.inst.ID, rn.r.cfg.Owner, status, errMsg)
	})
	if err != nil {
		rn.storeFailed(rn.log, "finish run", err)
		return
	}
	rn.r.m.runs.WithLabelValues(status).Inc()
	if !rn.inst.StartedAt.IsZero() {
		rn.r.m.runDuration.Observe(time.Since(rn.inst.StartedAt).Seconds())
	}
	level := slog.LevelDebug
	if status == StatusFailed {
		level = slog.LevelInfo // the user's run failed (a tool, the model): not an error of the daemon
	}
	rn.log.Log(wctx, level, "workflow: run ended", "status", status, "reason", errMsg)
}

// referenceString names the run in the log: the email's subject, else the
// first line of the trigger input.
func referenceString(in TriggerInput) string {
	if in.Email != nil && strings.TrimSpace(in.Email.Subject) != "" {
		return truncateText(strings.TrimSpace(in.Email.Subject), 200)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(in.Markdown), "\n")
	return truncateText(strings.TrimSpace(line), 200)
}

func messagesJSON(msgs []llm.Message) json.RawMessage {
	if msgs == nil {
		msgs = []llm.Message{}
	}
	b, err := marshalJSON(msgs)
	if err != nil {
		return json.RawMessage("[]")
	}
	return b
}

func setUsage(e *logs.Entry, u llm.Usage) {
	e.PromptTokens, e.CompletionTokens, e.TotalTokens, e.TotalCost = u.PromptTokens, u.CompletionTokens, u.TotalTokens, u.Cost
}

// workflowEntry is the run's "workflow" log row (its id is the instance's
// LogID once written).
func (rn *run) workflowEntry() logs.Entry {
	return logs.Entry{
		ID: rn.inst.LogID, UserID: rn.user, ReferenceString: rn.ref, LogType: logs.TypeWorkflow,
		WorkflowID: rn.inst.WorkflowID, WorkflowInstanceID: rn.inst.ID, WorkflowName: rn.inst.WorkflowName,
		Messages:  messagesJSON([]llm.Message{{Role: llm.RoleUser, Content: rn.inst.Trigger.Markdown}}),
		StartTime: rn.inst.StartedAt,
	}
}

// startWorkflowLog writes the run's workflow row at its first claim. Log
// failures never fail a run: they are logged.
func (rn *run) startWorkflowLog(ctx context.Context) {
	if rn.inst.LogID != "" {
		return
	}
	wctx, cancel := writeCtx(ctx)
	defer cancel()
	e, err := rn.r.cfg.Logs.Insert(wctx, rn.user, rn.workflowEntry())
	if err != nil {
		rn.log.Warn("workflow: write workflow log", "error", err)
		return
	}
	if err := rn.r.cfg.Store.SetLogID(wctx, rn.user, rn.inst.ID, rn.r.cfg.Owner, e.ID); err != nil {
		rn.log.Warn("workflow: record workflow log id", "error", err)
	}
	rn.inst.LogID = e.ID
}

// endWorkflowLog completes the workflow row with the end time, the run's
// token totals and, for a failed run, why.
func (rn *run) endWorkflowLog(ctx context.Context, errMsg string) {
	if rn.inst.LogID == "" {
		return
	}
	e := rn.workflowEntry()
	e.EndTime = rn.r.cfg.Now().UTC()
	e.Error = errMsg
	setUsage(&e, rn.usage)
	if err := rn.r.cfg.Logs.Update(ctx, rn.user, e); err != nil {
		rn.log.Warn("workflow: update workflow log", "error", err)
	}
}

func stepLogType(kind string) string {
	switch kind {
	case KindLLM:
		return logs.TypeCustomLLM
	case KindAgent:
		return logs.TypeCustomAgent
	case KindStopChecker:
		return logs.TypeStopChecker
	}
	return logs.TypeTool
}

// startStepLog writes the step's log row as it starts (completed by
// endStepLog), so a long agent step shows in the log while it runs.
func (rn *run) startStepLog(ctx context.Context, step Step, sr *StepRun) logs.Entry {
	e := logs.Entry{
		UserID: rn.user, ReferenceString: rn.ref, LogType: stepLogType(step.Kind),
		WorkflowID: rn.inst.WorkflowID, WorkflowInstanceID: rn.inst.ID, WorkflowName: rn.inst.WorkflowName,
		StepID: step.ID, StepInstanceID: sr.ID, StepName: step.Name,
		Messages: json.RawMessage("[]"), StartTime: rn.r.cfg.Now().UTC(),
	}
	wctx, cancel := writeCtx(ctx)
	defer cancel()
	inserted, err := rn.r.cfg.Logs.Insert(wctx, rn.user, e)
	if err != nil {
		rn.log.Warn("workflow: write step log", "step_id", step.ID, "error", err)
		return e
	}
	return inserted
}

// endStepLog completes the step's row with the conversation, tokens, model
// and the step's error, if it failed (inserting the row if the start failed).
func (rn *run) endStepLog(ctx context.Context, e logs.Entry, res stepResult, errMsg string) {
	e.EndTime = rn.r.cfg.Now().UTC()
	e.Error = errMsg
	e.Messages = messagesJSON(res.messages)
	e.Model = res.model
	setUsage(&e, res.usage)
	wctx, cancel := writeCtx(ctx)
	defer cancel()
	var err error
	if e.ID == "" {
		_, err = rn.r.cfg.Logs.Insert(wctx, rn.user, e)
	} else {
		err = rn.r.cfg.Logs.Update(wctx, rn.user, e)
	}
	if err != nil {
		rn.log.Warn("workflow: write step log", "step_id", e.StepID, "error", err)
	}
}
