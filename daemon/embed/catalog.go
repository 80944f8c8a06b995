package embed

import (
	"bytes"
	_ "embed" // the built-in catalog
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Providers a catalog model may name.
const (
	// ProviderOpenAI is api.openai.com (a key is required).
	ProviderOpenAI = "openai"
	// ProviderVoyage is api.voyageai.com (a key is required).
	ProviderVoyage = "voyage"
	// ProviderOpenAICompatible is any server speaking OpenAI's /v1/embeddings
	// (Ollama, vLLM, LocalAI ...): base_url is required (from the catalog or
	// Options.BaseURL), the key is optional.
	ProviderOpenAICompatible = "openai_compatible"
	// ProviderOffline is the built-in lexical model: no network, no key.
	ProviderOffline = "offline"
)

// charsPerToken converts token limits into character limits where a model
// gives only tokens. It is deliberately low (English averages about 4
// characters a token; URLs, code and non-Latin scripts fewer), so that a
// chunk never exceeds the provider's limit: an over-long input is an error at
// OpenAI and would be truncated silently elsewhere.
const charsPerToken = 2

//go:embed embedding_models.json
var builtinCatalog string

// Model is one entry of the catalog: which provider and model to ask, the
// vector size it answers with, and the limits that chunking and batching keep
// within.
type Model struct {
	// Key names the model in settings (user:{uuid}:embedding_model) and in
	// vector collections; unique in the catalog.
	Key      string `json:"key"`
	Provider string `json:"provider"`
	// Name is the provider's model name sent in requests.
	Name        string `json:"model_name"`
	Description string `json:"description,omitempty"`
	// Dimensions is the vector size (> 0).
	Dimensions int `json:"dimensions"`
	// RequestDimensions sends Dimensions in the request (OpenAI "dimensions",
	// Voyage "output_dimension") for models with a selectable output size.
	RequestDimensions bool `json:"request_dimensions,omitempty"`
	// MaxInputTokens and MaxInputChars bound one input; longer texts are
	// split into chunks (see InputLimit). 0 means no limit.
	MaxInputTokens int `json:"max_input_tokens,omitempty"`
	MaxInputChars  int `json:"max_input_chars,omitempty"`
	// MaxBatchSize bounds the inputs of one request (> 0); MaxBatchTokens
	// bounds their summed size (0: no limit).
	MaxBatchSize   int `json:"max_batch_size"`
	MaxBatchTokens int `json:"max_batch_tokens,omitempty"`
	// Default marks the catalog default (exactly one model).
	Default bool `json:"default"`
	// BaseURL is the API root, e.g. "http://localhost:11434/v1" for an
	// Ollama model; "" means the provider's public endpoint.
	BaseURL string `json:"base_url,omitempty"`
}

// InputLimit is the longest input, in characters (runes), sent to the
// provider in one piece: MaxInputChars if set, else MaxInputTokens at a
// conservative 2 characters a token; 0 means unlimited.
func (m Model) InputLimit() int {
	switch {
	case m.MaxInputChars > 0 && m.MaxInputTokens > 0:
		return min(m.MaxInputChars, m.MaxInputTokens*charsPerToken)
	case m.MaxInputChars > 0:
		return m.MaxInputChars
	case m.MaxInputTokens > 0:
		return m.MaxInputTokens * charsPerToken
	}
	return 0
}

// batchCharLimit is MaxBatchTokens in characters (0: unlimited).
func (m Model) batchCharLimit() int {
	return m.MaxBatchTokens * charsPerToken
}

// Split returns the pieces text is embedded in: text itself when it fits the
// model's InputLimit, else chunks of at most InputLimit characters cut at
// paragraph, then line, then sentence, then word boundaries (a single word
// longer than the limit is cut inside). Nothing is dropped but the
// whitespace at the cuts.
func (m Model) Split(text string) []string {
	return splitText(text, m.InputLimit())
}

// Chunks is len(m.Split(text)): how many pieces an embedding of text averages.
func (m Model) Chunks(text string) int {
	return len(m.Split(text))
}

// NeedsKey reports whether the provider refuses requests without an API key.
func (m Model) NeedsKey() bool {
	return m.Provider == ProviderOpenAI || m.Provider == ProviderVoyage
}

func (m Model) validate() error {
	if strings.TrimSpace(m.Key) == "" || strings.TrimSpace(m.Key) != m.Key {
		return fmt.Errorf("model key %q is empty or padded", m.Key)
	}
	switch m.Provider {
	case ProviderOpenAI, ProviderVoyage, ProviderOpenAICompatible, ProviderOffline:
	default:
		return fmt.Errorf("model %q: unknown provider %q (want openai, voyage, openai_compatible or offline)", m.Key, m.Provider)
	}
	if m.Name == "" {
		return fmt.Errorf("model %q: model_name is empty", m.Key)
	}
	if m.Dimensions <= 0 {
		return fmt.Errorf("model %q: dimensions must be > 0", m.Key)
	}
	if m.MaxBatchSize <= 0 {
		return fmt.Errorf("model %q: max_batch_size must be > 0", m.Key)
	}
	if m.MaxInputChars < 0 || m.MaxInputTokens < 0 || m.MaxBatchTokens < 0 {
		return fmt.Errorf("model %q: limits must not be negative", m.Key)
	}
	if l, b := m.InputLimit(), m.batchCharLimit(); b > 0 && (l == 0 || l > b) {
		return fmt.Errorf("model %q: one input (%d chars) may exceed max_batch_tokens", m.Key, l)
	}
	return nil
}

// Catalog is the list of embedding models inboxd offers, in order. It is
// immutable once loaded and safe for concurrent use.
type Catalog struct {
	models []Model
}

type catalogFile struct {
	Models []Model `json:"models"`
}

// LoadCatalog returns the catalog: the one embedded in the binary, or, when
// overridePath is not "", the file there, which replaces it entirely. It is
// validated: unique keys, known providers, dimensions > 0, batch size > 0,
// exactly one default, and at least one offline model (the fallback when no
// provider has a key).
func LoadCatalog(overridePath string) (*Catalog, error) {
	data := []byte(builtinCatalog)
	if overridePath != "" {
		b, err := os.ReadFile(overridePath)
		if err != nil {
			return nil, fmt.Errorf("embed: read catalog: %w", err)
		}
		data = b
	}
	c, err := ParseCatalog(data)
	if err != nil && overridePath != "" {
		return nil, fmt.Errorf("%w (in %s)", err, overridePath)
	}
	return c, err
}

// ParseCatalog parses and validates a catalog in the embedding_models.json
// format: {"models": [{"key": ..., "provider": ..., ...}, ...]}.
func ParseCatalog(data []byte) (*Catalog, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f catalogFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("embed: parse catalog: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("embed: parse catalog: trailing data after the JSON object")
	}
	if len(f.Models) == 0 {
		return nil, errors.New("embed: catalog has no models")
	}
	seen := make(map[string]bool, len(f.Models))
	defaults, offline := 0, 0
	for _, m := range f.Models {
		if err := m.validate(); err != nil {
			return nil, fmt.Errorf("embed: catalog: %w", err)
		}
		if seen[m.Key] {
			return nil, fmt.Errorf("embed: catalog: duplicate model key %q", m.Key)
		}
		seen[m.Key] = true
		if m.Default {
			defaults++
		}
		if m.Provider == ProviderOffline {
			offline++
		}
	}
	if defaults != 1 {
		return nil, fmt.Errorf("embed: catalog: %d models are marked default, want exactly one", defaults)
	}
	if offline == 0 {
		return nil, errors.New("embed: catalog: no offline model (needed when no provider has a key)")
	}
	return &Catalog{models: f.Models}, nil
}

// Models returns the models in catalog order (a copy).
func (c *Catalog) Models() []Model { return slices.Clone(c.models) }

// Lookup returns the model with the key.
func (c *Catalog) Lookup(key string) (Model, bool) {
	for _, m := range c.models {
		if m.Key == key {
			return m, true
		}
	}
	return Model{}, false
}

// Default returns the catalog default.
func (c *Catalog) Default() Model {
	for _, m := range c.models {
		if m.Default {
			return m
		}
	}
	panic("embed: validated catalog without a default") // ParseCatalog guarantees one
}

// Offline returns the first offline model.
func (c *Catalog) Offline() Model {
	for _, m := range c.models {
		if m.Provider == ProviderOffline {
			return m
		}
	}
	panic("embed: validated catalog without an offline model") // ParseCatalog guarantees one
}

// ProviderKeys reports whether an API key is available for a provider (for
// a user: the user's embedding_api_key counts for the provider of the
// user's chosen model, plus any daemon-level keys). A nil ProviderKeys has
// no keys.
type ProviderKeys func(provider string) bool

// KeysFor is a ProviderKeys that has keys for exactly the given providers.
func KeysFor(providers ...string) ProviderKeys {
	return func(p string) bool { return slices.Contains(providers, p) }
}

// BestAvailable picks the model for a user who has not chosen one: the
// catalog default if its provider has a key, else the first model (in
// catalog order) whose provider has a key, else the offline model. Offline
// models need no key.
func (c *Catalog) BestAvailable(keys ProviderKeys) Model {
	has := func(m Model) bool {
		return m.Provider == ProviderOffline || (keys != nil && keys(m.Provider))
	}
	if d := c.Default(); has(d) {
		return d
	}
	for _, m := range c.models {
		if m.Provider != ProviderOffline && has(m) {
			return m
		}
	}
	return c.Offline()
}
