// Package sdktest runs a plugin's tools in-process, for plugin authors' unit
// tests: no process, no gRPC, the calling user of your choice, and
// FakeHost, an in-memory stand-in for inboxd's host services.
//
// The harness enforces what inboxd enforces: the plugin must be valid,
// arguments must be a JSON object, content must be JSON, the IMAP password
// is withheld and the tone profile refused unless the plugin declared the
// need, and a handler's panic becomes an error.
package sdktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/inboxd/inboxd/sdk"
)

// Harness calls one plugin's tools as one user.
type Harness struct {
	p    sdk.Plugin
	user sdk.User
	host sdk.Host
}

// New returns a harness for p calling as user, with host services from host
// (nil means an empty FakeHost). It panics on an invalid plugin, as Serve
// refuses to serve one.
func New(p sdk.Plugin, user sdk.User, host *FakeHost) *Harness {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	if host == nil {
		host = &FakeHost{}
	}
	if user.UserID == "" {
		user.UserID = "00000000-0000-4000-8000-000000000001"
	}
	return &Harness{p: p, user: user, host: host.Host(p.Needs...)}
}

// Call runs tool with args: a value encoded as JSON, or json.RawMessage /
// []byte passed as they are (nil means {}).
func (h *Harness) Call(ctx context.Context, tool string, args any) (sdk.Result, error) {
	var raw json.RawMessage
	switch a := args.(type) {
	case nil:
		raw = json.RawMessage("{}")
	case json.RawMessage:
		raw = a
	case []byte:
		raw = a
	default:
		b, err := json.Marshal(args)
		if err != nil {
			return sdk.Result{}, fmt.Errorf("sdktest: encode arguments: %w", err)
		}
		raw = b
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return sdk.Result{}, fmt.Errorf("sdktest: arguments must be a JSON object, got %s", raw)
	}
	i := slices.IndexFunc(h.p.Tools, func(t sdk.Tool) bool { return t.Name == tool })
	if i < 0 {
		return sdk.Result{}, fmt.Errorf("sdktest: plugin %s has no tool %q", h.p.Name, tool)
	}
	return run(sdk.WithCall(ctx, h.user, h.host), h.p.Tools[i], raw)
}

func run(ctx context.Context, t sdk.Tool, args json.RawMessage) (res sdk.Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = sdk.Result{}, fmt.Errorf("sdktest: tool %q panicked: %v", t.Name, r)
		}
	}()
	res, err = t.Handler(ctx, sdk.Call{Arguments: args})
	if err != nil {
		return sdk.Result{}, err
	}
	if len(res.Content) == 0 {
		res.Content = json.RawMessage("null")
	} else if !json.Valid(res.Content) {
		return sdk.Result{}, fmt.Errorf("sdktest: tool %q returned content that is not JSON (use sdk.Text for plain text)", t.Name)
	}
	return res, nil
}

// FakeHost is an in-memory sdk.Host for one user. Set its fields before
// calling; it is safe for concurrent calls. KV holds the plugin's own keys
// as the plugin names them.
type FakeHost struct {
	Settings sdk.Settings
	KV       map[string]string
	// Hits answer every VectorSearch (less the excluded threads, up to the
	// limit); VectorCount is their number. VectorUpsert adds to them (or
	// replaces the hit of the same thread) with Score 0.
	Hits []sdk.VectorHit
	// Upserted records every document VectorUpsert accepted, in order.
	Upserted []sdk.VectorDoc
	// Completions answers Complete; nil fails every completion.
	Completions func(sdk.Completion) (string, error)
	// Tone holds the tone-of-voice profiles by language.
	Tone map[string]string

	mu sync.Mutex
}

// Host returns f as an sdk.Host that enforces needs as inboxd does: the
// IMAP password is blank without sdk.NeedIMAPCredentials and the tone
// profile refused without sdk.NeedToneProfile. (FakeHost itself is not an
// sdk.Host: its Settings is the field you fill in.) The harness uses it;
// use it directly to call code that takes an sdk.Host.
func (f *FakeHost) Host(needs ...sdk.Need) sdk.Host {
	return needsHost{h: f, needs: needs}
}

func (f *FakeHost) settings() sdk.Settings {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Settings
}

// KVGet reads KV.
func (f *FakeHost) KVGet(_ context.Context, key string) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.KV[key]
	return v, ok, nil
}

// KVSet writes KV.
func (f *FakeHost) KVSet(_ context.Context, key, value string) error {
	if key == "" {
		return errors.New("sdktest: empty key")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.KV == nil {
		f.KV = map[string]string{}
	}
	f.KV[key] = value
	return nil
}

// KVDelete deletes from KV.
func (f *FakeHost) KVDelete(_ context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.KV, key)
	return nil
}

// VectorSearch returns Hits by descending score, less exclude, up to limit.
func (f *FakeHost) VectorSearch(_ context.Context, _ string, limit int, exclude []string) ([]sdk.VectorHit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sdk.VectorHit
	for _, h := range f.Hits {
		if !slices.Contains(exclude, h.ThreadID) {
			out = append(out, h)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Score > out[j].Score })
	if limit >= 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// VectorCount is len(Hits).
func (f *FakeHost) VectorCount(context.Context) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.Hits), nil
}

