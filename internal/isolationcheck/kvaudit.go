package isolationcheck

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
)

// nonUserKeys are the only KV keys outside user:{uuid}: that anything may
// write: leases, which say which replica polls a user, runs a user's job or
// is alive. They are not user data. user says whether the key ends with the
// user's UUID. The KV holds no schema or migration keys (the schema lives in
// the SQL database), so there are none here.
var nonUserKeys = []struct {
	prefix string
	user   bool
}{
	{"lease:poll:", true},     // lease:poll:{uuid}
	{"lease:job:", true},      // lease:job:{kind}:{uuid}
	{"lease:replica:", false}, // lease:replica:{owner}
}

// AllowedNonUserPrefixes lists the prefixes of the KV keys that are not a
// user's: lease keys only.
func AllowedNonUserPrefixes() []string {
	out := make([]string, len(nonUserKeys))
	for i, k := range nonUserKeys {
		out[i] = k.prefix
	}
	return out
}

// KeyProblem says what is wrong with a KV key something wrote, or "": it
// must be "user:{uuid}:..." of a user that exists reports, or one of the
// lease keys, which (but for the replica lease) must name an existing user
// too.
func KeyProblem(key string, exists func(userid.ID) bool) string {
	if rest, ok := strings.CutPrefix(key, "user:"); ok {
		id, _, found := strings.Cut(rest, ":")
		if !found {
			return "a user: key without the user:{uuid}: prefix"
		}
		return userProblem(id, exists)
	}
	for _, k := range nonUserKeys {
		if !strings.HasPrefix(key, k.prefix) {
			continue
		}
		if !k.user {
			return ""
		}
		if len(key) < len(k.prefix)+36 {
			return "a lease key that names no user"
		}
		return userProblem(key[len(key)-36:], exists)
	}
	return "neither user:{uuid}: nor one of the lease prefixes " + strings.Join(AllowedNonUserPrefixes(), ", ")
}

func userProblem(s string, exists func(userid.ID) bool) string {
	id, err := userid.Parse(s)
	switch {
	case err != nil || id.String() != s:
		return "the key's user " + s + " is not a canonical UUID"
	case !exists(id):
		return "the key's user " + s + " does not exist"
	}
	return ""
}

// Write is one key a write through a RecordingKV named.
type Write struct {
	Phase string // the RecordingKV's phase at the time
	Op    string // Set, SetMany, Delete, SetNX, CompareAndSwap, CompareAndDelete, Incr
	Key   string
}

// RecordingKV is a kv.Store that records every key a write names, for tests
// that audit the key scheme (KeyProblem) while real code runs over it.
type RecordingKV struct {
	kv.Store
	mu     sync.Mutex
	phase  string
	writes []Write
}

// NewRecordingKV wraps s.
func NewRecordingKV(s kv.Store) *RecordingKV { return &RecordingKV{Store: s} }

// SetPhase labels the writes from now on (e.g. "setup", "sweep").
func (r *RecordingKV) SetPhase(p string) {
	r.mu.Lock()
	r.phase = p
	r.mu.Unlock()
}

// Writes returns the writes recorded so far, in order.
func (r *RecordingKV) Writes() []Write {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.writes)
}

func (r *RecordingKV) note(op string, keys ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		r.writes = append(r.writes, Write{r.phase, op, k})
	}
}

// Set records key and sets it.
func (r *RecordingKV) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	r.note("Set", key)
	return r.Store.Set(ctx, key, value, ttl)
}

// SetMany records the keys and sets them.
func (r *RecordingKV) SetMany(ctx context.Context, pairs map[string]string) error {
	r.note("SetMany", slices.Sorted(maps.Keys(pairs))...)
	return r.Store.SetMany(ctx, pairs)
}

// Delete records the keys and deletes them.
func (r *RecordingKV) Delete(ctx context.Context, keys ...string) error {
	r.note("Delete", keys...)
	return r.Store.Delete(ctx, keys...)
}

// SetNX records key and sets it if absent.
func (r *RecordingKV) SetNX(ctx context.Context, key, value string, ttl time.Duration) (bool, error) {
	r.note("SetNX", key)
	return r.Store.SetNX(ctx, key, value, ttl)
}

// CompareAndSwap records key and swaps it.
func (r *RecordingKV) CompareAndSwap(ctx context.Context, key, old, value string, ttl time.Duration) (bool, error) {
	r.note("CompareAndSwap", key)
	return r.Store.CompareAndSwap(ctx, key, old, value, ttl)
}

// CompareAndDelete records key and deletes it if it holds old.
func (r *RecordingKV) CompareAndDelete(ctx context.Context, key, old string) (bool, error) {
	r.note("CompareAndDelete", key)
	return r.Store.CompareAndDelete(ctx, key, old)
}

// Incr records key and increments it.
func (r *RecordingKV) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	r.note("Incr", key)
	return r.Store.Incr(ctx, key, delta)
}
