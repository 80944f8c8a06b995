package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inboxd/inboxd/internal/fakellm"
)

const testKey = "sk-test-0123456789abcdef"

// newTestClient returns a client with fast backoff and its own registry.
func newTestClient(t *testing.T, opts Options) (*OpenAI, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 20 * time.Millisecond
	}
	return NewOpenAI(opts), reg
}

func endpoint(srv *fakellm.Server) Endpoint { return Endpoint{BaseURL: srv.URL(), APIKey: testKey} }

func userRequest(srv *fakellm.Server, text string) Request {
	return Request{
		Endpoint: endpoint(srv),
		Model:    "test-model",
		Messages: []Message{{Role: RoleSystem, Content: "You are terse."}, {Role: RoleUser, Content: text}},
	}
}

// counter reads one series of a counter from the registry (0 when absent).
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func wantRequests(t *testing.T, reg *prometheus.Registry, want map[string]float64) {
	t.Helper()
	for _, r := range allResults {
		if got := counter(t, reg, "inboxd_llm_requests_total", "result", r); got != want[r] {
			t.Errorf("inboxd_llm_requests_total{result=%q} = %v, want %v", r, got, want[r])
		}
	}
}

// jsonEqual compares two JSON texts structurally.
func jsonEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: got invalid JSON %s: %v", what, got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: want invalid JSON %s: %v", what, want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s:\n got  %s\n want %s", what, got, want)
	}
}

func TestChatPlainAnswerAndUsage(t *testing.T) {
	srv := fakellm.New(t)
	srv.ExpectAPIKey(testKey)
	srv.Enqueue(fakellm.Text("Hello there.").WithUsage(12, 3))
	c, reg := newTestClient(t, Options{})

	resp, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Message.Role != RoleAssistant || resp.Message.Content != "Hello there." || len(resp.Message.ToolCalls) != 0 {
		t.Errorf("message = %+v", resp.Message)
	}
	if resp.FinishReason != "stop" {
		t.Errorf("finish reason = %q", resp.FinishReason)
	}
	if want := (Usage{PromptTokens: 12, CompletionTokens: 3, TotalTokens: 15}); resp.Usage != want {
		t.Errorf("usage = %+v, want %+v", resp.Usage, want)
	}

	reqs := srv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Method != http.MethodPost || r.Path != "/v1/chat/completions" || r.Status != 200 {
		t.Errorf("request %s %s answered %d", r.Method, r.Path, r.Status)
	}
	if r.Model != "test-model" || r.APIKey != testKey || r.ResponseFormat != "" || len(r.Tools) != 0 || r.MaxTokens != 0 {
		t.Errorf("recorded %+v", r.Request)
	}
	if len(r.Messages) != 2 || r.Messages[0].Role != "system" || r.Messages[1].Role != "user" || r.Messages[1].Content != "hi" {
		t.Errorf("messages = %+v", r.Messages)
	}
	if strings.Contains(string(r.Body), `"tools"`) || strings.Contains(string(r.Body), `"response_format"`) {
		t.Errorf("unasked fields sent: %s", r.Body)
	}

	wantRequests(t, reg, map[string]float64{ResultOK: 1})
	if p, c := counter(t, reg, "inboxd_llm_tokens_total", "kind", "prompt"), counter(t, reg, "inboxd_llm_tokens_total", "kind", "completion"); p != 12 || c != 3 {
		t.Errorf("tokens prompt=%v completion=%v, want 12, 3", p, c)
	}
}

