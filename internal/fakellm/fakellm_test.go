package fakellm

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func post(t *testing.T, s *Server, key, body string) (int, http.Header, map[string]any) {
	t.Helper()
	return postCtx(t, context.Background(), s, key, body)
}

func postCtx(t *testing.T, ctx context.Context, s *Server, key, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return res.StatusCode, res.Header, out
}

const chatBody = `{"model":"m","messages":[
	{"role":"system","content":"sys"},
	{"role":"user","content":[{"type":"text","text":"hello "},{"type":"text","text":"world"}]},
	{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"t","arguments":"{}"}}]},
	{"role":"tool","tool_call_id":"c1","content":"done"}],
	"tools":[{"type":"function","function":{"name":"t","description":"d","parameters":{"type":"object"}}}],
	"response_format":{"type":"json_object"},"max_completion_tokens":9}`

func TestScriptedRepliesAndRecording(t *testing.T) {
	s := New(t)
	s.ExpectAPIKey("k")
	s.Enqueue(
		CallTools(Call("a", `{"x":1}`), Call("b", map[string]int{"y": 2})),
		Text("hi").WithUsage(7, 2).WithCost(0.5),
		Error(429, "slow").WithRetryAfter("1"),
	)

	if code, _, body := post(t, s, "wrong", chatBody); code != 401 || strings.Contains(body["error"].(map[string]any)["message"].(string), "wrong") {
		t.Fatalf("wrong key: %d %v", code, body)
	}
	if s.Pending() != 3 {
		t.Fatalf("a rejected request consumed a reply")
	}

	code, _, body := post(t, s, "k", chatBody)
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	choice := body["choices"].([]any)[0].(map[string]any)
	msg := choice["message"].(map[string]any)
	calls := msg["tool_calls"].([]any)
	if choice["finish_reason"] != "tool_calls" || msg["content"] != nil || len(calls) != 2 {
		t.Fatalf("tool reply: %v", body)
	}
	c0, c1 := calls[0].(map[string]any), calls[1].(map[string]any)
	if c0["id"] == c1["id"] || c0["function"].(map[string]any)["arguments"] != `{"x":1}` || c1["function"].(map[string]any)["arguments"] != `{"y":2}` {
		t.Errorf("calls: %v", calls)
	}

	_, _, body = post(t, s, "k", chatBody)
	usage := body["usage"].(map[string]any)
	if body["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)["content"] != "hi" ||
		usage["prompt_tokens"] != 7.0 || usage["total_tokens"] != 9.0 || usage["cost"] != 0.5 {
		t.Errorf("text reply: %v", body)
	}

	code, h, _ := post(t, s, "k", chatBody)
	if code != 429 || h.Get("Retry-After") != "1" {
		t.Errorf("error reply: %d %v", code, h)
	}

	code, _, body = post(t, s, "k", chatBody)
	if code != 500 || body["error"].(map[string]any)["message"] != NoScriptedReply {
		t.Errorf("empty queue: %d %v", code, body)
	}

	reqs := s.Requests()
	if len(reqs) != 5 {
		t.Fatalf("%d recorded", len(reqs))
	}
	r := reqs[1]
	if r.Status != 200 || r.APIKey != "k" || r.Model != "m" || r.ResponseFormat != "json_object" || r.MaxTokens != 9 {
		t.Errorf("recorded: %+v", r)
	}
	if len(r.Tools) != 1 || r.Tools[0].Name != "t" || r.Tools[0].Description != "d" || string(r.Tools[0].Parameters) != `{"type":"object"}` {
		t.Errorf("tools: %+v", r.Tools)
	}
	m := r.Messages
	if len(m) != 4 || m[1].Content != "hello world" || !m[2].ContentNull || m[2].ToolCalls[0].ID != "c1" || m[3].ToolCallID != "c1" || m[3].Content != "done" {
		t.Errorf("messages: %+v", m)
	}
	if r.LastUserMessage() != "hello world" {
		t.Errorf("last user message %q", r.LastUserMessage())
	}
	if reqs[0].Status != 401 || reqs[3].Status != 429 || reqs[4].Status != 500 {
		t.Errorf("statuses %d %d %d", reqs[0].Status, reqs[3].Status, reqs[4].Status)
	}
}

func TestHandlerRawAndDelay(t *testing.T) {
	s := New(t)
	s.SetHandler(func(r Request) Reply { return Text("echo " + r.LastUserMessage()) })
	s.Enqueue(Raw(502, "text/html", "<html>"), Garbage(""))

	if code, _, _ := post(t, s, "", chatBody); code != 502 {
		t.Errorf("raw: %d", code)
	}
	if code, _, body := post(t, s, "", chatBody); code != 200 || body != nil {
		t.Errorf("garbage: %d %v", code, body)
	}
	_, _, body := post(t, s, "", `{"model":"m","messages":[{"role":"user","content":"x"}]}`)
	if body["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)["content"] != "echo x" {
		t.Errorf("handler: %v", body)
	}

	s.Enqueue(Text("late").WithDelay(5 * time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if code, _, _ := postCtx(t, ctx, s, "", chatBody); code != 0 {
		t.Errorf("delayed answer arrived: %d", code)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("delay not cut by the client")
	}

	if code, _, _ := post(t, s, "", "{nope"); code != 400 {
		t.Errorf("bad body: %d", code)
	}
	req, _ := http.NewRequest(http.MethodGet, s.URL()+"/models", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 404 {
		t.Errorf("unknown path: %d", res.StatusCode)
	}
}

// TestFaultModes: error codes, bodies cut short and connections dropped
// halfway, as the fault tests of the LLM client use them.
func TestFaultModes(t *testing.T) {
	s := New(t)
	for _, tc := range []struct {
		name     string
		reply    Reply
		wantCode int    // 0: the client gets no complete answer
		wantBody string // a prefix of the body ("" not checked)
		check    func(t *testing.T, body []byte)
	}{
		{name: "error code", reply: Error(429, "You exceeded your current quota").WithCode("insufficient_quota"), wantCode: 429,
			check: func(t *testing.T, body []byte) {
				var e struct {
					Error struct{ Message, Type, Code string }
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != "insufficient_quota" || e.Error.Type != "insufficient_quota" {
					t.Errorf("body %s (%v)", body, err)
				}
			}},
		{name: "default 429 code", reply: Error(429, "slow down"), wantCode: 429,
			check: func(t *testing.T, body []byte) {
				if !strings.Contains(string(body), `"code":"rate_limit_exceeded"`) {
					t.Errorf("body %s", body)
				}
			}},
		{name: "truncated completion", reply: Text("a complete answer").Truncated(), wantCode: 200, wantBody: `{"`,
			check: func(t *testing.T, body []byte) {
				if json.Valid(body) {
					t.Errorf("the body is whole JSON: %s", body)
				}
			}},
		{name: "truncated error", reply: Error(503, "busy").Truncated(), wantCode: 503,
			check: func(t *testing.T, body []byte) {
				if json.Valid(body) || len(body) == 0 {
					t.Errorf("body %s", body)
				}
			}},
		{name: "hang-up", reply: Text("never whole").WithHangUp()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.Enqueue(tc.reply)
			res, err := http.Post(s.URL()+"/chat/completions", "application/json", strings.NewReader(chatBody))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, readErr := io.ReadAll(res.Body)
			if tc.wantCode == 0 {
				if readErr == nil {
					t.Fatalf("read the whole body of a hang-up: %s", body)
				}
				return
			}
			if readErr != nil || res.StatusCode != tc.wantCode || !strings.HasPrefix(string(body), tc.wantBody) {
				t.Fatalf("%d %q %v", res.StatusCode, body, readErr)
			}
			tc.check(t, body)
		})
	}
}
