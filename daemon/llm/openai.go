package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/param"
	"github.com/openai/openai-go/v3/shared"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultBaseURL is used when an Endpoint has no BaseURL.
const DefaultBaseURL = "https://api.openai.com/v1"

// Defaults of Options.
const (
	DefaultTimeout       = 60 * time.Second
	DefaultMaxRetries    = 3
	DefaultMinBackoff    = 500 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
	DefaultMaxRetryAfter = 2 * time.Minute
)

// Results of one HTTP attempt, the values of inboxd_llm_requests_total{result}.
const (
	ResultOK           = "ok"
	ResultClientError  = "client_error"  // 4xx other than 429 (bad key, unknown model, bad request)
	ResultRateLimited  = "rate_limited"  // 429 (a spent quota too, which is not retried)
	ResultServerError  = "server_error"  // 5xx
	ResultTimeout      = "timeout"       // the attempt's timeout or the caller's deadline
	ResultCanceled     = "canceled"      // the caller's context was canceled
	ResultNetworkError = "network_error" // no HTTP answer (refused, reset, DNS ...)
	ResultBadResponse  = "bad_response"  // an answer that is not a usable completion
)

var allResults = []string{
	ResultOK, ResultClientError, ResultRateLimited, ResultServerError,
	ResultTimeout, ResultCanceled, ResultNetworkError, ResultBadResponse,
}

// Options configure an OpenAI client; the zero value is usable.
type Options struct {
	// HTTPClient sends the requests; nil uses a client on
	// http.DefaultTransport. Its own Timeout, if any, also applies.
	HTTPClient *http.Client
	// Timeout bounds each attempt (default 60s). The caller's context bounds
	// the whole call, retries and waits included.
	Timeout time.Duration
	// MaxRetries is how many times a failed attempt is retried (408, 409,
	// 429, 5xx, answers that are not a completion, network errors, attempt
	// timeouts): 0 means DefaultMaxRetries, a negative value means never.
	MaxRetries int
	// MinBackoff and MaxBackoff bound the exponential backoff (with jitter)
	// used when the provider sends no Retry-After (defaults 500ms, 30s).
	MinBackoff, MaxBackoff time.Duration
	// MaxRetryAfter is the longest Retry-After honoured (default 2m); a
	// longer one fails the call at once rather than parking a worker.
	MaxRetryAfter time.Duration
	// Registerer receives inboxd_llm_requests_total and
	// inboxd_llm_tokens_total; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger gets retries at debug level (never prompts or keys); nil
	// discards.
	Logger *slog.Logger
}

// OpenAI is a Client for OpenAI-compatible chat completions (OpenAI,
// OpenRouter, Ollama, vLLM ...) built on the official openai-go client. It
// holds no credentials: every request carries its own Endpoint. It is safe
// for concurrent use.
//
// Retries are done here rather than by openai-go (which runs each attempt
// with retries off): the SDK honours Retry-After, but it does not retry an
// attempt that hit its per-attempt timeout, its backoff base cannot be
// configured, and it sleeps towards a deadline it cannot meet. This loop
// retries what the official SDKs retry (408, 409, 429 and 5xx answers,
// network errors, attempt timeouts) and also a 200 that is not a usable
// completion (not JSON, cut short, another shape, no choices: a proxy or
// an overloaded upstream, as OpenRouter answers at times); it does not
// retry other 4xx answers nor a 429 that says the quota is spent
// (insufficient_quota: asking again cannot help). It honours
// Retry-After(-Ms) as seconds or an HTTP date, gives up at once when the
// next attempt would start after the context's deadline, and counts every
// attempt in the metrics. A failed call costs no tokens: only a completion
// carries usage.
type OpenAI struct {
	http          *http.Client
	timeout       time.Duration
	maxRetries    int
	minBackoff    time.Duration
	maxBackoff    time.Duration
	maxRetryAfter time.Duration
	log           *slog.Logger

	requests *prometheus.CounterVec
	tokens   *prometheus.CounterVec
}

var _ Client = (*OpenAI)(nil)

