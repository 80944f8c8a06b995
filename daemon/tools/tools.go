// Package tools owns the contract between the workflow engine (and the API)
// and whatever executes tools: the plugin host in production, an in-process
// table in tests. Tools are named "{plugin}-{tool}", and every call carries
// the user and the run it belongs to.
package tools

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/inboxd/inboxd/daemon/userid"
)

// ErrUnknownTool is returned for a tool name no plugin serves.
var ErrUnknownTool = errors.New("tools: unknown tool")

// Spec describes one tool as agents and the API see it.
type Spec struct {
	Name        string          `json:"name"` // "{plugin}-{tool}"
	Description string          `json:"description"`
	InputSchema json.RawMessage `json:"input_schema"` // JSON Schema of the arguments
}

// Call is one invocation, with the context of the run it belongs to.
type Call struct {
	User       userid.ID
	WorkflowID string
	InstanceID string
	StepID     string
	Tool       string          // "{plugin}-{tool}"
	Arguments  json.RawMessage // a JSON object
}

// Result is what a tool answered. IsError marks a tool-level failure the
// model should see (bad arguments, message not found); transport failures
// are returned as errors instead.
type Result struct {
	Content json.RawMessage `json:"content"`
	IsError bool            `json:"is_error"`
}

// Caller executes tools. Implementations must refuse a Call whose User is zero.
type Caller interface {
	// Tools lists the tools available to the user.
	Tools(ctx context.Context, user userid.ID) ([]Spec, error)
	// Call runs one tool as call.User.
	Call(ctx context.Context, call Call) (Result, error)
}

// SplitName splits "{plugin}-{tool}" at the first hyphen.
func SplitName(name string) (plugin, tool string, err error) {
	plugin, tool, ok := strings.Cut(name, "-")
	if !ok || plugin == "" || tool == "" {
		return "", "", fmt.Errorf("tools: %q is not a {plugin}-{tool} name", name)
	}
	return plugin, tool, nil
}

// Func is the handler of an in-process tool.
type Func func(ctx context.Context, call Call) (Result, error)

// Static is an in-process Caller over a fixed table of tools: for tests and
// for built-in tools that need no plugin process.
type Static struct {
	specs map[string]Spec
	funcs map[string]Func
}

// NewStatic returns an empty Static caller.
func NewStatic() *Static {
	return &Static{specs: map[string]Spec{}, funcs: map[string]Func{}}
}

// Add registers a tool; it returns s for chaining.
func (s *Static) Add(spec Spec, f Func) *Static {
	if len(spec.InputSchema) == 0 {
		spec.InputSchema = json.RawMessage(`{"type":"object"}`)
	}
	s.specs[spec.Name] = spec
	s.funcs[spec.Name] = f
	return s
}

// Tools lists the registered tools by name.
func (s *Static) Tools(_ context.Context, user userid.ID) ([]Spec, error) {
	if err := user.Check(); err != nil {
		return nil, err
	}
	out := make([]Spec, 0, len(s.specs))
	for _, sp := range s.specs {
		out = append(out, sp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Call runs a registered tool.
func (s *Static) Call(ctx context.Context, call Call) (Result, error) {
	if err := call.User.Check(); err != nil {
		return Result{}, err
	}
	f, ok := s.funcs[call.Tool]
	if !ok {
		return Result{}, fmt.Errorf("%w: %s", ErrUnknownTool, call.Tool)
	}
	return f(ctx, call)
}