// VectorUpsert checks docs as inboxd does (the limits, a thread id and a
// text for each, no "tenant_id" and no other "thread_id" in a payload),
// then adds each to Hits with Score 0 and its payload as a plugin reads it
// back (through JSON, "thread_id" set), and to Upserted. A refused call
// changes nothing.
func (f *FakeHost) VectorUpsert(_ context.Context, docs []sdk.VectorDoc) error {
	if len(docs) > sdk.MaxVectorUpsertDocs {
		return fmt.Errorf("sdktest: vector upsert: %d documents in one call, at most %d: split the batch", len(docs), sdk.MaxVectorUpsertDocs)
	}
	hits := make([]sdk.VectorHit, len(docs))
	size := 0
	for i, d := range docs {
		if d.ThreadID == "" || strings.TrimSpace(d.Text) == "" {
			return fmt.Errorf("sdktest: vector upsert: document %d (thread %q): a thread id and a text are required", i+1, d.ThreadID)
		}
		payload, err := roundTrip(d)
		if err != nil {
			return fmt.Errorf("sdktest: vector upsert: document %d (thread %q): %w", i+1, d.ThreadID, err)
		}
		size += len(d.ThreadID) + len(d.Text) + payload.size
		hits[i] = sdk.VectorHit{ThreadID: d.ThreadID, Payload: payload.m}
	}
	if size > sdk.MaxVectorUpsertBytes {
		return fmt.Errorf("sdktest: vector upsert: %d bytes of thread ids, texts and payloads in one call, at most %d: split the batch", size, sdk.MaxVectorUpsertBytes)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range hits {
		if i := slices.IndexFunc(f.Hits, func(x sdk.VectorHit) bool { return x.ThreadID == h.ThreadID }); i >= 0 {
			f.Hits[i] = h
		} else {
			f.Hits = append(f.Hits, h)
		}
	}
	f.Upserted = append(f.Upserted, docs...)
	return nil
}

// payloadJSON is a payload as the host would store and return it, and the
// size of its JSON encoding (what counts toward MaxVectorUpsertBytes).
type payloadJSON struct {
	m    map[string]any
	size int
}

// roundTrip encodes d's payload as the SDK sends it and decodes it as the
// SDK reads it back, with the host's rules on thread_id and tenant_id.
func roundTrip(d sdk.VectorDoc) (payloadJSON, error) {
	out := payloadJSON{m: map[string]any{}}
	if len(d.Payload) > 0 {
		b, err := json.Marshal(d.Payload)
		if err != nil {
			return out, fmt.Errorf("payload: %w", err)
		}
		if err := json.Unmarshal(b, &out.m); err != nil {
			return out, fmt.Errorf("payload: %w", err)
		}
		out.size = len(b)
	}
	if _, ok := out.m["tenant_id"]; ok {
		return out, errors.New(`payload field "tenant_id" is reserved`)
	}
	if v, ok := out.m["thread_id"]; ok && v != d.ThreadID {
		return out, fmt.Errorf("payload thread_id %v differs from the thread id", v)
	}
	out.m["thread_id"] = d.ThreadID
	return out, nil
}

// Complete calls Completions.
func (f *FakeHost) Complete(_ context.Context, req sdk.Completion) (string, error) {
	if f.Completions == nil {
		return "", errors.New("sdktest: FakeHost.Completions is not set")
	}
	return f.Completions(req)
}

// ToneProfile returns a copy of Tone.
func (f *FakeHost) ToneProfile(context.Context) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]string, len(f.Tone))
	for k, v := range f.Tone {
		out[k] = v
	}
	return out, nil
}

// needsHost enforces the plugin's declared needs, as inboxd does.
type needsHost struct {
	h     *FakeHost
	needs []sdk.Need
}

func (n needsHost) Settings(context.Context) (sdk.Settings, error) {
	s := n.h.settings()
	if !slices.Contains(n.needs, sdk.NeedIMAPCredentials) {
		s.IMAPPassword = ""
	}
	return s, nil
}
func (n needsHost) KVGet(ctx context.Context, key string) (string, bool, error) {
	return n.h.KVGet(ctx, key)
}
func (n needsHost) KVSet(ctx context.Context, key, value string) error {
	return n.h.KVSet(ctx, key, value)
}
func (n needsHost) KVDelete(ctx context.Context, key string) error { return n.h.KVDelete(ctx, key) }
func (n needsHost) VectorSearch(ctx context.Context, q string, limit int, exclude []string) ([]sdk.VectorHit, error) {
	return n.h.VectorSearch(ctx, q, limit, exclude)
}
func (n needsHost) VectorCount(ctx context.Context) (int, error) { return n.h.VectorCount(ctx) }
func (n needsHost) VectorUpsert(ctx context.Context, docs []sdk.VectorDoc) error {
	return n.h.VectorUpsert(ctx, docs)
}
func (n needsHost) Complete(ctx context.Context, req sdk.Completion) (string, error) {
	return n.h.Complete(ctx, req)
}
func (n needsHost) ToneProfile(ctx context.Context) (map[string]string, error) {
	if !slices.Contains(n.needs, sdk.NeedToneProfile) {
		return nil, fmt.Errorf("sdktest: %w: the plugin did not declare sdk.NeedToneProfile", sdk.ErrDenied)
	}
	return n.h.ToneProfile(ctx)
}