func TestChatToolDefinitionsAndTwoToolCalls(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.CallTools(
		fakellm.Call("imap-search", `{"query":"invoice","limit":5}`),
		fakellm.Call("imap-get_message", map[string]any{"id": "<a@b>"}),
	))
	c, _ := newTestClient(t, Options{})
	schema := `{"type":"object","properties":{"query":{"type":"string"},"limit":{"type":"integer","maximum":50}},"required":["query"]}`
	req := userRequest(srv, "find the invoice")
	req.Tools = []ToolDef{
		{Name: "imap-search", Description: "Search the mailbox.", Parameters: json.RawMessage(schema)},
		{Name: "imap-get_message", Description: "Read one message."}, // no parameters
	}

	resp, err := c.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	calls := resp.Message.ToolCalls
	if len(calls) != 2 || resp.FinishReason != "tool_calls" {
		t.Fatalf("tool calls = %+v, finish %q", calls, resp.FinishReason)
	}
	if calls[0].ID == "" || calls[1].ID == "" || calls[0].ID == calls[1].ID {
		t.Errorf("tool call ids %q %q, want distinct non-empty", calls[0].ID, calls[1].ID)
	}
	if calls[0].Name != "imap-search" || calls[1].Name != "imap-get_message" {
		t.Errorf("names %q %q", calls[0].Name, calls[1].Name)
	}
	jsonEqual(t, "call 0 arguments", calls[0].Arguments, []byte(`{"query":"invoice","limit":5}`))
	jsonEqual(t, "call 1 arguments", calls[1].Arguments, []byte(`{"id":"<a@b>"}`))
	if _, err := json.Marshal(resp.Message); err != nil {
		t.Errorf("response message does not marshal: %v", err)
	}

	tools := srv.Requests()[0].Tools
	if len(tools) != 2 {
		t.Fatalf("tools sent = %+v", tools)
	}
	if tools[0].Type != "function" || tools[0].Name != "imap-search" || tools[0].Description != "Search the mailbox." {
		t.Errorf("tool 0 = %+v", tools[0])
	}
	jsonEqual(t, "tool 0 parameters", tools[0].Parameters, []byte(schema))
	jsonEqual(t, "tool 1 parameters", tools[1].Parameters, []byte(`{"type":"object","properties":{}}`))
}