// NewOpenAI builds a client. It panics only if Registerer holds a different
// collector under one of its metric names.
func NewOpenAI(opts Options) *OpenAI {
	c := &OpenAI{
		http:          opts.HTTPClient,
		timeout:       opts.Timeout,
		maxRetries:    opts.MaxRetries,
		minBackoff:    opts.MinBackoff,
		maxBackoff:    opts.MaxBackoff,
		maxRetryAfter: opts.MaxRetryAfter,
		log:           opts.Logger,
	}
	if c.http == nil {
		c.http = &http.Client{Transport: http.DefaultTransport}
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	switch {
	case c.maxRetries == 0:
		c.maxRetries = DefaultMaxRetries
	case c.maxRetries < 0:
		c.maxRetries = 0
	}
	if c.minBackoff <= 0 {
		c.minBackoff = DefaultMinBackoff
	}
	if c.maxBackoff <= 0 {
		c.maxBackoff = DefaultMaxBackoff
	}
	if c.maxBackoff < c.minBackoff {
		c.maxBackoff = c.minBackoff
	}
	if c.maxRetryAfter <= 0 {
		c.maxRetryAfter = DefaultMaxRetryAfter
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}

	c.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "inboxd_llm_requests_total",
		Help: "LLM chat-completion HTTP attempts (retries included), by result: " + strings.Join(allResults, ", ") + ".",
	}, []string{"result"})
	c.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "inboxd_llm_tokens_total",
		Help: "Tokens reported by LLM providers for successful completions, by kind: prompt, completion.",
	}, []string{"kind"})
	if opts.Registerer != nil {
		c.requests = register(opts.Registerer, c.requests)
		c.tokens = register(opts.Registerer, c.tokens)
	}
	for _, r := range allResults {
		c.requests.WithLabelValues(r)
	}
	c.tokens.WithLabelValues("prompt")
	c.tokens.WithLabelValues("completion")
	return c
}

// register registers cv, or reuses the identical collector already there
// (two clients on one registry share their counters).
func register(reg prometheus.Registerer, cv *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(cv); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("llm: register metrics: %v", err))
	}
	return cv
}

// APIError is an error answer of the provider. Message has the request's API
// key redacted.
type APIError struct {
	StatusCode int
	Message    string
	Type       string // the provider's error type, when given
	Code       string // the provider's error code, when given
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = strings.ToLower(http.StatusText(e.StatusCode))
	}
	if e.StatusCode == 0 {
		return msg
	}
	return strconv.Itoa(e.StatusCode) + " " + msg
}

// IsAuthError reports whether err is the provider refusing the credentials
// (401 or 403): a settings problem to show the user, not a transient failure.
func IsAuthError(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.StatusCode == http.StatusUnauthorized || ae.StatusCode == http.StatusForbidden)
}

// chatError is the error Chat returns: its text is built once with the API
// key redacted; Unwrap keeps the cause (APIError, context errors) reachable.
type chatError struct {
	text string
	err  error
}

func (e *chatError) Error() string { return e.text }
func (e *chatError) Unwrap() error { return e.err }

// call is one Chat in flight.
type call struct {
	model   string
	display string // the base URL without credentials, query or trailing slash
	apiKey  string
}

func (k *call) fail(err error) error {
	text := fmt.Sprintf("llm: chat with model %q at %s: %v", k.model, k.display, err)
	return &chatError{text: k.redact(text), err: err}
}

func (k *call) redact(s string) string {
	if k.apiKey == "" {
		return s
	}
	return strings.ReplaceAll(s, k.apiKey, "[redacted]")
}

