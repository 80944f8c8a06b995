// Package embed owns text embeddings: the catalog of embedding models
// (embedding_models.json, embedded in the binary, replaceable by a file), the
// choice of a user's best available model, and the providers that turn text
// into vectors: OpenAI and any OpenAI-compatible /v1/embeddings server
// (Ollama, vLLM ...), Voyage AI, and a built-in offline model (feature
// hashing; lexical, not semantic) that needs no network and no key.
//
// Every embedder batches requests within the model's limits, splits inputs
// longer than the model's input limit into chunks (paragraphs, lines,
// sentences, words) and averages the chunk vectors, so no text is ever
// dropped or silently truncated (Model.Chunks tells how many chunks a text
// takes), and retries rate limits (429) and server errors (5xx), honouring
// Retry-After, within the caller's context. API keys never appear in errors
// or logs. The key and model come from the calling user's settings; this
// package keeps no per-user or global state.
package embed

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// Embedder turns texts into vectors of Dimensions() float32s, one per text,
// in order. Vectors are L2-normalised (compare them with a dot product).
type Embedder interface {
	Embed(ctx context.Context, texts []string) ([][]float32, error)
	Dimensions() int
}

// QueryEmbedder is implemented by embedders whose provider embeds search
// queries differently from documents (Voyage's input_type). Use Query.
type QueryEmbedder interface {
	EmbedQuery(ctx context.Context, text string) ([]float32, error)
}

// Query embeds a search query: with EmbedQuery when e implements
// QueryEmbedder, else as a one-text Embed.
func Query(ctx context.Context, e Embedder, text string) ([]float32, error) {
	if q, ok := e.(QueryEmbedder); ok {
		return q.EmbedQuery(ctx, text)
	}
	vs, err := e.Embed(ctx, []string{text})
	if err != nil {
		return nil, err
	}
	if len(vs) != 1 {
		return nil, fmt.Errorf("embed: embedder returned %d vectors for one query", len(vs))
	}
	return vs[0], nil
}

// ErrEmptyInput is returned for a text that is empty or only whitespace:
// providers refuse them, and the vector would mean nothing.
var ErrEmptyInput = errors.New("embed: empty input text")

// Input types (Voyage's input_type): documents are stored, queries searched.
const (
	inputDocument = "document"
	inputQuery    = "query"
)

// Options tune a Client; the zero value is ready to use.
type Options struct {
	// BaseURL overrides the model's base_url (for an openai_compatible model,
	// e.g. the user's own endpoint "http://localhost:11434/v1").
	BaseURL string
	// HTTPClient sends the requests; nil means a client with a 2-minute timeout.
	HTTPClient *http.Client
	// MaxRetries is how many times a request is retried after a 429, a 5xx
	// or a network error: 0 means 4, negative means never.
	MaxRetries int
	// RetryDelay is the first backoff (doubled on every retry, with jitter);
	// 0 means 500 ms.
	RetryDelay time.Duration
	// MaxRetryDelay caps one wait; a Retry-After longer than this fails the
	// call instead of waiting. 0 means 60 s.
	MaxRetryDelay time.Duration
}

// backend sends one batch (already within the model's limits) to a provider.
type backend interface {
	embed(ctx context.Context, texts []string, inputType string) ([][]float32, error)
}

// Client embeds with one catalog model. It is safe for concurrent use.
type Client struct {
	model Model
	be    backend
}

var (
	_ Embedder      = (*Client)(nil)
	_ QueryEmbedder = (*Client)(nil)
)

// New returns the embedder of model, authenticating with apiKey (ignored by
// the offline model, optional for openai_compatible, required by openai and
// voyage). The concrete type is *Client.
func New(model Model, apiKey string, opts Options) (Embedder, error) {
	if err := model.validate(); err != nil {
		return nil, fmt.Errorf("embed: %w", err)
	}
	c := &Client{model: model}
	switch model.Provider {
	case ProviderOffline:
		c.be = offlineBackend{dims: model.Dimensions}
		return c, nil
	case ProviderOpenAI, ProviderVoyage, ProviderOpenAICompatible:
	default:
		return nil, fmt.Errorf("embed: unknown provider %q", model.Provider)
	}
	if model.NeedsKey() && strings.TrimSpace(apiKey) == "" {
		return nil, fmt.Errorf("embed: model %q needs a %s API key", model.Key, model.Provider)
	}
	hb, err := newHTTPBackend(model, apiKey, opts)
	if err != nil {
		return nil, err
	}
	c.be = hb
	return c, nil
}

// Model is the catalog model this client embeds with.
func (c *Client) Model() Model { return c.model }

