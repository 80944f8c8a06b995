package llm

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/internal/fakellm"
)

// TestChatProviderFaults runs the client against a provider that answers
// 429 (with and without Retry-After, or a spent quota), 5xx, other 4xx, and
// garbage (not JSON, JSON cut short, a connection dropped mid-body, JSON of
// another shape, no choices, a choice without a message). Each case checks
// how many requests were sent (retries are bounded by MaxRetries, the
// non-retryable errors are not retried), the waits between them, the error
// the caller gets (clear, with the status, and without the API key even
// when the provider echoes it), the metrics, and that a failed call reports
// no tokens while a call that succeeds after failures reports only the
// tokens of its completion.
func TestChatProviderFaults(t *testing.T) {
	const maxRetries = 2 // 3 attempts in all
	const minBackoff = 20 * time.Millisecond
	okReply := fakellm.Text("the answer").WithUsage(7, 3)
	cases := []struct {
		name    string
		replies []fakellm.Reply
		// wantErr are substrings of the error; none means the call succeeds
		// with okReply's answer.
		wantErr     []string
		wantStatus  int // the APIError's status, when the last answer was an HTTP error
		wantResults map[string]float64
		// minGap is the least time between two requests: the Retry-After,
		// or half of MinBackoff (equal jitter) when the provider gave none.
		minGap time.Duration
	}{
		{
			name:        "429 with Retry-After, then an answer",
			replies:     []fakellm.Reply{fakellm.Error(429, "Rate limit reached").WithRetryAfter("1"), okReply},
			wantResults: map[string]float64{ResultRateLimited: 1, ResultOK: 1},
			minGap:      950 * time.Millisecond,
		},
		{
			name:        "429 without Retry-After, every time",
			replies:     fakellm.Repeat(maxRetries+1, fakellm.Error(429, "Rate limit reached")),
			wantErr:     []string{": 429 Rate limit reached (gave up after 3 attempts)"},
			wantStatus:  429,
			wantResults: map[string]float64{ResultRateLimited: 3},
			minGap:      minBackoff / 2,
		},
		{
			name:        "429 asking for a wait longer than MaxRetryAfter",
			replies:     []fakellm.Reply{fakellm.Error(429, "Rate limit reached").WithRetryAfter("600")},
			wantErr:     []string{": 429 Rate limit reached (the provider asks to retry after 10m0s, longer than the 2m0s we wait)"},
			wantStatus:  429,
			wantResults: map[string]float64{ResultRateLimited: 1},
		},
		{
			name:        "429 for a spent quota is not retried",
			replies:     []fakellm.Reply{fakellm.Error(429, "You exceeded your current quota").WithCode("insufficient_quota")},
			wantErr:     []string{": 429 You exceeded your current quota"},
			wantStatus:  429,
			wantResults: map[string]float64{ResultRateLimited: 1},
		},
		{
			name:        "500 every time",
			replies:     fakellm.Repeat(maxRetries+1, fakellm.Error(500, "The server had an error while processing your request")),
			wantErr:     []string{": 500 The server had an error while processing your request (gave up after 3 attempts)"},
			wantStatus:  500,
			wantResults: map[string]float64{ResultServerError: 3},
			minGap:      minBackoff / 2,
		},
		{
			name:        "502 from a proxy, then an answer",
			replies:     []fakellm.Reply{fakellm.Raw(502, "text/html", "<html><body>502 Bad Gateway</body></html>"), okReply},
			wantResults: map[string]float64{ResultServerError: 1, ResultOK: 1},
			minGap:      minBackoff / 2,
		},
		{
			name:        "503 with Retry-After 0 every time, echoing the key",
			replies:     fakellm.Repeat(maxRetries+1, fakellm.Error(503, "overloaded; key "+testKey+" is throttled").WithRetryAfter("0")),
			wantErr:     []string{": 503 overloaded; key [redacted] is throttled (gave up after 3 attempts)"},
			wantStatus:  503,
			wantResults: map[string]float64{ResultServerError: 3},
		},
		{
			name:        "502 and 503 mixed, then an answer",
			replies:     []fakellm.Reply{fakellm.Error(502, "bad gateway"), fakellm.Error(503, "busy"), okReply},
			wantResults: map[string]float64{ResultServerError: 2, ResultOK: 1},
			minGap:      minBackoff / 2,
		},
		{
			name:        "408, then an answer",
			replies:     []fakellm.Reply{fakellm.Error(408, "request timeout"), okReply},
			wantResults: map[string]float64{ResultClientError: 1, ResultOK: 1},
			minGap:      minBackoff / 2,
		},
		{
			name:        "400 is not retried",
			replies:     []fakellm.Reply{fakellm.Error(400, "Invalid value for 'messages'")},
			wantErr:     []string{": 400 Invalid value for 'messages'"},
			wantStatus:  400,
			wantResults: map[string]float64{ResultClientError: 1},
		},
		{
			name:        "422 is not retried",
			replies:     []fakellm.Reply{fakellm.Error(422, "unprocessable")},
			wantErr:     []string{": 422 unprocessable"},
			wantStatus:  422,
			wantResults: map[string]float64{ResultClientError: 1},
		},
		{
			name:        "a body that is not JSON, every time",
			replies:     fakellm.Repeat(maxRetries+1, fakellm.Garbage("")),
			wantErr:     []string{"invalid response (HTTP 200): ", "(gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
			minGap:      minBackoff / 2,
		},
		{
			name:        "an HTML page with status 200, every time",
			replies:     fakellm.Repeat(maxRetries+1, fakellm.Raw(200, "text/html", "<html>Please log in to the proxy</html>")),
			wantErr:     []string{"invalid response (HTTP 200): ", "(gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
		},
		{
			name:        "a completion cut short, every time",
			replies:     fakellm.Repeat(maxRetries+1, okReply.Truncated()),
			wantErr:     []string{"invalid response (HTTP 200): ", "(gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
		},
		{
			name:        "a completion cut short, then a whole one",
			replies:     []fakellm.Reply{okReply.Truncated(), okReply},
			wantResults: map[string]float64{ResultBadResponse: 1, ResultOK: 1},
		},
		{
			name:        "the connection dropped mid-body, then an answer",
			replies:     []fakellm.Reply{okReply.WithHangUp(), okReply},
			wantResults: map[string]float64{ResultBadResponse: 1, ResultOK: 1},
		},
		{
			name:        "a JSON array, every time",
			replies:     fakellm.Repeat(maxRetries+1, fakellm.Raw(200, "application/json", `[1,2,3]`)),
			wantErr:     []string{"invalid response (HTTP 200): ", "(gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
		},
		{
			name:        "JSON of another API's shape, every time",
			replies:     fakellm.Repeat(maxRetries+1, fakellm.Raw(200, "application/json", `{"object":"list","data":[{"id":"gpt-4o"}]}`)),
			wantErr:     []string{"invalid response: no choices (gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
		},
		{
			name: "an empty choices list (with usage), every time",
			replies: fakellm.Repeat(maxRetries+1, fakellm.Raw(200, "application/json",
				`{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":0,"total_tokens":50}}`)),
			wantErr:     []string{"invalid response: no choices (gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
		},
		{
			name: "a choice without a message, every time",
			replies: fakellm.Repeat(maxRetries+1, fakellm.Raw(200, "application/json",
				`{"id":"x","object":"chat.completion","choices":[{"index":0,"finish_reason":"stop"}]}`)),
			wantErr:     []string{"invalid response: the choice has no message object (gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
		},
		{
			name: "a message that is a string, every time",
			replies: fakellm.Repeat(maxRetries+1, fakellm.Raw(200, "application/json",
				`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":"hello","finish_reason":"stop"}]}`)),
			wantErr:     []string{"invalid response: the choice has no message object (gave up after 3 attempts)"},
			wantResults: map[string]float64{ResultBadResponse: 3},
		},
		{
			name:        "garbage, a 503, then an answer",
			replies:     []fakellm.Reply{fakellm.Garbage("{{{"), fakellm.Error(503, "busy"), okReply},
			wantResults: map[string]float64{ResultBadResponse: 1, ResultServerError: 1, ResultOK: 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakellm.New(t)
			srv.Enqueue(tc.replies...)
			c, reg := newTestClient(t, Options{MaxRetries: maxRetries, MinBackoff: minBackoff, MaxBackoff: 2 * minBackoff})

			resp, err := c.Chat(context.Background(), userRequest(srv, "hi"))

			reqs := srv.Requests()
			if len(reqs) != len(tc.replies) || srv.Pending() != 0 {
				t.Errorf("%d requests, %d replies left; want %d requests", len(reqs), srv.Pending(), len(tc.replies))
			}
			for i := 1; i < len(reqs); i++ {
				if gap := reqs[i].Received.Sub(reqs[i-1].Received); gap < tc.minGap {
					t.Errorf("request %d came %v after the previous one, want >= %v", i, gap, tc.minGap)
				}
			}
			wantRequests(t, reg, tc.wantResults)
			prompt := counter(t, reg, "inboxd_llm_tokens_total", "kind", "prompt")
			completion := counter(t, reg, "inboxd_llm_tokens_total", "kind", "completion")

			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if resp.Message.Content != "the answer" || resp.Usage != (Usage{PromptTokens: 7, CompletionTokens: 3, TotalTokens: 10}) {
					t.Errorf("response %+v", resp)
				}
				if prompt != 7 || completion != 3 {
					t.Errorf("tokens counted: prompt %v, completion %v; want those of the one completion", prompt, completion)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; response %+v", resp)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, `llm: chat with model "test-model" at `+srv.URL()+": ") {
				t.Errorf("error does not say what failed: %s", msg)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q\n does not contain %q", msg, want)
				}
			}
			if strings.Contains(msg, testKey) {
				t.Errorf("error leaks the API key: %s", msg)
			}
			var ae *APIError
			if got := errors.As(err, &ae); got != (tc.wantStatus != 0) || (got && ae.StatusCode != tc.wantStatus) {
				t.Errorf("APIError %+v, want status %d", ae, tc.wantStatus)
			}
			if got := IsAuthError(err); got {
				t.Errorf("IsAuthError = true")
			}
			if resp.Usage != (Usage{}) || prompt != 0 || completion != 0 {
				t.Errorf("a failed call reports tokens: usage %+v, counted prompt %v, completion %v", resp.Usage, prompt, completion)
			}
		})
	}
}

// TestChatBrokenUsage: a completion whose usage is nonsense (negative or
// not numbers) is answered with sane token counts, and the token counters
// (which panic on a negative add) survive it.
func TestChatBrokenUsage(t *testing.T) {
	answer := func(usage string) fakellm.Reply {
		return fakellm.Raw(200, "application/json",
			`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":`+usage+`}`)
	}
	for _, tc := range []struct {
		name  string
		usage string
		want  Usage
	}{
		{"negative counts", `{"prompt_tokens":-5,"completion_tokens":-1,"total_tokens":-6}`, Usage{}},
		{"negative total", `{"prompt_tokens":4,"completion_tokens":2,"total_tokens":-1}`, Usage{PromptTokens: 4, CompletionTokens: 2, TotalTokens: 6}},
		{"total below its parts", `{"prompt_tokens":4,"completion_tokens":2,"total_tokens":3}`, Usage{PromptTokens: 4, CompletionTokens: 2, TotalTokens: 6}},
		{"strings", `{"prompt_tokens":"many","completion_tokens":"few"}`, Usage{}},
		{"negative cost", `{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2,"cost":-3.5}`, Usage{PromptTokens: 1, CompletionTokens: 1, TotalTokens: 2}},
		{"null", `null`, Usage{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakellm.New(t)
			srv.Enqueue(answer(tc.usage))
			c, reg := newTestClient(t, Options{})
			resp, err := c.Chat(context.Background(), userRequest(srv, "hi"))
			if err != nil {
				t.Fatal(err)
			}
			if resp.Message.Content != "hi" || resp.Usage != tc.want {
				t.Errorf("response %+v, want usage %+v", resp, tc.want)
			}
			if got := counter(t, reg, "inboxd_llm_tokens_total", "kind", "prompt"); got != float64(tc.want.PromptTokens) {
				t.Errorf("prompt tokens counted %v", got)
			}
		})
	}
}

// TestChatFaultStatusesClassified pins which statuses are retried: a
// provider answering each status forever gets 1 + MaxRetries requests when
// it is retryable, 1 when it is not.
func TestChatFaultStatusesClassified(t *testing.T) {
	for _, tc := range []struct {
		status int
		retry  bool
	}{
		{400, false}, {401, false}, {402, false}, {403, false}, {404, false}, {408, true}, {409, true},
		{413, false}, {422, false}, {429, true}, {500, true}, {501, true}, {502, true}, {503, true}, {504, true}, {529, true},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			srv := fakellm.New(t)
			srv.SetHandler(func(fakellm.Request) fakellm.Reply { return fakellm.Error(tc.status, "no") })
			c, _ := newTestClient(t, Options{MaxRetries: 1})
			if _, err := c.Chat(context.Background(), userRequest(srv, "hi")); err == nil {
				t.Fatal("no error")
			}
			want := 1
			if tc.retry {
				want = 2
			}
			if n := len(srv.Requests()); n != want {
				t.Errorf("status %d: %d requests, want %d", tc.status, n, want)
			}
		})
	}
}
