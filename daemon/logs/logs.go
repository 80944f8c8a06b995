// Package logs owns the agent log: the per-user record of every workflow run
// and every step in it (the conversation with the model, tool calls and
// results, tokens, cost), with the views the API serves (list, grouped by
// run, costs, usage of one run) and review feedback. Every function takes
// the user id, and every query filters on it.
package logs

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/inboxd/inboxd/daemon/userid"
)

// Log types (the original's, plus tool and trigger_check).
const (
	TypeWorkflow     = "workflow"      // one row per run: the parent of its step rows
	TypeCustomAgent  = "custom_agent"  // an agent step
	TypeCustomLLM    = "custom_llm"    // an llm step
	TypeStopChecker  = "stop_checker"  // a stop_checker step
	TypeTool         = "tool"          // a direct tool step
	TypeTriggerCheck = "trigger_check" // the LLM gate of a new_email trigger
)

// Entry is one row of the agent log. A run writes one TypeWorkflow row and one
// row per step (and one TypeTriggerCheck row for the LLM gate), all with the
// run's WorkflowInstanceID; the grouped view hangs the step rows under the
// workflow row. Tokens and cost belong to the row whose model calls spent
// them: Costs and Usage add up the non-workflow rows only, so a workflow row
// may carry a summary of its steps without it being counted twice.
//
// Text fields use "" for "none"; EndTime is zero while the run or step is
// going. Messages is JSON (an array of llm.Message-shaped objects); nil is
// stored as [].
type Entry struct {
	ID                 string          `json:"id"`
	UserID             userid.ID       `json:"user_id"`
	ReferenceString    string          `json:"reference_string"`
	LogType            string          `json:"log_type"`
	WorkflowID         string          `json:"workflow_id,omitempty"`
	WorkflowInstanceID string          `json:"workflow_instance_id,omitempty"`
	WorkflowName       string          `json:"workflow_name,omitempty"`
	StepID             string          `json:"step_id,omitempty"`
	StepInstanceID     string          `json:"step_instance_id,omitempty"`
	StepName           string          `json:"step_name,omitempty"`
	Messages           json.RawMessage `json:"messages"` // JSON array of llm.Message-shaped objects
	NeedsReview        bool            `json:"needs_review"`
	Feedback           string          `json:"feedback"`
	StartTime          time.Time       `json:"start_time"`
	EndTime            time.Time       `json:"end_time,omitzero"`
	PromptTokens       int             `json:"prompt_tokens"`
	CompletionTokens   int             `json:"completion_tokens"`
	TotalTokens        int             `json:"total_tokens"`
	TotalCost          float64         `json:"total_cost"`
	Model              string          `json:"model,omitempty"`
	// Error is why the step, trigger check or run failed; empty otherwise.
	Error string `json:"error,omitempty"`
}

var (
	// ErrNotFound: no such row for this user. Another user's row is
	// ErrNotFound too, as is a malformed id.
	ErrNotFound = errors.New("logs: not found")
	// ErrExists: Insert was given an id that is taken.
	ErrExists = errors.New("logs: already exists")
	// ErrInvalid: an argument was refused; the error is an *InvalidError
	// naming it.
	ErrInvalid = errors.New("logs: invalid argument")
)

// InvalidError is a refused argument: Field names it (a Filter or Entry field
// in its query-parameter / JSON spelling, e.g. "log_type", "cursor").
type InvalidError struct {
	Field   string
	Message string
}

func (e *InvalidError) Error() string { return "logs: invalid " + e.Field + ": " + e.Message }

// Is makes errors.Is(err, ErrInvalid) true for an *InvalidError.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// MaxFeedbackLen is the most characters (runes) Review stores as feedback.
const MaxFeedbackLen = 10000

// Page sizes of List and Grouped.
const (
	DefaultLimit = 50
	MaxLimit     = 500
)