// Chat sends one chat completion to req.Endpoint, retrying as the type
// documents.
func (c *OpenAI) Chat(ctx context.Context, req Request) (Response, error) {
	base, display, err := parseBaseURL(req.Endpoint.BaseURL)
	k := &call{model: req.Model, display: display, apiKey: req.Endpoint.APIKey}
	if err != nil {
		return Response{}, k.fail(err)
	}
	if req.Model == "" {
		return Response{}, k.fail(errors.New("no model given"))
	}
	params, err := buildParams(req, base)
	if err != nil {
		return Response{}, k.fail(err)
	}
	opts := []option.RequestOption{
		option.WithBaseURL(base.String()),
		option.WithHTTPClient(c.http),
		option.WithMaxRetries(0),
	}
	if req.Endpoint.APIKey != "" {
		opts = append(opts, option.WithAPIKey(req.Endpoint.APIKey))
	}
	// A service, not openai.NewClient: NewClient would read OPENAI_API_KEY
	// and OPENAI_BASE_URL from the environment, a global default key.
	svc := openai.NewChatCompletionService(opts...)

	for attempt := 0; ; attempt++ {
		resp, out := c.attempt(ctx, &svc, params, k)
		c.requests.WithLabelValues(out.result).Inc()
		if out.err == nil {
			c.tokens.WithLabelValues("prompt").Add(float64(resp.Usage.PromptTokens))
			c.tokens.WithLabelValues("completion").Add(float64(resp.Usage.CompletionTokens))
			return resp, nil
		}
		attempts := attempt + 1
		if !out.retry {
			return Response{}, k.fail(out.err)
		}
		if attempt >= c.maxRetries {
			return Response{}, k.fail(fmt.Errorf("%w (gave up after %d attempts)", out.err, attempts))
		}
		delay := c.backoff(attempt)
		if out.retryAfter >= 0 {
			if out.retryAfter > c.maxRetryAfter {
				return Response{}, k.fail(fmt.Errorf("%w (the provider asks to retry after %s, longer than the %s we wait)",
					out.err, out.retryAfter.Round(time.Second), c.maxRetryAfter))
			}
			delay = out.retryAfter
		}
		if deadline, ok := ctx.Deadline(); ok && time.Now().Add(delay).After(deadline) {
			return Response{}, k.fail(fmt.Errorf("%w (after %s; the next one, in %s, would start after the deadline: %w)",
				out.err, attemptsText(attempts), delay.Round(time.Millisecond), context.DeadlineExceeded))
		}
		c.log.DebugContext(ctx, "llm: retrying chat completion",
			"model", req.Model, "endpoint", display, "attempt", attempts, "result", out.result,
			"error", k.redact(out.err.Error()), "delay", delay)
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return Response{}, k.fail(fmt.Errorf("%w (after %s; gave up waiting to retry: %w)", out.err, attemptsText(attempts), ctx.Err()))
		}
	}
}

func attemptsText(n int) string {
	if n == 1 {
		return "1 attempt"
	}
	return strconv.Itoa(n) + " attempts"
}

// outcome classifies one attempt.
type outcome struct {
	result     string
	err        error
	retry      bool
	retryAfter time.Duration // -1: none given
}

func (c *OpenAI) attempt(ctx context.Context, svc *openai.ChatCompletionService, params openai.ChatCompletionNewParams, k *call) (Response, outcome) {
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var httpRes *http.Response
	completion, err := svc.New(actx, params, option.WithResponseInto(&httpRes))

	if err == nil {
		resp, err := convertCompletion(completion, k)
		if err == nil {
			return resp, outcome{result: ResultOK, retryAfter: -1}
		}
		var ae *APIError
		if errors.As(err, &ae) { // an error object in a 200 answer
			out := classifyStatus(ae.StatusCode)
			out.err = err
			return Response{}, out
		}
		return Response{}, outcome{result: ResultBadResponse, retry: true, err: err, retryAfter: -1}
	}
	switch {
	case ctx.Err() != nil: // the caller gave up during the attempt
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return Response{}, outcome{result: ResultTimeout, err: ctx.Err(), retryAfter: -1}
		}
		return Response{}, outcome{result: ResultCanceled, err: ctx.Err(), retryAfter: -1}
	case httpRes != nil && httpRes.StatusCode >= 400:
		return Response{}, statusOutcome(httpRes, k)
	case actx.Err() != nil:
		return Response{}, outcome{result: ResultTimeout, retry: true, retryAfter: -1,
			err: fmt.Errorf("attempt timed out after %s: %w", c.timeout, context.DeadlineExceeded)}
	case httpRes == nil:
		var ue *url.Error
		if !errors.As(err, &ue) { // the request could not even be built
			return Response{}, outcome{result: ResultClientError, retryAfter: -1, err: fmt.Errorf("cannot send the request: %w", err)}
		}
		return Response{}, outcome{result: ResultNetworkError, retry: true, retryAfter: -1, err: networkError(err)}
	default:
		return Response{}, outcome{result: ResultBadResponse, retry: true, retryAfter: -1,
			err: fmt.Errorf("invalid response (HTTP %d): %w", httpRes.StatusCode, err)}
	}
}

