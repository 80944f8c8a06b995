package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
)

// Kind names a background job. The value is also the job label of the
// metrics.
type Kind string

// The jobs.
const (
	// Initialize vectorises the user's recent threads (Sent and All Mail or
	// INBOX), then starts ToneOfVoice.
	Initialize Kind = "inbox_initialization"
	// LabelDescriptions describes each of the user's own folders (labels).
	LabelDescriptions Kind = "label_descriptions"
	// ToneOfVoice writes a tone-of-voice profile per language the user
	// writes in.
	ToneOfVoice Kind = "tone_of_voice"
	// Incremental vectorises the threads of mail that arrived in Sent or
	// INBOX since the last run; the cron starts it for users whose
	// initialisation completed.
	Incremental Kind = "incremental_vectorization"
)

// Kinds lists every job kind.
func Kinds() []Kind { return []Kind{Initialize, LabelDescriptions, ToneOfVoice, Incremental} }

func (k Kind) valid() bool {
	switch k {
	case Initialize, LabelDescriptions, ToneOfVoice, Incremental:
		return true
	}
	return false
}

// Job statuses, the values of user:{uuid}:inbox_status,
// user:{uuid}:tone_of_voice_status and user:{uuid}:label_descriptions_status.
const (
	StatusNotStarted  = "not_started"
	StatusRunning     = "running"
	StatusCompleted   = "completed"
	StatusFailed      = "failed"
	StatusInterrupted = "interrupted"
)

// KV key suffixes (user:{uuid}:{suffix}), exactly as DESIGN.md's key table
// names them, plus the few this package adds under the same prefix.
const (
	keyInboxStatus    = "inbox_status"
	keyInboxProgress  = "inbox_progress"
	keyInboxInterrupt = "inbox_interrupt"
	keyInboxError     = "inbox_error"
	// keyInboxCursor is the incremental vectorisation's position per folder
	// role: JSON {"sent": {"folder","uidvalidity","uid"}, "inbox": {...}}.
	keyInboxCursor = "inbox_vectorized_cursor"

	keyToneProfile   = "tone_of_voice_profile"
	keyToneStatus    = "tone_of_voice_status"
	keyToneInterrupt = "tone_of_voice_interrupt"
	keyToneError     = "tone_of_voice_error"

	keyLabelDescriptions = "label_descriptions"
	keyLabelStatus       = "label_descriptions_status"
	keyLabelInterrupt    = "label_descriptions_interrupt"
	keyLabelError        = "label_descriptions_error"

	keyIncrementalInterrupt = "inbox_incremental_interrupt"
)

// keys are the per-user KV keys of one kind's state. status and errKey are
// "" for Incremental, which has no user-visible status.
type keys struct {
	status, interrupt, errKey string
}

func keysOf(kind Kind) keys {
	switch kind {
	case Initialize:
		return keys{keyInboxStatus, keyInboxInterrupt, keyInboxError}
	case ToneOfVoice:
		return keys{keyToneStatus, keyToneInterrupt, keyToneError}
	case LabelDescriptions:
		return keys{keyLabelStatus, keyLabelInterrupt, keyLabelError}
	default:
		return keys{interrupt: keyIncrementalInterrupt}
	}
}

// leaseKey is the job lease: which replica runs kind for user now. It is
// not user data (like lease:poll:{uuid}); it expires when its holder dies.
func leaseKey(kind Kind, user userid.ID) string {
	return "lease:job:" + string(kind) + ":" + user.String()
}

// Progress is how far an inbox initialisation got: threads done (embedded
// and stored, or found already stored) of the threads selected.
type Progress struct {
	Done  int `json:"done"`
	Total int `json:"total"`
}

// InboxStatus is the state of a user's inbox initialisation, the
// "initialization" block of GET /api/v1/inbox/status.
type InboxStatus struct {
	Status    string   `json:"status"`
	Progress  Progress `json:"progress"`
	LastError string   `json:"last_error"`
}

// Statuses is the state of every user-visible job of one user.
type Statuses struct {
	Initialization    InboxStatus `json:"initialization"`
	ToneOfVoice       string      `json:"tone_of_voice"`
	LabelDescriptions string      `json:"label_descriptions"`
}

// ReadInboxStatus reads a user's inbox initialisation state from the KV,
// as any replica wrote it; a user who never started one is not_started with
// progress 0/0. It needs no Manager (the status route can call it with the
// API's KV).
func ReadInboxStatus(ctx context.Context, store kv.Store, user userid.ID) (InboxStatus, error) {
	if err := user.Check(); err != nil {
		return InboxStatus{}, err
	}
	vals, err := store.MGet(ctx, user.Key(keyInboxStatus), user.Key(keyInboxProgress), user.Key(keyInboxError))
	if err != nil {
		return InboxStatus{}, fmt.Errorf("jobs: read inbox status: %w", err)
	}
	st := InboxStatus{Status: vals[user.Key(keyInboxStatus)], LastError: vals[user.Key(keyInboxError)]}
	if st.Status == "" {
		st.Status = StatusNotStarted
	}
	if raw := vals[user.Key(keyInboxProgress)]; raw != "" {
		// A malformed value reads as no progress rather than failing the page.
		_ = json.Unmarshal([]byte(raw), &st.Progress)
	}
	return st, nil
}

// readStatuses reads every user-visible status of user.
func readStatuses(ctx context.Context, store kv.Store, user userid.ID) (Statuses, error) {
	init, err := ReadInboxStatus(ctx, store, user)
	if err != nil {
		return Statuses{}, err
	}
	vals, err := store.MGet(ctx, user.Key(keyToneStatus), user.Key(keyLabelStatus))
	if err != nil {
		return Statuses{}, fmt.Errorf("jobs: read statuses: %w", err)
	}
	or := func(s string) string {
		if s == "" {
			return StatusNotStarted
		}
		return s
	}
	return Statuses{
		Initialization:    init,
		ToneOfVoice:       or(vals[user.Key(keyToneStatus)]),
		LabelDescriptions: or(vals[user.Key(keyLabelStatus)]),
	}, nil
}

// readJSONMap reads a JSON object of strings stored under the user's key;
// absent reads as empty.
func readJSONMap(ctx context.Context, store kv.Store, user userid.ID, suffix string) (map[string]string, error) {
	if err := user.Check(); err != nil {
		return nil, err
	}
	raw, err := store.Get(ctx, user.Key(suffix))
	if errors.Is(err, kv.ErrNotFound) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("jobs: read %s: %w", suffix, err)
	}
	out := map[string]string{}
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		return nil, fmt.Errorf("jobs: %s is not a JSON object of strings: %w", suffix, err)
	}
	return out, nil
}

func writeJSON(ctx context.Context, store kv.Store, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("jobs: encode %s: %w", key, err)
	}
	if err := store.Set(ctx, key, string(data), 0); err != nil {
		return fmt.Errorf("jobs: write state: %w", err)
	}
	return nil
}
