// Package fakellm is a fake OpenAI-compatible chat-completions server for
// tests. It is not a provider: it answers exactly what a test scripts, records
// every request it receives, and is only imported from _test.go files of other
// packages (daemon/llm, the workflow engine, jobs ...).
//
// A test starts one with New, points an llm.Endpoint at URL(), scripts the
// answers with Enqueue (consumed in order) or SetHandler (computed per
// request), and asserts on Requests():
//
//	srv := fakellm.New(t)
//	srv.ExpectAPIKey("sk-test")
//	srv.Enqueue(
//		fakellm.CallTools(fakellm.Call("imap-search", `{"query":"invoice"}`)),
//		fakellm.Text("Found it.").WithUsage(120, 8),
//	)
//	... llm.Endpoint{BaseURL: srv.URL(), APIKey: "sk-test"} ...
//	got := srv.Requests()[1].Messages // the tool result sent back
//
// When no scripted reply is left and no handler is set, the server answers
// 500 "fakellm: no scripted reply", so a test that asks more than it scripted
// fails loudly instead of hanging or passing by accident.
//
// Faults of a provider are replies too: Error (429, 5xx, with WithRetryAfter
// and WithCode), Garbage and Raw (bodies that are not a completion), any
// reply cut short with Truncated (a complete answer whose body is only the
// first half) or WithHangUp (the connection dropped in the middle of the
// body), and WithDelay (a slow or hanging provider).
package fakellm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Token counts used when a Reply does not set its own usage.
const (
	DefaultPromptTokens     = 10
	DefaultCompletionTokens = 5
)

// NoScriptedReply is the error message of the 500 answered when the queue is
// empty and no handler is set.
const NoScriptedReply = "fakellm: no scripted reply"

// ToolCall is one tool call: scripted in a Reply (ID generated when empty),
// or recorded from an assistant message of a request.
type ToolCall struct {
	ID        string
	Name      string
	Arguments string // JSON text, exactly as sent or to be sent
}

// Call is a tool call to script: args is used verbatim when it is a string,
// []byte or json.RawMessage, and JSON-encoded otherwise (a map, a struct).
func Call(name string, args any) ToolCall {
	var s string
	switch a := args.(type) {
	case nil:
		s = "{}"
	case string:
		s = a
	case []byte:
		s = string(a)
	case json.RawMessage:
		s = string(a)
	default:
		b, err := json.Marshal(a)
		if err != nil {
			panic(fmt.Sprintf("fakellm: Call(%q): arguments cannot be encoded: %v", name, err))
		}
		s = string(b)
	}
	return ToolCall{Name: name, Arguments: s}
}

// Usage is the token accounting written into a completion.
type Usage struct {
	PromptTokens     int
	CompletionTokens int
	// Cost, when set, is written as usage.cost (OpenRouter reports the
	// request's price in USD there).
	Cost *float64
}

// Reply is one scripted answer. Build it with Text, CallTools, Error,
// Garbage or Raw and adjust it with the With... methods; the fields are
// exported so a test can also write a literal.
type Reply struct {
	// A completion: content, tool calls, or both.
	Content      string
	ToolCalls    []ToolCall
	FinishReason string // "": "tool_calls" when there are tool calls, else "stop"
	Usage        *Usage // nil: DefaultPromptTokens / DefaultCompletionTokens
	NoUsage      bool   // leave the usage object out (as some local servers do)

	// An HTTP error: Status >= 400 answers an OpenAI-style error body
	// {"error":{"message":Message,"type":...,"code":Code}} with this status.
	Status     int
	Message    string
	Code       string // the error's code and type; "": the usual ones for Status
	RetryAfter string // Retry-After header value ("1", or an HTTP date); any status

	// A verbatim body (garbage, HTML from a proxy, an empty choices list ...),
	// answered with Status (200 when 0) and ContentType (application/json
	// when ""). Set by Garbage and Raw; a non-empty Body alone also counts.
	Body        string
	ContentType string
	raw         bool

	// Delay waits this long before answering; a client that gives up first
	// gets no answer (the wait ends with the request's context).
	Delay time.Duration

	// Truncate answers only the first half of the body the reply would
	// have (with a matching Content-Length): JSON cut short.
	Truncate bool
	// HangUp announces the whole body, sends its first half and drops the
	// connection: the client reads an unexpected EOF.
	HangUp bool
}

// Text is an assistant answer with content.
func Text(content string) Reply { return Reply{Content: content} }

// CallTools is an assistant answer asking for tools (ids generated), with
// finish_reason "tool_calls". Set Content on the result to add text.
func CallTools(calls ...ToolCall) Reply { return Reply{ToolCalls: calls} }