// ValidType reports whether t is one of the log types.
func ValidType(t string) bool {
	switch t {
	case TypeWorkflow, TypeCustomAgent, TypeCustomLLM, TypeStopChecker, TypeTool, TypeTriggerCheck:
		return true
	}
	return false
}

// Filter selects rows for List and Grouped (where it applies to the parent
// rows). Zero fields select everything.
type Filter struct {
	LogType     string
	WorkflowID  string
	InstanceID  string // workflow_instance_id
	NeedsReview *bool
	Since       time.Time // start_time >= Since
	Until       time.Time // start_time < Until
	Limit       int       // rows (List) or parents (Grouped) per page: 0 is DefaultLimit, above MaxLimit is MaxLimit
	Cursor      string    // a NextCursor from the previous page with the same filter; "" for the first page
}

// Page is one page of List, newest first. NextCursor is "" on the last page.
type Page struct {
	Items      []Entry `json:"items"`
	NextCursor string  `json:"next_cursor"`
}

// Group is a parent row (a workflow run, or a row that has no run to hang
// under) with its step rows, oldest first. It marshals as the parent's fields
// plus "children".
type Group struct {
	Entry
	Children []Entry `json:"children"`
}

// GroupedPage is one page of Grouped, parents newest first.
type GroupedPage struct {
	Items      []Group `json:"items"`
	NextCursor string  `json:"next_cursor"`
}

// Totals are summed tokens and cost over Rows log rows.
type Totals struct {
	Rows             int64   `json:"rows"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	TotalTokens      int64   `json:"total_tokens"`
	TotalCost        float64 `json:"total_cost"`
}

func (t *Totals) add(o Totals) {
	t.Rows += o.Rows
	t.PromptTokens += o.PromptTokens
	t.CompletionTokens += o.CompletionTokens
	t.TotalTokens += o.TotalTokens
	t.TotalCost += o.TotalCost
}

// ModelCost is the spend of one model ("" for rows without a model).
type ModelCost struct {
	Model string `json:"model"`
	Totals
}

// WorkflowCost is the spend of one workflow; WorkflowName is the name on its
// most recent row.
type WorkflowCost struct {
	WorkflowID   string `json:"workflow_id"`
	WorkflowName string `json:"workflow_name"`
	Totals
}

// DayCost is the spend of one UTC day ("2006-01-02").
type DayCost struct {
	Day string `json:"day"`
	Totals
}

// Costs is the spend of one user over [Since, Until) (zero: unbounded): the
// totals, by model and by workflow (most expensive first), and by day (oldest
// first). Rows without a workflow count in the totals, by model and by day.
type Costs struct {
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	Totals
	ByModel    []ModelCost    `json:"by_model"`
	ByWorkflow []WorkflowCost `json:"by_workflow"`
	ByDay      []DayCost      `json:"by_day"`
}

// StepUsage is one step row of a run (messages left out).
type StepUsage struct {
	ID               string    `json:"id"`
	LogType          string    `json:"log_type"`
	StepID           string    `json:"step_id,omitempty"`
	StepInstanceID   string    `json:"step_instance_id,omitempty"`
	StepName         string    `json:"step_name,omitempty"`
	Model            string    `json:"model,omitempty"`
	StartTime        time.Time `json:"start_time"`
	EndTime          time.Time `json:"end_time,omitzero"`
	PromptTokens     int       `json:"prompt_tokens"`
	CompletionTokens int       `json:"completion_tokens"`
	TotalTokens      int       `json:"total_tokens"`
	TotalCost        float64   `json:"total_cost"`
}

// Usage is the spend of one run: the sums over its step rows, and each of
// them oldest first.
type Usage struct {
	InstanceID   string `json:"instance_id"`
	WorkflowID   string `json:"workflow_id,omitempty"`
	WorkflowName string `json:"workflow_name,omitempty"`
	Totals
	Steps []StepUsage `json:"steps"`
}
