// Package workflow owns users' workflows and their runs: the model (triggers,
// filter rules, steps), templating of prompts, the SQL store of workflows,
// instances and step runs, and the runner that claims queued instances and
// executes their steps durably.
package workflow

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/userid"
)

var (
	// ErrNotFound: no such workflow or instance for this user (another
	// user's object is reported the same way).
	ErrNotFound = errors.New("workflow: not found")

	// ErrLostClaim: the runner no longer holds the instance's claim (its
	// lease expired and another runner took it, or the run ended), so it
	// must stop without writing.
	ErrLostClaim = errors.New("workflow: claim lost")
)

// ValidationError names the part of a workflow that was refused; the API
// answers it with 400.
type ValidationError struct {
	Field   string // e.g. "steps[2].system_prompt", "trigger.cron"
	Message string
}

func (e *ValidationError) Error() string { return "workflow: " + e.Field + ": " + e.Message }

// Trigger types.
const (
	TriggerNewEmail = "new_email"
	TriggerSchedule = "schedule"
)

// Step kinds.
const (
	KindLLM         = "llm"
	KindAgent       = "agent"
	KindTool        = "tool"
	KindStopChecker = "stop_checker"
)

// Stop checker modes.
const (
	StopIfOutputContains     = "stop_if_output_contains"
	ContinueIfOutputContains = "continue_if_output_contains"
)

// DefaultMaxCycles bounds an agent step's model <-> tools loop.
const DefaultMaxCycles = 10

// Workflow is one user's workflow.
type Workflow struct {
	ID          string    `json:"id"`
	UserID      userid.ID `json:"-"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	Active      bool      `json:"active"`
	Trigger     *Trigger  `json:"trigger"` // nil: runs only manually
	Steps       []Step    `json:"steps"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Trigger starts a workflow: on new mail (with filter rules and an optional
// LLM gate) or on a cron schedule in the user's timezone.
type Trigger struct {
	Type          string      `json:"type"`
	FilterRules   FilterRules `json:"filter_rules"`
	TriggerPrompt string      `json:"trigger_prompt,omitempty"`
	TriggerModel  string      `json:"trigger_model,omitempty"`
	Cron          string      `json:"cron,omitempty"` // schedule: 5 fields, or 6 with seconds
}

// FilterRules decide whether a new email starts the workflow: blacklists
// win; each non-empty whitelist must match; case-insensitive.
type FilterRules struct {
	EmailBlacklist  []string `json:"email_blacklist"`
	DomainBlacklist []string `json:"domain_blacklist"`
	EmailWhitelist  []string `json:"email_whitelist"`
	DomainWhitelist []string `json:"domain_whitelist"`
}

// Step is one step; which fields apply depends on Kind.
type Step struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Kind         string          `json:"kind"`
	Model        string          `json:"model,omitempty"`         // llm, agent ("" = the user's llm_model)
	SystemPrompt string          `json:"system_prompt,omitempty"` // llm, agent: a template
	Tools        []string        `json:"tools,omitempty"`         // agent: enabled "{plugin}-{tool}" names
	MaxCycles    int             `json:"max_cycles,omitempty"`    // agent: default DefaultMaxCycles
	Tool         string          `json:"tool,omitempty"`          // tool: "{plugin}-{tool}"
	Arguments    json.RawMessage `json:"arguments,omitempty"`     // tool: JSON object; string values are templates
	StepToCheck  string          `json:"step_to_check,omitempty"` // stop_checker: id (or name) of an earlier step
	Mode         string          `json:"mode,omitempty"`          // stop_checker
	MatchValues  []string        `json:"match_values,omitempty"`  // stop_checker
}

// Instance statuses.
const (
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusCompleted = "completed"
	StatusStopped   = "stopped"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
	StatusSkipped   = "skipped"
)

// Step run statuses.
const (
	StepPending   = "pending"
	StepRunning   = "running"
	StepCompleted = "completed"
	StepFailed    = "failed"
	StepSkipped   = "skipped"
	StepCancelled = "cancelled"
)

// Email is the structured form of the email that triggered a run; every
// field is available to templates as <<trigger.FIELD>>.
type Email struct {
	MessageID string `json:"message_id"`
	From      string `json:"from"`
	To        string `json:"to"`
	Subject   string `json:"subject"`
	Date      string `json:"date"`
	Body      string `json:"body"`
	UID       uint32 `json:"uid,omitempty"`
	Mailbox   string `json:"mailbox,omitempty"`
}

// TriggerInput is what a run starts from: the thread as markdown (the value
// of <<trigger_output>>) and, for email triggers, the email's fields.
type TriggerInput struct {
	Markdown string `json:"markdown"`
	Email    *Email `json:"email,omitempty"`
}

// Instance is one run of a workflow. It keeps a snapshot of the workflow's
// steps as they were when it was created, so an edit never changes a run
// under way.
type Instance struct {
	ID             string       `json:"id"`
	UserID         userid.ID    `json:"-"`
	WorkflowID     string       `json:"workflow_id"`
	WorkflowName   string       `json:"workflow_name"`
	Status         string       `json:"status"`
	Trigger        TriggerInput `json:"trigger"`
	IdempotencyKey string       `json:"idempotency_key,omitempty"`
	Error          string       `json:"error"`
	CreatedAt      time.Time    `json:"created_at"`
	StartedAt      time.Time    `json:"started_at,omitzero"`  // the first claim
	FinishedAt     time.Time    `json:"finished_at,omitzero"` // zero until the run ends
	Steps          []StepRun    `json:"steps"`

	// WorkflowTrigger is the snapshot of the workflow's trigger (for the LLM
	// gate), taken with the steps when the instance was created.
	WorkflowTrigger *Trigger `json:"workflow_trigger,omitempty"`
	// CancelRequested is set by RequestCancel on a running instance; the
	// runner that holds it ends it as cancelled.
	CancelRequested bool `json:"cancel_requested"`
	// Attempts counts claims: more than one means the run was resumed after
	// a crash or a shutdown.
	Attempts int `json:"attempts"`
	// LogID is the id of the run's "workflow" row in the agent log ("" until
	// the first claim wrote it).
	LogID string `json:"log_id,omitempty"`
}

// StepRun is the record of one step of one instance.
type StepRun struct {
	ID         string    `json:"id"` // the step instance id (log rows refer to it)
	StepID     string    `json:"step_id"`
	Position   int       `json:"position"`
	Name       string    `json:"name"`
	Kind       string    `json:"kind"`
	Status     string    `json:"status"`
	Input      string    `json:"input"`
	Output     string    `json:"output"`
	Error      string    `json:"error"`
	Usage      llm.Usage `json:"usage"` // tokens and cost of the step's LLM calls
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}