// Error answers status with an OpenAI-style error body carrying message.
func Error(status int, message string) Reply { return Reply{Status: status, Message: message} }

// Garbage answers 200 application/json with a body that is not a completion
// ("this is not JSON" when body is "").
func Garbage(body string) Reply {
	if body == "" {
		body = "this is not JSON"
	}
	return Reply{Body: body, raw: true}
}

// Raw answers exactly status, content type and body (which may be empty).
func Raw(status int, contentType, body string) Reply {
	return Reply{Status: status, ContentType: contentType, Body: body, raw: true}
}

// Repeat is n copies of r: a provider that fails the same way every time.
func Repeat(n int, r Reply) []Reply {
	out := make([]Reply, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// WithRetryAfter adds a Retry-After header (seconds or an HTTP date).
func (r Reply) WithRetryAfter(v string) Reply { r.RetryAfter = v; return r }

// WithCode sets the code and type of an error reply (e.g.
// "insufficient_quota", which OpenAI answers with 429 when the quota is
// spent).
func (r Reply) WithCode(code string) Reply { r.Code = code; return r }

// Truncated answers the first half of the reply's body only.
func (r Reply) Truncated() Reply { r.Truncate = true; return r }

// WithHangUp drops the connection halfway through the reply's body.
func (r Reply) WithHangUp() Reply { r.HangUp = true; return r }

// WithDelay waits d before answering.
func (r Reply) WithDelay(d time.Duration) Reply { r.Delay = d; return r }

// WithUsage sets the token counts (total is their sum).
func (r Reply) WithUsage(prompt, completion int) Reply {
	u := r.usage()
	u.PromptTokens, u.CompletionTokens = prompt, completion
	r.Usage = &u
	return r
}

// WithCost adds usage.cost in USD.
func (r Reply) WithCost(usd float64) Reply {
	u := r.usage()
	u.Cost = &usd
	r.Usage = &u
	return r
}

// WithoutUsage leaves the usage object out of the completion.
func (r Reply) WithoutUsage() Reply { r.NoUsage = true; return r }

// WithFinishReason overrides finish_reason.
func (r Reply) WithFinishReason(s string) Reply { r.FinishReason = s; return r }

func (r Reply) usage() Usage {
	if r.Usage != nil {
		return *r.Usage
	}
	return Usage{PromptTokens: DefaultPromptTokens, CompletionTokens: DefaultCompletionTokens}
}

// Handler computes a reply for a request; it runs on the server's goroutine,
// so it must not call t.Fatal (return an Error reply instead).
type Handler func(Request) Reply

// Message is one message of a received request, decoded from the OpenAI wire
// shape; Raw keeps its exact JSON for wire-level assertions.
type Message struct {
	Role        string
	Content     string // a string content, or the text parts joined
	ContentNull bool   // content was absent or null
	ToolCalls   []ToolCall
	ToolCallID  string
	Name        string
	Raw         json.RawMessage
}

// Tool is one tool definition of a received request.
type Tool struct {
	Type        string // "function"
	Name        string
	Description string
	Parameters  json.RawMessage
}

// Request is a received chat-completion request, decoded.
type Request struct {
	Model          string
	Messages       []Message
	Tools          []Tool
	ResponseFormat string // response_format.type ("json_object"), "" when absent
	MaxTokens      int    // max_tokens or max_completion_tokens, 0 when absent
	Authorization  string // the raw Authorization header
	APIKey         string // the bearer token of Authorization, "" when none
	Header         http.Header
	Body           json.RawMessage // the exact request body
}

// LastUserMessage is the content of the last user message ("" when none),
// handy in handlers.
func (r Request) LastUserMessage() string {
	for i := len(r.Messages) - 1; i >= 0; i-- {
		if r.Messages[i].Role == "user" {
			return r.Messages[i].Content
		}
	}
	return ""
}

// RecordedRequest is a request as the server saw and answered it.
type RecordedRequest struct {
	Request
	Method   string
	Path     string
	Status   int // the status answered; 0 while pending or when the client went away
	Received time.Time
}

// Server is a running fake; safe for concurrent use.
type Server struct {
	t  testing.TB
	ts *httptest.Server

	mu       sync.Mutex
	queue    []Reply
	handler  Handler
	apiKey   string
	requests []RecordedRequest
	ids      int
}

// New starts a server that is closed when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t}
	s.ts = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	t.Cleanup(s.Close)
	return s
}

// URL is the base URL to configure as an endpoint, including /v1 (no
// trailing slash).
func (s *Server) URL() string { return s.ts.URL + "/v1" }

// Close stops the server; New arranges it at the end of the test.
func (s *Server) Close() { s.ts.Close() }

// ExpectAPIKey makes the server answer 401 to requests whose Authorization
// is not "Bearer key" ("" turns the check off). A rejected request is
// recorded and consumes no scripted reply.
func (s *Server) ExpectAPIKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKey = key
}