// Dimensions is the size of every vector the client returns.
func (c *Client) Dimensions() int { return c.model.Dimensions }

// Embedding is one text's vector and the number of chunks averaged into it
// (1 when the text fits the model's input limit).
type Embedding struct {
	Vector []float32
	Chunks int
}

// Embed embeds documents (texts to be stored and searched), one vector per
// text; long texts are chunked and averaged (see EmbedDocuments).
func (c *Client) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	es, err := c.embed(ctx, texts, inputDocument)
	if err != nil {
		return nil, err
	}
	out := make([][]float32, len(es))
	for i, e := range es {
		out[i] = e.Vector
	}
	return out, nil
}

// EmbedDocuments is Embed that also reports how many chunks each text took.
// A text longer than the model's InputLimit is split (Model.Split), the
// chunks are embedded, and their vectors averaged, weighted by chunk length,
// and re-normalised.
func (c *Client) EmbedDocuments(ctx context.Context, texts []string) ([]Embedding, error) {
	return c.embed(ctx, texts, inputDocument)
}

// EmbedQuery embeds a search query (Voyage: input_type "query").
func (c *Client) EmbedQuery(ctx context.Context, text string) ([]float32, error) {
	es, err := c.embed(ctx, []string{text}, inputQuery)
	if err != nil {
		return nil, err
	}
	return es[0].Vector, nil
}

// chunkRef is one chunk of one input.
type chunkRef struct {
	owner  int // index of the input text
	text   string
	weight float64 // rune length
}

func (c *Client) embed(ctx context.Context, texts []string, inputType string) ([]Embedding, error) {
	var chunks []chunkRef
	for i, t := range texts {
		if strings.TrimSpace(t) == "" {
			return nil, fmt.Errorf("%w (text %d of %d)", ErrEmptyInput, i+1, len(texts))
		}
		if !utf8.ValidString(t) {
			t = strings.ToValidUTF8(t, "\uFFFD")
		}
		for _, piece := range c.model.Split(t) {
			chunks = append(chunks, chunkRef{owner: i, text: piece, weight: float64(utf8.RuneCountInString(piece))})
		}
	}
	sums := make([][]float64, len(texts))
	counts := make([]int, len(texts))
	for _, batch := range c.batches(chunks) {
		in := make([]string, len(batch))
		for i, ch := range batch {
			in[i] = ch.text
		}
		vecs, err := c.be.embed(ctx, in, inputType)
		if err != nil {
			return nil, err
		}
		if len(vecs) != len(batch) {
			return nil, fmt.Errorf("embed: %s returned %d vectors for %d inputs", c.model.Key, len(vecs), len(batch))
		}
		for i, v := range vecs {
			if len(v) != c.model.Dimensions {
				return nil, fmt.Errorf("embed: %s returned a %d-dimensional vector, the catalog says %d", c.model.Key, len(v), c.model.Dimensions)
			}
			ch := batch[i]
			if sums[ch.owner] == nil {
				sums[ch.owner] = make([]float64, c.model.Dimensions)
			}
			acc := sums[ch.owner]
			for j, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return nil, fmt.Errorf("embed: %s returned a vector with a non-finite value", c.model.Key)
				}
				acc[j] += float64(x) * ch.weight
			}
			counts[ch.owner]++
		}
	}
	out := make([]Embedding, len(texts))
	for i, acc := range sums {
		out[i] = Embedding{Vector: normalize(acc), Chunks: counts[i]}
	}
	return out, nil
}

// batches packs chunks, in order, into requests of at most MaxBatchSize
// inputs and, when the model has a token limit per request, at most that
// many characters (at the conservative characters-per-token rate).
func (c *Client) batches(chunks []chunkRef) [][]chunkRef {
	var (
		out   [][]chunkRef
		start int
		chars int
	)
	limit := c.model.batchCharLimit()
	for i, ch := range chunks {
		n := int(ch.weight)
		if i > start && (i-start >= c.model.MaxBatchSize || (limit > 0 && chars+n > limit)) {
			out = append(out, chunks[start:i])
			start, chars = i, 0
		}
		chars += n
	}
	if start < len(chunks) {
		out = append(out, chunks[start:])
	}
	return out
}

// normalize returns v scaled to unit length, as float32 (the zero vector stays zero).
func normalize(v []float64) []float32 {
	var norm float64
	for _, x := range v {
		norm += x * x
	}
	out := make([]float32, len(v))
	if norm == 0 {
		return out
	}
	inv := 1 / math.Sqrt(norm)
	for i, x := range v {
		out[i] = float32(x * inv)
	}
	return out
}