// classifyStatus says how an error status counts and whether it is retried.
func classifyStatus(status int) outcome {
	switch {
	case status == http.StatusTooManyRequests:
		return outcome{result: ResultRateLimited, retry: true, retryAfter: -1}
	case status >= 500:
		return outcome{result: ResultServerError, retry: true, retryAfter: -1}
	case status == http.StatusRequestTimeout, status == http.StatusConflict:
		return outcome{result: ResultClientError, retry: true, retryAfter: -1}
	default:
		return outcome{result: ResultClientError, retryAfter: -1}
	}
}

// quotaSpent reports whether a 429 says the account's quota or credit is
// spent (OpenAI's insufficient_quota), rather than a rate limit.
func quotaSpent(ae *APIError) bool {
	return ae.StatusCode == http.StatusTooManyRequests && (ae.Code == "insufficient_quota" || ae.Type == "insufficient_quota")
}

func statusOutcome(res *http.Response, k *call) outcome {
	out := classifyStatus(res.StatusCode)
	var body []byte
	if res.Body != nil {
		body, _ = io.ReadAll(io.LimitReader(res.Body, 64<<10))
	}
	ae := errorFromBody(res.StatusCode, body)
	ae.Message = k.redact(ae.Message)
	out.err = ae
	out.retry = out.retry && !quotaSpent(ae)
	if out.retry {
		if d, ok := parseRetryAfter(res.Header, time.Now()); ok {
			out.retryAfter = d
		}
	}
	return out
}

// errorFromBody reads {"error":{"message","type","code"}} (OpenAI,
// OpenRouter, vLLM), {"error":"text"} (Ollama), {"message":"text"}, or
// falls back to the start of a non-JSON body.
func errorFromBody(status int, body []byte) *APIError {
	ae := &APIError{StatusCode: status}
	var env struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(body, &env) == nil {
		var obj struct {
			Message string          `json:"message"`
			Type    string          `json:"type"`
			Code    json.RawMessage `json:"code"`
		}
		var s string
		switch {
		case json.Unmarshal(env.Error, &obj) == nil && obj.Message != "":
			ae.Message, ae.Type, ae.Code = obj.Message, obj.Type, rawScalar(obj.Code)
		case json.Unmarshal(env.Error, &s) == nil && s != "":
			ae.Message = s
		case env.Message != "":
			ae.Message = env.Message
		}
		if ae.Message != "" {
			return ae
		}
	}
	text := strings.Join(strings.Fields(string(body)), " ")
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	ae.Message = text
	return ae
}

// rawScalar renders a JSON string or number ("invalid_api_key", 429).
func rawScalar(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// parseRetryAfter reads Retry-After-Ms, then Retry-After as seconds or an
// HTTP date; a date in the past means now.
func parseRetryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	if v := strings.TrimSpace(h.Get("Retry-After-Ms")); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms >= 0 && ms < 1e12 {
			return time.Duration(ms * float64(time.Millisecond)), true
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || secs > 1e9 {
			return 0, false
		}
		return time.Duration(secs * float64(time.Second)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// backoff is the wait before retry number attempt+1 without Retry-After:
// MinBackoff doubling per attempt up to MaxBackoff, with "equal jitter"
// (half fixed, half random) so that many workers do not retry in step.
func (c *OpenAI) backoff(attempt int) time.Duration {
	d := c.minBackoff
	for i := 0; i < attempt && d < c.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.maxBackoff)
	half := d / 2
	return half + rand.N(half+1)
}

// networkError drops the request URL from a transport error (the base URL
// may carry credentials of its own) and keeps the cause.
func networkError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("network timeout: %w", err)
	}
	return fmt.Errorf("network error: %w", err)
}