// Enqueue appends replies, answered in order, one per request.
func (s *Server) Enqueue(replies ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue = append(s.queue, replies...)
}

// SetHandler answers requests when the queue is empty (nil removes it).
func (s *Server) SetHandler(h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handler = h
}

// Pending is the number of scripted replies not yet consumed.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Requests returns every request received so far, in arrival order.
func (s *Server) Requests() []RecordedRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]RecordedRequest(nil), s.requests...)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	rec := RecordedRequest{
		Method:   r.Method,
		Path:     r.URL.Path,
		Received: time.Now(),
		Request: Request{
			Authorization: r.Header.Get("Authorization"),
			Header:        r.Header.Clone(),
			Body:          json.RawMessage(body),
		},
	}
	if tok, ok := strings.CutPrefix(rec.Authorization, "Bearer "); ok {
		rec.APIKey = tok
	}
	var decodeErr error
	if err != nil {
		decodeErr = err
	} else {
		decodeErr = decodeRequest(body, &rec.Request)
	}

	s.mu.Lock()
	idx := len(s.requests)
	s.requests = append(s.requests, rec)
	wantKey := s.apiKey
	s.mu.Unlock()

	status := s.answer(w, r, rec, decodeErr, wantKey)

	s.mu.Lock()
	s.requests[idx].Status = status
	s.mu.Unlock()
}

// answer writes the response and returns its status (0: none written).
func (s *Server) answer(w http.ResponseWriter, r *http.Request, rec RecordedRequest, decodeErr error, wantKey string) int {
	switch {
	case r.Method != http.MethodPost || rec.Path != "/v1/chat/completions":
		return writeError(w, http.StatusNotFound, fmt.Sprintf("fakellm: no route for %s %s (only POST /v1/chat/completions)", r.Method, rec.Path))
	case wantKey != "" && rec.Authorization != "Bearer "+wantKey:
		return writeError(w, http.StatusUnauthorized, "fakellm: incorrect API key provided")
	case decodeErr != nil:
		return writeError(w, http.StatusBadRequest, "fakellm: cannot decode the request: "+decodeErr.Error())
	}

	reply, ok := s.next(rec.Request)
	if !ok {
		s.t.Logf("fakellm: request %d (model %q) has no scripted reply; answering 500", len(s.Requests()), rec.Model)
		return writeError(w, http.StatusInternalServerError, NoScriptedReply)
	}
	if reply.Delay > 0 {
		timer := time.NewTimer(reply.Delay)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return 0
		}
	}
	if reply.RetryAfter != "" {
		w.Header().Set("Retry-After", reply.RetryAfter)
	}
	status, ct, body := s.render(rec.Model, reply)
	switch {
	case reply.HangUp:
		// net/http closes the connection after a handler wrote less than
		// the Content-Length it announced.
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		body = body[:len(body)/2]
	case reply.Truncate:
		body = body[:len(body)/2]
	}
	return write(w, status, ct, body)
}

// render is the status, content type and body of a reply.
func (s *Server) render(model string, reply Reply) (int, string, []byte) {
	switch {
	case reply.raw || reply.Body != "":
		status := reply.Status
		if status == 0 {
			status = http.StatusOK
		}
		ct := reply.ContentType
		if ct == "" {
			ct = "application/json"
		}
		return status, ct, []byte(reply.Body)
	case reply.Status >= 400:
		msg := reply.Message
		if msg == "" {
			msg = http.StatusText(reply.Status)
		}
		status, body := errorBody(reply.Status, msg, reply.Code)
		return status, "application/json", body
	}
	status, body := encodeJSON(http.StatusOK, s.completion(model, reply))
	return status, "application/json", body
}

func (s *Server) next(req Request) (Reply, bool) {
	s.mu.Lock()
	if len(s.queue) > 0 {
		r := s.queue[0]
		s.queue = s.queue[1:]
		s.mu.Unlock()
		return r, true
	}
	h := s.handler
	s.mu.Unlock()
	if h == nil {
		return Reply{}, false
	}
	return h(req), true
}

func (s *Server) nextID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids++
	return prefix + strconv.Itoa(s.ids)
}

