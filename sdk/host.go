package sdk

import (
	"context"
	"errors"
)

// User is the context of one call: whose call it is and which workflow run
// and step made it (empty for calls from the API).
type User struct {
	UserID     string
	WorkflowID string
	InstanceID string
	StepID     string
}

// Host is the set of services inboxd offers a plugin during a call, scoped
// to the calling user: the plugin names no user, and cannot reach another
// user's data. Every method fails once the call has returned.
//
// The SDK implements Host and plugins only use it, so it gains a method when
// inboxd offers a new service. A test double should be sdktest.FakeHost, or
// embed Host, rather than implement every method.
type Host interface {
	// Settings returns the user's settings. IMAPPassword is empty unless
	// the plugin declared NeedIMAPCredentials.
	Settings(ctx context.Context) (Settings, error)
	// KVGet, KVSet and KVDelete work on the plugin's own per-user store
	// (kept by inboxd under "user:{uuid}:plugin:{name}:{key}").
	KVGet(ctx context.Context, key string) (value string, ok bool, err error)
	KVSet(ctx context.Context, key, value string) error
	KVDelete(ctx context.Context, key string) error
	// VectorSearch is semantic search over the user's mail threads,
	// leaving out excludeThreadIDs; best hit first.
	VectorSearch(ctx context.Context, query string, limit int, excludeThreadIDs []string) ([]VectorHit, error)
	// VectorCount is the number of threads in the user's collection.
	VectorCount(ctx context.Context) (int, error)
	// VectorUpsert embeds each document's text with the user's embedding
	// model and stores it, with its payload, in the user's collection; a
	// thread already there is replaced. At most MaxVectorUpsertDocs
	// documents and MaxVectorUpsertBytes bytes go in one call: split larger
	// batches. A host older than this SDK fails with errors.ErrUnsupported.
	VectorUpsert(ctx context.Context, docs []VectorDoc) error
	// Complete asks the user's LLM (the user's endpoint and model).
	Complete(ctx context.Context, req Completion) (string, error)
	// ToneProfile returns the user's tone-of-voice profiles by language;
	// refused unless the plugin declared NeedToneProfile.
	ToneProfile(ctx context.Context) (map[string]string, error)
}

// Settings is what a plugin sees of the user's settings.
type Settings struct {
	IMAPServer   string
	IMAPPort     int
	IMAPSecurity string // tls, starttls or none
	IMAPUsername string
	// IMAPPassword is set only for a plugin that declared NeedIMAPCredentials.
	IMAPPassword         string
	Timezone             string
	LLMModel             string
	EmbeddingModel       string
	DraftCreationEnabled bool
}

// VectorHit is one thread found by VectorSearch, with its similarity to the
// query (1 is identical) and its payload.
type VectorHit struct {
	ThreadID string
	Score    float32
	Payload  map[string]any
}

// VectorDoc is one thread for VectorUpsert.
type VectorDoc struct {
	// ThreadID names the thread (required); VectorHit.ThreadID returns it.
	ThreadID string
	// Text is what is embedded (required, not blank). A text longer than
	// the model's input limit is split into chunks whose vectors are
	// averaged, so none of it is dropped.
	Text string
	// Payload is stored with the vector and returned in VectorHit.Payload,
	// travelling as JSON (so numbers come back as float64). "thread_id" is
	// set to ThreadID; "tenant_id" is reserved.
	Payload map[string]any
}

// Limits of one VectorUpsert call. Bytes count each document's ThreadID,
// Text and JSON-encoded Payload.
const (
	MaxVectorUpsertDocs  = 100
	MaxVectorUpsertBytes = 2 << 20
)

// Completion is one LLM request: an optional system prompt and the prompt.
// JSON asks for a JSON object answer.
type Completion struct {
	System string
	Prompt string
	JSON   bool
}

// Errors of host services (wrapped; test with errors.Is).
var (
	// ErrDenied: the host refused the request (the call is over, or the
	// plugin did not declare the need).
	ErrDenied = errors.New("sdk: host service refused")
	// ErrNoHost: host services are used outside a tool call.
	ErrNoHost = errors.New("sdk: no host services outside a tool call")
)

type userKey struct{}

type hostKey struct{}

// UserFrom returns the calling user of a handler's context.
func UserFrom(ctx context.Context) (User, bool) {
	u, ok := ctx.Value(userKey{}).(User)
	return u, ok && u.UserID != ""
}

// HostFrom returns the host services of a handler's context, scoped to the
// calling user. It is never nil: outside a call every method returns
// ErrNoHost.
func HostFrom(ctx context.Context) Host {
	if h, ok := ctx.Value(hostKey{}).(Host); ok && h != nil {
		return h
	}
	return noHost{}
}

// WithCall returns ctx carrying the call's user and host, as Serve sets them
// for a real call. It is for test harnesses (sdk/sdktest uses it); a plugin
// never needs it.
func WithCall(ctx context.Context, u User, h Host) context.Context {
	ctx = context.WithValue(ctx, userKey{}, u)
	return context.WithValue(ctx, hostKey{}, h)
}

// noHost answers every request with ErrNoHost.
type noHost struct{}

func (noHost) Settings(context.Context) (Settings, error) { return Settings{}, ErrNoHost }
func (noHost) KVGet(context.Context, string) (string, bool, error) {
	return "", false, ErrNoHost
}
func (noHost) KVSet(context.Context, string, string) error { return ErrNoHost }
func (noHost) KVDelete(context.Context, string) error      { return ErrNoHost }
func (noHost) VectorSearch(context.Context, string, int, []string) ([]VectorHit, error) {
	return nil, ErrNoHost
}
func (noHost) VectorCount(context.Context) (int, error)               { return 0, ErrNoHost }
func (noHost) VectorUpsert(context.Context, []VectorDoc) error        { return ErrNoHost }
func (noHost) Complete(context.Context, Completion) (string, error)   { return "", ErrNoHost }
func (noHost) ToneProfile(context.Context) (map[string]string, error) { return nil, ErrNoHost }