// parseBaseURL checks the endpoint's base URL and returns it (for the SDK)
// and a display form without user info, query or fragment.
func parseBaseURL(raw string) (*url.URL, string, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		raw = DefaultBaseURL
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, "(invalid base URL)", errors.New("invalid base URL: want http(s)://host[/path]")
	}
	display := u.Scheme + "://" + u.Host + strings.TrimRight(u.EscapedPath(), "/")
	return u, display, nil
}

// buildParams converts a Request into the SDK's parameters.
func buildParams(req Request, base *url.URL) (openai.ChatCompletionNewParams, error) {
	p := openai.ChatCompletionNewParams{Model: req.Model}
	if len(req.Messages) == 0 {
		return p, errors.New("no messages given")
	}
	for i, m := range req.Messages {
		mp, err := messageParam(m)
		if err != nil {
			return p, fmt.Errorf("message %d: %w", i, err)
		}
		p.Messages = append(p.Messages, mp)
	}
	for _, t := range req.Tools {
		tp, err := toolParam(t)
		if err != nil {
			return p, err
		}
		p.Tools = append(p.Tools, tp)
	}
	if req.JSONObject {
		p.ResponseFormat = openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}}
	}
	if req.MaxTokens > 0 {
		// OpenAI's reasoning models refuse max_tokens; most other
		// OpenAI-compatible servers only know max_tokens.
		if strings.EqualFold(base.Hostname(), "api.openai.com") {
			p.MaxCompletionTokens = param.NewOpt(int64(req.MaxTokens))
		} else {
			p.MaxTokens = param.NewOpt(int64(req.MaxTokens))
		}
	}
	return p, nil
}

func messageParam(m Message) (openai.ChatCompletionMessageParamUnion, error) {
	switch m.Role {
	case RoleSystem:
		u := openai.SystemMessage(m.Content)
		if m.Name != "" {
			u.OfSystem.Name = param.NewOpt(m.Name)
		}
		return u, nil
	case RoleUser:
		u := openai.UserMessage(m.Content)
		if m.Name != "" {
			u.OfUser.Name = param.NewOpt(m.Name)
		}
		return u, nil
	case RoleAssistant:
		var a openai.ChatCompletionAssistantMessageParam
		// Content is required unless there are tool calls.
		if m.Content != "" || len(m.ToolCalls) == 0 {
			a.Content.OfString = param.NewOpt(m.Content)
		}
		if m.Name != "" {
			a.Name = param.NewOpt(m.Name)
		}
		for _, tc := range m.ToolCalls {
			if tc.ID == "" || tc.Name == "" {
				return openai.ChatCompletionMessageParamUnion{}, errors.New("assistant tool call without id or name")
			}
			args := string(bytes.TrimSpace(tc.Arguments))
			if args == "" || args == "null" {
				args = "{}"
			} else if args[0] == '"' {
				// Arguments that were not JSON were kept as a JSON string
				// (see convertCompletion); send back what the model wrote.
				var s string
				if json.Unmarshal([]byte(args), &s) == nil {
					args = s
				}
			}
			a.ToolCalls = append(a.ToolCalls, openai.ChatCompletionMessageToolCallUnionParam{
				OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
					ID:       tc.ID,
					Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: tc.Name, Arguments: args},
				},
			})
		}
		return openai.ChatCompletionMessageParamUnion{OfAssistant: &a}, nil
	case RoleTool:
		if m.ToolCallID == "" {
			return openai.ChatCompletionMessageParamUnion{}, errors.New("tool message without tool_call_id")
		}
		// The OpenAI wire shape has no name on tool messages; Name stays local.
		return openai.ToolMessage(m.Content, m.ToolCallID), nil
	default:
		return openai.ChatCompletionMessageParamUnion{}, fmt.Errorf("unknown role %q", m.Role)
	}
}