func (s *Server) completion(model string, r Reply) map[string]any {
	msg := map[string]any{"role": "assistant", "content": nil}
	if r.Content != "" || len(r.ToolCalls) == 0 {
		msg["content"] = r.Content
	}
	finish := r.FinishReason
	if len(r.ToolCalls) > 0 {
		calls := make([]map[string]any, 0, len(r.ToolCalls))
		for _, c := range r.ToolCalls {
			id := c.ID
			if id == "" {
				id = s.nextID("call_fake_")
			}
			args := c.Arguments
			if args == "" {
				args = "{}"
			}
			calls = append(calls, map[string]any{
				"id": id, "type": "function",
				"function": map[string]any{"name": c.Name, "arguments": args},
			})
		}
		msg["tool_calls"] = calls
		if finish == "" {
			finish = "tool_calls"
		}
	}
	if finish == "" {
		finish = "stop"
	}
	out := map[string]any{
		"id":      s.nextID("chatcmpl-fake-"),
		"object":  "chat.completion",
		"created": time.Now().Unix(),
		"model":   model,
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish, "logprobs": nil}},
	}
	if !r.NoUsage {
		u := r.usage()
		usage := map[string]any{
			"prompt_tokens":     u.PromptTokens,
			"completion_tokens": u.CompletionTokens,
			"total_tokens":      u.PromptTokens + u.CompletionTokens,
		}
		if u.Cost != nil {
			usage["cost"] = *u.Cost
		}
		out["usage"] = usage
	}
	return out
}

func writeError(w http.ResponseWriter, status int, message string) int {
	status, body := errorBody(status, message, "")
	return write(w, status, "application/json", body)
}

// errorBody is an OpenAI-style error; code, when set, is its code and type.
func errorBody(status int, message, code string) (int, []byte) {
	typ := "invalid_request_error"
	switch {
	case code != "":
		typ = code
	case status == http.StatusUnauthorized:
		code = "invalid_api_key"
	case status == http.StatusTooManyRequests:
		typ, code = "requests", "rate_limit_exceeded"
	case status >= 500:
		typ = "server_error"
	}
	body := map[string]any{"error": map[string]any{"message": message, "type": typ, "param": nil, "code": nilIfEmpty(code)}}
	return encodeJSON(status, body)
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func encodeJSON(status int, v any) (int, []byte) {
	b, err := json.Marshal(v)
	if err != nil {
		return http.StatusInternalServerError, []byte(`{"error":{"message":"fakellm: cannot encode the reply"}}`)
	}
	return status, b
}

func write(w http.ResponseWriter, status int, contentType string, body []byte) int {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return status
}

// wire shapes of a request.
type wireRequest struct {
	Model               string                 `json:"model"`
	Messages            []json.RawMessage      `json:"messages"`
	Tools               []wireTool             `json:"tools"`
	ResponseFormat      *struct{ Type string } `json:"response_format"`
	MaxTokens           *int                   `json:"max_tokens"`
	MaxCompletionTokens *int                   `json:"max_completion_tokens"`
}

type wireTool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
	} `json:"function"`
}

type wireMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	ToolCallID string          `json:"tool_call_id"`
	Name       string          `json:"name"`
	ToolCalls  []struct {
		ID       string `json:"id"`
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
}

func decodeRequest(body []byte, out *Request) error {
	var w wireRequest
	if err := json.Unmarshal(body, &w); err != nil {
		return err
	}
	out.Model = w.Model
	if w.ResponseFormat != nil {
		out.ResponseFormat = w.ResponseFormat.Type
	}
	switch {
	case w.MaxCompletionTokens != nil:
		out.MaxTokens = *w.MaxCompletionTokens
	case w.MaxTokens != nil:
		out.MaxTokens = *w.MaxTokens
	}
	for _, t := range w.Tools {
		out.Tools = append(out.Tools, Tool{
			Type: t.Type, Name: t.Function.Name, Description: t.Function.Description, Parameters: t.Function.Parameters,
		})
	}
	for i, raw := range w.Messages {
		var m wireMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		msg := Message{Role: m.Role, ToolCallID: m.ToolCallID, Name: m.Name, Raw: raw}
		content, isNull, err := decodeContent(m.Content)
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		msg.Content, msg.ContentNull = content, isNull
		for _, c := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, ToolCall{ID: c.ID, Name: c.Function.Name, Arguments: c.Function.Arguments})
		}
		out.Messages = append(out.Messages, msg)
	}
	return nil
}

// decodeContent reads a string content or an array of text parts.
func decodeContent(raw json.RawMessage) (string, bool, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", true, nil
	}
	if raw[0] == '"' {
		var s string
		err := json.Unmarshal(raw, &s)
		return s, false, err
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", false, fmt.Errorf("content is neither a string nor a list of parts: %w", err)
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(p.Text)
	}
	return b.String(), false, nil
}
