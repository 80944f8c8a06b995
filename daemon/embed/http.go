package embed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Public endpoints of the providers that have one.
const (
	openAIBaseURL = "https://api.openai.com/v1"
	voyageBaseURL = "https://api.voyageai.com/v1"
)

// Retry defaults (see Options).
const (
	defaultMaxRetries    = 4
	defaultRetryDelay    = 500 * time.Millisecond
	defaultMaxRetryDelay = 60 * time.Second
	defaultHTTPTimeout   = 2 * time.Minute
	maxErrorBody         = 64 << 10 // bytes of an error response read for its message
	maxResponseBody      = 1 << 30  // a 2048 x 3072-float batch is ~130 MB of JSON
)

// HTTPError is a provider's refusal: the HTTP status and the provider's
// message (with the API key, should the provider echo it, redacted).
type HTTPError struct {
	Provider   string
	StatusCode int
	Message    string
	// RetryAfter is the provider's Retry-After, when it sent one.
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("embed: %s: HTTP %d", e.Provider, e.StatusCode)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return msg
}

// Temporary reports whether the request may succeed when retried (429, 5xx).
func (e *HTTPError) Temporary() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// httpBackend speaks OpenAI's and Voyage's /embeddings (the same response
// shape; the request differs in a few fields).
type httpBackend struct {
	model    Model
	endpoint string // .../embeddings
	apiKey   string
	hc       *http.Client

	maxRetries    int
	retryDelay    time.Duration
	maxRetryDelay time.Duration
}

func newHTTPBackend(model Model, apiKey string, opts Options) (*httpBackend, error) {
	base := model.BaseURL
	if opts.BaseURL != "" {
		base = opts.BaseURL
	}
	if base == "" {
		switch model.Provider {
		case ProviderOpenAI:
			base = openAIBaseURL
		case ProviderVoyage:
			base = voyageBaseURL
		default:
			return nil, fmt.Errorf("embed: model %q (%s) needs a base URL", model.Key, model.Provider)
		}
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("embed: model %q: base URL is not an http(s) URL", model.Key)
	}
	b := &httpBackend{
		model:         model,
		endpoint:      strings.TrimRight(base, "/") + "/embeddings",
		apiKey:        apiKey,
		hc:            opts.HTTPClient,
		maxRetries:    opts.MaxRetries,
		retryDelay:    opts.RetryDelay,
		maxRetryDelay: opts.MaxRetryDelay,
	}
	if b.hc == nil {
		b.hc = &http.Client{Timeout: defaultHTTPTimeout}
	}
	switch {
	case b.maxRetries == 0:
		b.maxRetries = defaultMaxRetries
	case b.maxRetries < 0:
		b.maxRetries = 0
	}
	if b.retryDelay <= 0 {
		b.retryDelay = defaultRetryDelay
	}
	if b.maxRetryDelay <= 0 {
		b.maxRetryDelay = defaultMaxRetryDelay
	}
	return b, nil
}

// request bodies.
type openAIRequest struct {
	Model          string   `json:"model"`
	Input          []string `json:"input"`
	EncodingFormat string   `json:"encoding_format"`
	Dimensions     int      `json:"dimensions,omitempty"`
}

type voyageRequest struct {
	Model           string   `json:"model"`
	Input           []string `json:"input"`
	InputType       string   `json:"input_type,omitempty"`
	OutputDimension int      `json:"output_dimension,omitempty"`
	// Truncation false: Voyage errors on an over-long input instead of
	// cutting it silently (chunking keeps inputs within the limit).
	Truncation bool `json:"truncation"`
}

// embeddingResponse is the answer of both providers.
type embeddingResponse struct {
	Data []struct {
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	} `json:"data"`
}

func (b *httpBackend) body(texts []string, inputType string) ([]byte, error) {
	dims := 0
	if b.model.RequestDimensions {
		dims = b.model.Dimensions
	}
	if b.model.Provider == ProviderVoyage {
		return json.Marshal(voyageRequest{Model: b.model.Name, Input: texts, InputType: inputType, OutputDimension: dims})
	}
	return json.Marshal(openAIRequest{Model: b.model.Name, Input: texts, EncodingFormat: "float", Dimensions: dims})
}

