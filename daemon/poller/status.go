package poller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/kv"
	"github.com/inboxd/inboxd/daemon/userid"
)

// keyStatus holds the user's poll status (JSON), written by whichever replica
// polls the user, so that any replica's API can show it.
const keyStatus = "poll_status"

// Status is a user's poll state as GET /api/v1/inbox/status shows it.
type Status struct {
	State       string    `json:"state"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Failures    int       `json:"failures"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// StateNotPolled: the user lacks complete IMAP settings or an active
// new_email workflow, or no poll has happened yet.
const StateNotPolled = "not_polled"

func writeStatus(ctx context.Context, store kv.Store, user userid.ID, st Status) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("poller: encode status: %w", err)
	}
	if err := store.Set(ctx, user.Key(keyStatus), string(b), 0); err != nil {
		return fmt.Errorf("poller: write status of %s: %w", user, err)
	}
	return nil
}

// ReadStatus returns the user's last recorded poll status.
func ReadStatus(ctx context.Context, store kv.Store, user userid.ID) (Status, error) {
	if err := user.Check(); err != nil {
		return Status{}, err
	}
	raw, err := store.Get(ctx, user.Key(keyStatus))
	if errors.Is(err, kv.ErrNotFound) {
		return Status{State: StateNotPolled}, nil
	}
	if err != nil {
		return Status{}, fmt.Errorf("poller: read status of %s: %w", user, err)
	}
	var st Status
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return Status{}, fmt.Errorf("poller: decode status of %s: %w", user, err)
	}
	return st, nil
}
