// Package llm owns the conversation with OpenAI-compatible chat-completion
// providers (OpenAI, OpenRouter, Ollama, vLLM ...): requests with tool
// definitions, retries, timeouts, and token accounting. The endpoint (base
// URL, key, model) comes from the calling user's settings, never from a
// global default key.
package llm

import (
	"context"
	"encoding/json"
)

// Roles of a Message.
const (
	RoleSystem    = "system"
	RoleUser      = "user"
	RoleAssistant = "assistant"
	RoleTool      = "tool"
)

// Endpoint is where and as whom a request is sent: the user's own provider.
type Endpoint struct {
	BaseURL string // e.g. https://api.openai.com/v1; "" means the OpenAI default
	APIKey  string // never logged
}

// Message is one turn of a conversation, in the OpenAI chat shape.
type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`   // assistant asking for tools
	ToolCallID string     `json:"tool_call_id,omitempty"` // tool answering one call
	Name       string     `json:"name,omitempty"`         // the tool's name, on tool messages
}

// ToolCall is the model asking to run one tool.
type ToolCall struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"` // a JSON object (as the model wrote it)
}

// ToolDef offers one tool to the model.
type ToolDef struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"` // JSON Schema
}

// Request is one chat completion.
type Request struct {
	Endpoint Endpoint
	Model    string
	Messages []Message
	Tools    []ToolDef
	// JSONObject asks for a JSON object answer (response_format json_object),
	// for the LLM gate.
	JSONObject bool
	MaxTokens  int // 0: provider default
}

// Usage is the token accounting of one completion; Cost is in USD when the
// provider reports it (OpenRouter does), else 0.
type Usage struct {
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
	TotalTokens      int     `json:"total_tokens"`
	Cost             float64 `json:"cost"`
}

// Add sums usages.
func (u Usage) Add(o Usage) Usage {
	return Usage{
		PromptTokens:     u.PromptTokens + o.PromptTokens,
		CompletionTokens: u.CompletionTokens + o.CompletionTokens,
		TotalTokens:      u.TotalTokens + o.TotalTokens,
		Cost:             u.Cost + o.Cost,
	}
}

// Response is the model's answer: content, or tool calls, or both.
type Response struct {
	Message      Message
	Usage        Usage
	FinishReason string
}

// Client completes chats. Implementations retry 429 and 5xx (honouring
// Retry-After) within the context's deadline and record metrics.
type Client interface {
	Chat(ctx context.Context, req Request) (Response, error)
}
