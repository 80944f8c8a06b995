// Package logs owns the agent log: the per-user record of every workflow run
// and every step in it (the conversation with the model, tool calls and
// results, tokens, cost), with the views the API serves (list, grouped by
// run, costs, usage of one run) and review feedback. Every function takes
// the user id, and every query filters on it.
package logs

import (
	"encoding/json"
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

// Entry is one row of the agent log.
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
}