func TestChatConversationWireShape(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.Text("Drafted the reply."))
	c, _ := newTestClient(t, Options{})
	req := Request{
		Endpoint: endpoint(srv),
		Model:    "test-model",
		Messages: []Message{
			{Role: RoleSystem, Content: "sys"},
			{Role: RoleUser, Content: "mail"},
			{Role: RoleAssistant, ToolCalls: []ToolCall{
				{ID: "call_1", Name: "imap-search", Arguments: json.RawMessage(`{"query":"x"}`)},
				{ID: "call_2", Name: "imap-get", Arguments: nil},
			}},
			{Role: RoleTool, ToolCallID: "call_1", Name: "imap-search", Content: `[{"id":1}]`},
			{Role: RoleTool, ToolCallID: "call_2", Name: "imap-get", Content: "error: not found"},
			{Role: RoleAssistant, Content: "Let me draft.", ToolCalls: []ToolCall{
				{ID: "call_3", Name: "imap-draft_reply", Arguments: json.RawMessage(`{"body":"hi"}`)},
			}},
			{Role: RoleTool, ToolCallID: "call_3", Content: "ok"},
		},
	}
	if _, err := c.Chat(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	var body struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(srv.Requests()[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"role":"system","content":"sys"}`,
		`{"role":"user","content":"mail"}`,
		`{"role":"assistant","tool_calls":[
			{"id":"call_1","type":"function","function":{"name":"imap-search","arguments":"{\"query\":\"x\"}"}},
			{"id":"call_2","type":"function","function":{"name":"imap-get","arguments":"{}"}}]}`,
		`{"role":"tool","tool_call_id":"call_1","content":"[{\"id\":1}]"}`,
		`{"role":"tool","tool_call_id":"call_2","content":"error: not found"}`,
		`{"role":"assistant","content":"Let me draft.","tool_calls":[
			{"id":"call_3","type":"function","function":{"name":"imap-draft_reply","arguments":"{\"body\":\"hi\"}"}}]}`,
		`{"role":"tool","tool_call_id":"call_3","content":"ok"}`,
	}
	if len(body.Messages) != len(want) {
		t.Fatalf("%d messages sent, want %d: %s", len(body.Messages), len(want), srv.Requests()[0].Body)
	}
	for i := range want {
		jsonEqual(t, fmt.Sprintf("message %d", i), body.Messages[i], []byte(want[i]))
	}
}

func TestChatJSONObjectAndMaxTokens(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.Text(`{"answer":"yes"}`))
	c, _ := newTestClient(t, Options{})
	req := userRequest(srv, "is it a quote request?")
	req.JSONObject = true
	req.MaxTokens = 64
	resp, err := c.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Message.Content != `{"answer":"yes"}` {
		t.Errorf("content = %q", resp.Message.Content)
	}
	r := srv.Requests()[0]
	if r.ResponseFormat != "json_object" {
		t.Errorf("response_format = %q: %s", r.ResponseFormat, r.Body)
	}
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(r.Body, &raw)
	jsonEqual(t, "response_format", raw["response_format"], []byte(`{"type":"json_object"}`))
	if string(raw["max_tokens"]) != "64" || raw["max_completion_tokens"] != nil {
		t.Errorf("max tokens not sent as max_tokens to a non-OpenAI host: %s", r.Body)
	}
}

func TestChatRetryAfterHonoured(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.Error(http.StatusTooManyRequests, "slow down").WithRetryAfter("1"), fakellm.Text("ok"))
	c, reg := newTestClient(t, Options{})

	start := time.Now()
	resp, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Message.Content != "ok" {
		t.Errorf("content = %q", resp.Message.Content)
	}
	reqs := srv.Requests()
	if len(reqs) != 2 || reqs[0].Status != 429 || reqs[1].Status != 200 {
		t.Fatalf("requests: %d", len(reqs))
	}
	if gap := reqs[1].Received.Sub(reqs[0].Received); gap < 950*time.Millisecond {
		t.Errorf("retried after %v, want >= 1s (Retry-After: 1)", gap)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v", el)
	}
	wantRequests(t, reg, map[string]float64{ResultRateLimited: 1, ResultOK: 1})
}

func TestChatServerErrorTwiceThenSuccess(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(
		fakellm.Error(500, "boom"),
		fakellm.Raw(502, "text/html", "<html>bad gateway</html>"),
		fakellm.Text("finally"),
	)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, reg := newTestClient(t, Options{Logger: logger})
	resp, err := c.Chat(context.Background(), userRequest(srv, "the secret prompt text"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Message.Content != "finally" || len(srv.Requests()) != 3 {
		t.Errorf("content %q after %d requests", resp.Message.Content, len(srv.Requests()))
	}
	wantRequests(t, reg, map[string]float64{ResultServerError: 2, ResultOK: 1})
	if got := logs.String(); strings.Count(got, "retrying") != 2 || strings.Contains(got, testKey) || strings.Contains(got, "secret prompt") {
		t.Errorf("debug log:\n%s", got)
	}
}

func TestChatServerErrorForever(t *testing.T) {
	srv := fakellm.New(t)
	srv.SetHandler(func(fakellm.Request) fakellm.Reply { return fakellm.Error(503, "overloaded") })
	c, reg := newTestClient(t, Options{MaxRetries: 2})

	_, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err == nil {
		t.Fatal("no error")
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 || ae.Message != "overloaded" {
		t.Errorf("error %v: APIError = %+v", err, ae)
	}
	want := fmt.Sprintf(`llm: chat with model "test-model" at %s: 503 overloaded (gave up after 3 attempts)`, srv.URL())
	if err.Error() != want {
		t.Errorf("error\n got  %s\n want %s", err, want)
	}
	if n := len(srv.Requests()); n != 3 {
		t.Errorf("%d requests, want 3 (1 + MaxRetries 2)", n)
	}
	wantRequests(t, reg, map[string]float64{ResultServerError: 3})

	// The default is 3 retries.
	c2, reg2 := newTestClient(t, Options{})
	if _, err := c2.Chat(context.Background(), userRequest(srv, "hi")); err == nil {
		t.Fatal("no error")
	}
	wantRequests(t, reg2, map[string]float64{ResultServerError: 4})
}

func TestChatUnauthorizedIsNotRetriedAndHidesTheKey(t *testing.T) {
	srv := fakellm.New(t)
	srv.ExpectAPIKey("sk-the-right-one")
	c, reg := newTestClient(t, Options{})

	_, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err == nil {
		t.Fatal("no error")
	}
	want := fmt.Sprintf(`llm: chat with model "test-model" at %s: 401 fakellm: incorrect API key provided`, srv.URL())
	if err.Error() != want {
		t.Errorf("error\n got  %s\n want %s", err, want)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 401 || ae.Code != "invalid_api_key" || !IsAuthError(err) {
		t.Errorf("APIError = %+v, IsAuthError %v", ae, IsAuthError(err))
	}
	if n := len(srv.Requests()); n != 1 {
		t.Errorf("%d requests, want 1 (no retry on 401)", n)
	}
	wantRequests(t, reg, map[string]float64{ResultClientError: 1})

	// A provider that echoes the key in its message: the key is redacted.
	srv.ExpectAPIKey("")
	srv.Enqueue(fakellm.Error(401, "Incorrect API key provided: "+testKey+". Check it."))
	_, err = c.Chat(context.Background(), userRequest(srv, "hi"))
	if err == nil || strings.Contains(err.Error(), testKey) || !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("error leaks or lost the redaction: %v", err)
	}
	if errors.As(err, &ae); strings.Contains(ae.Message, testKey) {
		t.Errorf("APIError.Message leaks the key: %q", ae.Message)
	}
}

func TestChatClientErrorIsNotRetried(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.Error(404, "The model `nope` does not exist"))
	c, reg := newTestClient(t, Options{})
	_, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err == nil || !strings.HasSuffix(err.Error(), ": 404 The model `nope` does not exist") || IsAuthError(err) {
		t.Errorf("error = %v", err)
	}
	wantRequests(t, reg, map[string]float64{ResultClientError: 1})
}

func TestChatErrorInsideA200IsRetriedByItsCode(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(
		fakellm.Raw(200, "application/json", `{"error":{"message":"upstream overloaded","code":502}}`),
		fakellm.Text("ok"),
	)
	c, reg := newTestClient(t, Options{})
	resp, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err != nil || resp.Message.Content != "ok" {
		t.Fatalf("resp %+v, err %v", resp, err)
	}
	wantRequests(t, reg, map[string]float64{ResultServerError: 1, ResultOK: 1})
}

func TestChatDeadlineDuringBackoff(t *testing.T) {
	srv := fakellm.New(t)
	c, reg := newTestClient(t, Options{})

	// Retry-After beyond the deadline: give up at once, not at the deadline.
	srv.Enqueue(fakellm.Error(503, "busy").WithRetryAfter("5"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Chat(ctx, userRequest(srv, "hi"))
	if el := time.Since(start); el > time.Second {
		t.Errorf("took %v, want an immediate failure", el)
	}
	var ae *APIError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ae) || ae.StatusCode != 503 {
		t.Errorf("error = %v, want DeadlineExceeded wrapping the 503", err)
	}
	if !strings.Contains(err.Error(), "503 busy") || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("error text = %v", err)
	}

	// Backoff cut short by the deadline while waiting: the wait fits the
	// deadline when it starts, the caller's context ends it.
	c2, _ := newTestClient(t, Options{MinBackoff: 400 * time.Millisecond, MaxBackoff: 400 * time.Millisecond})
	srv.SetHandler(func(fakellm.Request) fakellm.Reply { return fakellm.Error(500, "boom") })
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel2)
	start = time.Now()
	_, err = c2.Chat(ctx2, userRequest(srv, "hi"))
	if el := time.Since(start); el > 350*time.Millisecond {
		t.Errorf("cancel honoured after %v", el)
	}
	if !errors.Is(err, context.Canceled) || !errors.As(err, &ae) || ae.StatusCode != 500 {
		t.Errorf("error = %v, want Canceled wrapping the 500", err)
	}

	// The deadline passing during an attempt.
	srv.SetHandler(nil)
	srv.Enqueue(fakellm.Text("late").WithDelay(2 * time.Second))
	ctx3, cancel3 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel3()
	_, err = c.Chat(ctx3, userRequest(srv, "hi"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error = %v", err)
	}
	if got := counter(t, reg, "inboxd_llm_requests_total", "result", ResultTimeout); got != 1 {
		t.Errorf("timeouts = %v, want 1", got)
	}
}

func TestChatAttemptTimeoutIsRetried(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.Text("too slow").WithDelay(2*time.Second), fakellm.Text("ok"))
	c, reg := newTestClient(t, Options{Timeout: 150 * time.Millisecond})
	resp, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err != nil || resp.Message.Content != "ok" {
		t.Fatalf("resp %+v, err %v", resp, err)
	}
	wantRequests(t, reg, map[string]float64{ResultTimeout: 1, ResultOK: 1})
}

func TestChatCostFromUsage(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.Text("x").WithUsage(1000, 200).WithCost(0.00123), fakellm.Text("y").WithoutUsage())
	c, _ := newTestClient(t, Options{})
	resp, err := c.Chat(context.Background(), userRequest(srv, "hi"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Usage{PromptTokens: 1000, CompletionTokens: 200, TotalTokens: 1200, Cost: 0.00123}); resp.Usage != want {
		t.Errorf("usage = %+v, want %+v", resp.Usage, want)
	}
	resp, err = c.Chat(context.Background(), userRequest(srv, "hi"))
	if err != nil || resp.Usage != (Usage{}) {
		t.Errorf("no usage: %+v, %v", resp.Usage, err)
	}
}

func TestChatNeverUsesAnEnvironmentKey(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "sk-from-the-environment")
	t.Setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.Text("ok"), fakellm.Text("ok"))
	c, _ := newTestClient(t, Options{})

	req := userRequest(srv, "hi")
	req.Endpoint.APIKey = "" // Ollama needs no key
	if _, err := c.Chat(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Chat(context.Background(), userRequest(srv, "hi")); err != nil {
		t.Fatal(err)
	}
	reqs := srv.Requests()
	if len(reqs) != 2 || reqs[0].Authorization != "" || reqs[1].Authorization != "Bearer "+testKey {
		t.Errorf("authorization headers %q, %q", reqs[0].Authorization, reqs[1].Authorization)
	}
}

func TestChatNetworkError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c, reg := newTestClient(t, Options{MaxRetries: 1})
	_, err = c.Chat(context.Background(), Request{
		Endpoint: Endpoint{BaseURL: "http://user:pass@" + addr + "/v1?key=" + testKey, APIKey: testKey},
		Model:    "m", Messages: []Message{{Role: RoleUser, Content: "hi"}},
	})
	if err == nil || !strings.HasPrefix(err.Error(), `llm: chat with model "m" at http://`+addr+"/v1: network error") {
		t.Errorf("error = %v", err)
	}
	if strings.Contains(err.Error(), "pass") || strings.Contains(err.Error(), testKey) {
		t.Errorf("error leaks credentials: %v", err)
	}
	wantRequests(t, reg, map[string]float64{ResultNetworkError: 2})
}