func toolParam(t ToolDef) (openai.ChatCompletionToolUnionParam, error) {
	if t.Name == "" {
		return openai.ChatCompletionToolUnionParam{}, errors.New("tool without a name")
	}
	params := shared.FunctionParameters{"type": "object", "properties": map[string]any{}}
	if raw := bytes.TrimSpace(t.Parameters); len(raw) > 0 && string(raw) != "null" {
		// Plain float64 numbers: the SDK's encoder writes a json.Number
		// as a string.
		params = nil
		if err := json.Unmarshal(raw, &params); err != nil || params == nil {
			return openai.ChatCompletionToolUnionParam{}, fmt.Errorf("tool %q: parameters are not a JSON object", t.Name)
		}
	}
	fd := shared.FunctionDefinitionParam{Name: t.Name, Parameters: params}
	if t.Description != "" {
		fd.Description = param.NewOpt(t.Description)
	}
	return openai.ChatCompletionFunctionTool(fd), nil
}

// convertCompletion turns the SDK's completion into a Response.
func convertCompletion(cc *openai.ChatCompletion, k *call) (Response, error) {
	if cc == nil {
		return Response{}, errors.New("invalid response: empty body")
	}
	var extra struct {
		Usage struct {
			Cost json.Number `json:"cost"`
		} `json:"usage"`
		Error json.RawMessage `json:"error"`
	}
	_ = json.Unmarshal([]byte(cc.RawJSON()), &extra)

	if len(cc.Choices) == 0 {
		// OpenRouter answers some upstream failures with 200 and an error.
		if len(extra.Error) > 0 && string(extra.Error) != "null" {
			ae := errorFromBody(0, []byte(`{"error":`+string(extra.Error)+`}`))
			ae.StatusCode = http.StatusBadGateway
			if n, err := strconv.Atoi(ae.Code); err == nil && n >= 400 && n <= 599 {
				ae.StatusCode = n
			}
			ae.Message = k.redact(ae.Message)
			return Response{}, ae
		}
		return Response{}, errors.New("invalid response: no choices")
	}
	ch := cc.Choices[0]
	if !ch.JSON.Message.Valid() {
		return Response{}, errors.New("invalid response: the choice has no message object")
	}
	msg := Message{Role: RoleAssistant, Content: ch.Message.Content}
	for i, tc := range ch.Message.ToolCalls {
		if tc.Type != "" && tc.Type != "function" {
			continue // custom tools are never offered
		}
		id := tc.ID
		if id == "" { // some local servers omit ids; results must still match
			id = "call_" + strconv.Itoa(i)
		}
		msg.ToolCalls = append(msg.ToolCalls, ToolCall{ID: id, Name: tc.Function.Name, Arguments: toolArguments(tc.Function.Arguments)})
	}
	// Negative counts (a broken server) are dropped: they would lower the
	// user's totals, and a Prometheus counter panics on them.
	u := Usage{
		PromptTokens:     int(max(cc.Usage.PromptTokens, 0)),
		CompletionTokens: int(max(cc.Usage.CompletionTokens, 0)),
		TotalTokens:      int(max(cc.Usage.TotalTokens, 0)),
	}
	if u.TotalTokens < u.PromptTokens+u.CompletionTokens {
		u.TotalTokens = u.PromptTokens + u.CompletionTokens
	}
	if f, err := extra.Usage.Cost.Float64(); err == nil && f > 0 {
		u.Cost = f
	}
	return Response{Message: msg, Usage: u, FinishReason: ch.FinishReason}, nil
}

// toolArguments keeps the model's arguments as JSON: "" becomes {}, text
// that is not JSON becomes a JSON string (so a Message always marshals and
// the tool runner reports "arguments are not an object" to the model).
func toolArguments(s string) json.RawMessage {
	s = strings.TrimSpace(s)
	if s == "" {
		return json.RawMessage("{}")
	}
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(s)
	return json.RawMessage(b)
}