func (b *httpBackend) embed(ctx context.Context, texts []string, inputType string) ([][]float32, error) {
	body, err := b.body(texts, inputType)
	if err != nil {
		return nil, fmt.Errorf("embed: encode request: %w", err)
	}
	for attempt := 0; ; attempt++ {
		vecs, retryable, err := b.once(ctx, body, len(texts))
		if err == nil {
			return vecs, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("embed: %s: %w", b.model.Provider, ctx.Err())
		}
		if !retryable || attempt >= b.maxRetries {
			return nil, err
		}
		delay := b.backoff(attempt)
		var he *HTTPError
		if errors.As(err, &he) && he.RetryAfter > 0 {
			if he.RetryAfter > b.maxRetryDelay {
				return nil, err // the provider asks for longer than we wait
			}
			delay = he.RetryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return nil, fmt.Errorf("%w (no retry: the deadline comes before the next attempt)", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("embed: %s: %w (after %v)", b.model.Provider, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// backoff is the exponential delay before retry attempt+1, with ±25% jitter,
// capped at maxRetryDelay.
func (b *httpBackend) backoff(attempt int) time.Duration {
	d := b.retryDelay << min(attempt, 20)
	if d <= 0 || d > b.maxRetryDelay {
		d = b.maxRetryDelay
	}
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}

// once sends one request and decodes the answer; retryable reports a
// failure worth another attempt (a network error, 429, 5xx).
func (b *httpBackend) once(ctx context.Context, body []byte, n int) (_ [][]float32, retryable bool, _ error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, false, fmt.Errorf("embed: %s: build request: %s", b.model.Provider, b.redact(err.Error()))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if b.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+b.apiKey)
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		// *url.Error names the URL, never headers; the key is redacted anyway
		// in case a base URL carried it.
		return nil, true, fmt.Errorf("embed: %s: %s", b.model.Provider, b.redact(err.Error()))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		he := &HTTPError{
			Provider:   b.model.Provider,
			StatusCode: resp.StatusCode,
			Message:    b.redact(errorMessage(data)),
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		}
		return nil, he.Temporary(), he
	}
	var er embeddingResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBody)).Decode(&er); err != nil {
		return nil, false, fmt.Errorf("embed: %s: decode response: %s", b.model.Provider, b.redact(err.Error()))
	}
	if len(er.Data) != n {
		return nil, false, fmt.Errorf("embed: %s: %d embeddings for %d inputs", b.model.Provider, len(er.Data), n)
	}
	sort.SliceStable(er.Data, func(i, j int) bool { return er.Data[i].Index < er.Data[j].Index })
	out := make([][]float32, n)
	for i, d := range er.Data {
		if d.Index != i {
			return nil, false, fmt.Errorf("embed: %s: response indexes are not 0..%d", b.model.Provider, n-1)
		}
		out[i] = d.Embedding
	}
	return out, false, nil
}

// redact removes the API key from s.
func (b *httpBackend) redact(s string) string {
	if b.apiKey == "" {
		return s
	}
	return strings.ReplaceAll(s, b.apiKey, "[redacted]")
}

// errorMessage extracts the provider's message from an error body: OpenAI
// {"error": {"message": ...}}, Voyage {"detail": ...}, else the text itself,
// shortened.
func errorMessage(data []byte) string {
	var probe struct {
		Error  json.RawMessage `json:"error"`
		Detail json.RawMessage `json:"detail"`
	}
	msg := ""
	if json.Unmarshal(data, &probe) == nil {
		var obj struct {
			Message string `json:"message"`
		}
		var s string
		switch {
		case json.Unmarshal(probe.Error, &obj) == nil && obj.Message != "":
			msg = obj.Message
		case json.Unmarshal(probe.Error, &s) == nil && s != "":
			msg = s
		case json.Unmarshal(probe.Detail, &s) == nil && s != "":
			msg = s
		case len(probe.Detail) > 0:
			msg = string(probe.Detail)
		}
	}
	if msg == "" {
		msg = string(data)
	}
	msg = strings.Join(strings.Fields(msg), " ")
	const maxLen = 300
	if len(msg) > maxLen {
		cut := maxLen
		for cut > 0 && (msg[cut]&0xC0) == 0x80 { // not inside a UTF-8 sequence
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return msg
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