func TestChatRejectsBadRequestsLocally(t *testing.T) {
	c, reg := newTestClient(t, Options{})
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Endpoint: Endpoint{BaseURL: "ftp://x"}, Model: "m", Messages: []Message{{Role: RoleUser}}}, "invalid base URL"},
		{Request{Endpoint: Endpoint{BaseURL: "http://127.0.0.1:1"}, Messages: []Message{{Role: RoleUser}}}, "no model"},
		{Request{Endpoint: Endpoint{BaseURL: "http://127.0.0.1:1"}, Model: "m"}, "no messages"},
		{Request{Endpoint: Endpoint{BaseURL: "http://127.0.0.1:1"}, Model: "m", Messages: []Message{{Role: "robot"}}}, `unknown role "robot"`},
		{Request{Endpoint: Endpoint{BaseURL: "http://127.0.0.1:1"}, Model: "m", Messages: []Message{{Role: RoleTool, Content: "x"}}}, "without tool_call_id"},
		{Request{Endpoint: Endpoint{BaseURL: "http://127.0.0.1:1"}, Model: "m", Messages: []Message{{Role: RoleUser}},
			Tools: []ToolDef{{Name: "t", Parameters: json.RawMessage(`[1]`)}}}, `tool "t": parameters are not a JSON object`},
	} {
		_, err := c.Chat(context.Background(), tc.req)
		if err == nil || !strings.HasPrefix(err.Error(), "llm: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error = %v, want %q", err, tc.want)
		}
	}
	wantRequests(t, reg, map[string]float64{})
}

