package embed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeProvider is a local OpenAI/Voyage-compatible /v1/embeddings server. It
// records every request and answers each input with the offline model's
// vector of that input (so callers can recompute the expected result), or
// with the queued failures first.
type fakeProvider struct {
	t    *testing.T
	srv  *httptest.Server
	dims int

	mu       sync.Mutex
	requests []fakeRequest
	failures []fakeFailure // answered in order before any success
	dimsOut  int           // when > 0, answer vectors of this size instead
}

type fakeRequest struct {
	Path          string
	Authorization string
	Body          map[string]any
	Input         []string
	At            time.Time
}

type fakeFailure struct {
	status     int
	retryAfter string
	body       string
}

func newFakeProvider(t *testing.T, dims int) *fakeProvider {
	f := &fakeProvider{t: t, dims: dims}
	f.srv = httptest.NewServer(http.HandlerFunc(f.handle))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeProvider) URL() string { return f.srv.URL + "/v1" }

func (f *fakeProvider) fail(status int, retryAfter, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, fakeFailure{status, retryAfter, body})
}

func (f *fakeProvider) recorded() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

func (f *fakeProvider) handle(w http.ResponseWriter, r *http.Request) {
	data, _ := io.ReadAll(r.Body)
	var body map[string]any
	if err := json.Unmarshal(data, &body); err != nil {
		http.Error(w, `{"error":{"message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	var input []string
	if in, ok := body["input"].([]any); ok {
		for _, s := range in {
			str, _ := s.(string)
			input = append(input, str)
		}
	}
	f.mu.Lock()
	f.requests = append(f.requests, fakeRequest{Path: r.URL.Path, Authorization: r.Header.Get("Authorization"), Body: body, Input: input, At: time.Now()})
	var failure *fakeFailure
	if len(f.failures) > 0 {
		failure = &f.failures[0]
		f.failures = f.failures[1:]
	}
	dims := f.dims
	if f.dimsOut > 0 {
		dims = f.dimsOut
	}
	f.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodPost || r.URL.Path != "/v1/embeddings" {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	if failure != nil {
		if failure.retryAfter != "" {
			w.Header().Set("Retry-After", failure.retryAfter)
		}
		w.WriteHeader(failure.status)
		io.WriteString(w, failure.body)
		return
	}
	type item struct {
		Object    string    `json:"object"`
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	}
	resp := struct {
		Object string `json:"object"`
		Data   []item `json:"data"`
		Model  any    `json:"model"`
	}{Object: "list", Model: body["model"]}
	// Answer in reverse order: clients must sort by index.
	for i := len(input) - 1; i >= 0; i-- {
		resp.Data = append(resp.Data, item{Object: "embedding", Index: i, Embedding: hashEmbed(input[i], dims)})
	}
	json.NewEncoder(w).Encode(resp)
}

func testModel(provider string, dims int) Model {
	return Model{Key: "test-" + provider, Provider: provider, Name: "test-model", Dimensions: dims, MaxBatchSize: 100, RequestDimensions: true}
}

func fastRetries() Options {
	return Options{RetryDelay: time.Millisecond, MaxRetryDelay: 2 * time.Second}
}

func closeTo(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-5 {
			return false
		}
	}
	return true
}

func TestOpenAIRequestShape(t *testing.T) {
	f := newFakeProvider(t, 16)
	opts := fastRetries()
	opts.BaseURL = f.URL()
	e, err := New(testModel(ProviderOpenAI, 16), "sk-test-key", opts)
	if err != nil {
		t.Fatal(err)
	}
	texts := []string{"first text", "second text", "third"}
	got, err := e.Embed(context.Background(), texts)
	if err != nil {
		t.Fatal(err)
	}
	for i, text := range texts {
		if !closeTo(got[i], hashEmbed(text, 16)) {
			t.Errorf("vector %d is not the server's vector for %q (order lost?)", i, text)
		}
	}
	reqs := f.recorded()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Path != "/v1/embeddings" || r.Authorization != "Bearer sk-test-key" {
		t.Errorf("path %q, authorization %q", r.Path, r.Authorization)
	}
	if r.Body["model"] != "test-model" || r.Body["encoding_format"] != "float" || r.Body["dimensions"] != float64(16) {
		t.Errorf("body = %v", r.Body)
	}
	if strings.Join(r.Input, "|") != "first text|second text|third" {
		t.Errorf("input = %q", r.Input)
	}
	if _, ok := r.Body["input_type"]; ok {
		t.Error("OpenAI requests carry no input_type")
	}
}

func TestVoyageRequestShape(t *testing.T) {
	f := newFakeProvider(t, 8)
	m := testModel(ProviderVoyage, 8)
	m.BaseURL = f.URL() // from the catalog entry this time
	e, err := New(m, "pa-voyage-key", fastRetries())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := e.Embed(ctx, []string{"a document"}); err != nil {
		t.Fatal(err)
	}
	q, err := Query(ctx, e, "a query")
	if err != nil {
		t.Fatal(err)
	}
	if !closeTo(q, hashEmbed("a query", 8)) {
		t.Error("query vector is not the server's")
	}
	reqs := f.recorded()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	for i, wantType := range []string{"document", "query"} {
		b := reqs[i].Body
		if b["input_type"] != wantType || b["output_dimension"] != float64(8) || b["truncation"] != false || b["model"] != "test-model" {
			t.Errorf("request %d body = %v", i, b)
		}
		if reqs[i].Authorization != "Bearer pa-voyage-key" {
			t.Errorf("authorization %q", reqs[i].Authorization)
		}
	}
}

func TestOpenAICompatible(t *testing.T) {
	f := newFakeProvider(t, 4)
	m := testModel(ProviderOpenAICompatible, 4)
	m.RequestDimensions = false
	if _, err := New(m, "", Options{}); err == nil || !strings.Contains(err.Error(), "base URL") {
		t.Fatalf("no base URL: %v", err)
	}
	if _, err := New(m, "", Options{BaseURL: "ftp://x"}); err == nil {
		t.Fatal("non-http base URL accepted")
	}
	e, err := New(m, "", Options{BaseURL: f.URL() + "/"}) // Ollama needs no key
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Embed(context.Background(), []string{"x"}); err != nil {
		t.Fatal(err)
	}
	r := f.recorded()[0]
	if r.Authorization != "" || r.Path != "/v1/embeddings" {
		t.Errorf("authorization %q path %q", r.Authorization, r.Path)
	}
	if _, ok := r.Body["dimensions"]; ok {
		t.Error("dimensions sent although request_dimensions is off")
	}
	if _, err := New(testModel(ProviderOpenAI, 4), " ", Options{BaseURL: f.URL()}); err == nil {
		t.Error("openai without a key accepted")
	}
}

func TestBatching(t *testing.T) {
	f := newFakeProvider(t, 8)
	m := testModel(ProviderOpenAI, 8)
	m.MaxBatchSize = 3
	opts := fastRetries()
	opts.BaseURL = f.URL()
	e, err := New(m, "k", opts)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for i := range 7 {
		texts = append(texts, fmt.Sprintf("text number %d", i))
	}
	got, err := e.Embed(context.Background(), texts)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, r := range f.recorded() {
		sizes = append(sizes, len(r.Input))
	}
	if fmt.Sprint(sizes) != "[3 3 1]" {
		t.Errorf("batch sizes %v, want [3 3 1]", sizes)
	}
	for i, text := range texts {
		if !closeTo(got[i], hashEmbed(text, 8)) {
			t.Errorf("vector %d out of order", i)
		}
	}

	// A token budget per request splits batches by size too.
	f2 := newFakeProvider(t, 8)
	m.MaxBatchSize = 100
	m.MaxInputChars = 40
	m.MaxBatchTokens = 50 // 100 chars a request
	opts.BaseURL = f2.URL()
	e, _ = New(m, "k", opts)
	texts = []string{strings.Repeat("a", 40), strings.Repeat("b", 40), strings.Repeat("c", 40), "d"}
	if _, err := e.Embed(context.Background(), texts); err != nil {
		t.Fatal(err)
	}
	sizes = nil
	for _, r := range f2.recorded() {
		sizes = append(sizes, len(r.Input))
	}
	if fmt.Sprint(sizes) != "[2 2]" {
		t.Errorf("batch sizes under a token budget %v, want [2 2]", sizes)
	}
}

func TestChunkingLongInput(t *testing.T) {
	f := newFakeProvider(t, 32)
	m := testModel(ProviderOpenAI, 32)
	m.MaxInputChars = 100
	m.MaxBatchSize = 2
	opts := fastRetries()
	opts.BaseURL = f.URL()
	e, err := New(m, "k", opts)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("Budget numbers for the third quarter are final. ", 3) + "\n\n" +
		strings.Repeat("The offsite moves to the lake house in May. ", 3) + "\n\n" +
		strings.Repeat("Please send the signed contract by Friday. ", 3)
	texts := []string{"short one", long}
	es, err := e.(*Client).EmbedDocuments(context.Background(), texts)
	if err != nil {
		t.Fatal(err)
	}
	pieces := m.Split(long)
	if len(pieces) < 3 || es[1].Chunks != len(pieces) || es[0].Chunks != 1 {
		t.Fatalf("chunks: short %d, long %d, Split %d", es[0].Chunks, es[1].Chunks, len(pieces))
	}
	var sent []string
	for _, r := range f.recorded() {
		if len(r.Input) > 2 {
			t.Errorf("batch of %d > max_batch_size 2", len(r.Input))
		}
		for _, in := range r.Input {
			if len([]rune(in)) > 100 {
				t.Errorf("input of %d chars sent, limit 100", len([]rune(in)))
			}
			sent = append(sent, in)
		}
	}
	if len(sent) != 1+len(pieces) {
		t.Fatalf("sent %d inputs, want %d", len(sent), 1+len(pieces))
	}
	// The long text's vector is the length-weighted mean of its chunks' vectors, normalised.
	acc := make([]float64, 32)
	for _, p := range pieces {
		v := hashEmbed(p, 32)
		for i := range v {
			acc[i] += float64(v[i]) * float64(len([]rune(p)))
		}
	}
	if !closeTo(es[1].Vector, normalize(acc)) {
		t.Error("long text vector is not the weighted mean of its chunks")
	}
	if n := dot(es[1].Vector, es[1].Vector); math.Abs(n-1) > 1e-5 {
		t.Errorf("norm² %v", n)
	}
}

func TestRetryOn429HonoursRetryAfter(t *testing.T) {
	f := newFakeProvider(t, 4)
	f.fail(http.StatusTooManyRequests, "1", `{"error":{"message":"Rate limit reached","type":"requests"}}`)
	f.fail(http.StatusServiceUnavailable, "", `upstream overloaded`)
	opts := fastRetries()
	opts.BaseURL = f.URL()
	e, _ := New(testModel(ProviderOpenAI, 4), "k", opts)
	start := time.Now()
	if _, err := e.Embed(context.Background(), []string{"x"}); err != nil {
		t.Fatal(err)
	}
	reqs := f.recorded()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3 (429, 503, ok)", len(reqs))
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < 900*time.Millisecond {
		t.Errorf("retried after %v, Retry-After said 1s", gap)
	}
	if time.Since(start) > 10*time.Second {
		t.Error("too slow")
	}
}

func TestRetryLimitsAndErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("gives up after MaxRetries", func(t *testing.T) {
		f := newFakeProvider(t, 4)
		for range 5 {
			f.fail(http.StatusInternalServerError, "", `{"error":{"message":"boom"}}`)
		}
		opts := fastRetries()
		opts.BaseURL = f.URL()
		opts.MaxRetries = 2
		e, _ := New(testModel(ProviderOpenAI, 4), "k", opts)
		_, err := e.Embed(ctx, []string{"x"})
		var he *HTTPError
		if !errors.As(err, &he) || he.StatusCode != 500 || he.Message != "boom" {
			t.Fatalf("err = %v", err)
		}
		if n := len(f.recorded()); n != 3 {
			t.Errorf("%d attempts, want 3", n)
		}
	})
	t.Run("4xx is not retried; the key is never in the error", func(t *testing.T) {
		f := newFakeProvider(t, 4)
		const key = "sk-live-SECRET-0123456789"
		f.fail(http.StatusUnauthorized, "", `{"error":{"message":"Incorrect API key provided: `+key+`."}}`)
		opts := fastRetries()
		opts.BaseURL = f.URL()
		e, _ := New(testModel(ProviderOpenAI, 4), key, opts)
		_, err := e.Embed(ctx, []string{"x"})
		if err == nil || strings.Contains(err.Error(), key) || strings.Contains(err.Error(), "SECRET") {
			t.Fatalf("err = %v", err)
		}
		if !strings.HasPrefix(err.Error(), "embed: openai: HTTP 401") || !strings.Contains(err.Error(), "[redacted]") {
			t.Errorf("err = %v", err)
		}
		if n := len(f.recorded()); n != 1 {
			t.Errorf("%d attempts, want 1", n)
		}
	})
	t.Run("Voyage detail message", func(t *testing.T) {
		f := newFakeProvider(t, 4)
		f.fail(http.StatusBadRequest, "", `{"detail":"Input text too long"}`)
		m := testModel(ProviderVoyage, 4)
		e, _ := New(m, "k", Options{BaseURL: f.URL()})
		if _, err := e.Embed(ctx, []string{"x"}); err == nil || !strings.Contains(err.Error(), "Input text too long") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("Retry-After beyond MaxRetryDelay fails at once", func(t *testing.T) {
		f := newFakeProvider(t, 4)
		f.fail(http.StatusTooManyRequests, "3600", `{"error":{"message":"quota"}}`)
		opts := fastRetries()
		opts.BaseURL = f.URL()
		e, _ := New(testModel(ProviderOpenAI, 4), "k", opts)
		_, err := e.Embed(ctx, []string{"x"})
		var he *HTTPError
		if !errors.As(err, &he) || he.RetryAfter != time.Hour || len(f.recorded()) != 1 {
			t.Errorf("err = %v after %d requests", err, len(f.recorded()))
		}
	})
	t.Run("the context bounds the retries", func(t *testing.T) {
		f := newFakeProvider(t, 4)
		f.fail(http.StatusTooManyRequests, "1", `slow down`)
		opts := fastRetries()
		opts.BaseURL = f.URL()
		e, _ := New(testModel(ProviderOpenAI, 4), "k", opts)
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := e.Embed(cctx, []string{"x"}); err == nil {
			t.Fatal("no error")
		}
		if time.Since(start) > 500*time.Millisecond {
			t.Errorf("waited %v past a 200ms deadline", time.Since(start))
		}
	})
	t.Run("network errors are retried, then reported", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		opts := fastRetries()
		opts.BaseURL = url + "/v1"
		opts.MaxRetries = 1
		e, _ := New(testModel(ProviderOpenAI, 4), "sk-net-key", opts)
		_, err := e.Embed(ctx, []string{"x"})
		if err == nil || !strings.HasPrefix(err.Error(), "embed: openai: ") || strings.Contains(err.Error(), "sk-net-key") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("wrong dimensions", func(t *testing.T) {
		f := newFakeProvider(t, 4)
		f.dimsOut = 5
		e, _ := New(testModel(ProviderOpenAI, 4), "k", Options{BaseURL: f.URL()})
		if _, err := e.Embed(ctx, []string{"x"}); err == nil || !strings.Contains(err.Error(), "5-dimensional") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := map[string]time.Duration{
		"":                              0,
		"0":                             0,
		"7":                             7 * time.Second,
		"1.5":                           1500 * time.Millisecond,
		"-3":                            0,
		"soon":                          0,
		"Thu, 02 Jan 2025 03:04:35 GMT": 30 * time.Second,
		"Thu, 02 Jan 2025 03:00:00 GMT": 0,
	}
	for in, want := range cases {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}