func TestChatToolArgumentsThatAreNotJSON(t *testing.T) {
	srv := fakellm.New(t)
	srv.Enqueue(fakellm.CallTools(fakellm.Call("t", "{not json")), fakellm.Text("ok"))
	c, _ := newTestClient(t, Options{})
	req := userRequest(srv, "hi")
	resp, err := c.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	tc := resp.Message.ToolCalls[0]
	if string(tc.Arguments) != `"{not json"` {
		t.Errorf("arguments = %s", tc.Arguments)
	}
	if _, err := json.Marshal(resp.Message); err != nil {
		t.Errorf("message does not marshal: %v", err)
	}
	// Sent back as the model wrote it.
	req.Messages = append(req.Messages, resp.Message, Message{Role: RoleTool, ToolCallID: tc.ID, Content: "error: arguments are not an object"})
	if _, err := c.Chat(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := srv.Requests()[1].Messages[2].ToolCalls[0].Arguments; got != "{not json" {
		t.Errorf("arguments sent back = %q", got)
	}
}

func TestChatConcurrentAndSharedRegistry(t *testing.T) {
	srv := fakellm.New(t)
	srv.SetHandler(func(r fakellm.Request) fakellm.Reply {
		return fakellm.Text("echo: "+r.LastUserMessage()).WithUsage(2, 1)
	})
	reg := prometheus.NewRegistry()
	a := NewOpenAI(Options{Registerer: reg})
	b := NewOpenAI(Options{Registerer: reg}) // shares the counters, no panic
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := a
			if i%2 == 1 {
				c = b
			}
			msg := fmt.Sprintf("n%d", i)
			resp, err := c.Chat(context.Background(), userRequest(srv, msg))
			if err != nil || resp.Message.Content != "echo: "+msg {
				t.Errorf("%s: %+v %v", msg, resp.Message, err)
			}
		}()
	}
	wg.Wait()
	wantRequests(t, reg, map[string]float64{ResultOK: 20})
	if got := counter(t, reg, "inboxd_llm_tokens_total", "kind", "prompt"); got != 40 {
		t.Errorf("prompt tokens = %v", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, mf := range mfs {
		if mf.GetType().String() != "COUNTER" {
			t.Errorf("%s is a %s", mf.GetName(), mf.GetType())
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() != "result" && lp.GetName() != "kind" {
					t.Errorf("%s has label %q", mf.GetName(), lp.GetName())
				}
			}
		}
		series[mf.GetName()] = len(mf.GetMetric())
	}
	if want := map[string]int{"inboxd_llm_requests_total": len(allResults), "inboxd_llm_tokens_total": 2}; !reflect.DeepEqual(series, want) {
		t.Errorf("series = %v, want %v (every label value pre-initialised)", series, want)
	}
	if got := counter(t, reg, "inboxd_llm_tokens_total", "kind", "completion"); got != 20 {
		t.Errorf("completion tokens = %v", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		header, value string
		want          time.Duration
		ok            bool
	}{
		{"Retry-After", "1", time.Second, true},
		{"Retry-After", "0.5", 500 * time.Millisecond, true},
		{"Retry-After", "0", 0, true},
		{"Retry-After", now.Add(3 * time.Second).Format(http.TimeFormat), 3 * time.Second, true},
		{"Retry-After", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"Retry-After", "soon", 0, false},
		{"Retry-After", "-3", 0, false},
		{"Retry-After-Ms", "250", 250 * time.Millisecond, true},
		{"X-Other", "1", 0, false},
	} {
		h := http.Header{}
		h.Set(tc.header, tc.value)
		got, ok := parseRetryAfter(h, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: %s = %v, %v; want %v, %v", tc.header, tc.value, got, ok, tc.want, tc.ok)
		}
	}
}

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	c := NewOpenAI(Options{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	for attempt, base := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		base *= time.Millisecond
		for range 50 {
			if d := c.backoff(attempt); d < base/2 || d > base {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, base/2, base)
			}
		}
	}
}
