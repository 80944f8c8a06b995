package workflow

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
)

// Store keeps workflows, instances and step runs in the SQL database
// (tables of migration 0002). Every user-facing method takes the user id,
// refuses the zero id, and filters every query on it: another user's
// workflow or instance is ErrNotFound, exactly like a missing one. The
// runner-facing methods (Claim, QueueDepth, UsersWithActiveTrigger) work
// across users and return each instance with its UserID.
type Store struct {
	db *sqldb.DB
	// created is called after an instance was created (Runner.Kick).
	created atomic.Pointer[func()]
}

// NewStore returns a Store over db (migrated).
func NewStore(db *sqldb.DB) *Store { return &Store{db: db} }

// OnInstanceCreated sets f to be called after every CreateInstance that
// created an instance (typically Runner.Kick, so that the runner of this
// process starts it at once instead of at its next poll). f must not block.
func (s *Store) OnInstanceCreated(f func()) {
	if f == nil {
		s.created.Store(nil)
		return
	}
	s.created.Store(&f)
}

// now is the time stored for new rows: UTC at microsecond precision, which
// both dialects keep, so a value reads back exactly.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

const workflowColumns = "id, user_id, name, description, active, trigger_type, trigger, steps, created_at, updated_at"

type scanner interface{ Scan(dest ...any) error }

func scanWorkflow(row scanner) (Workflow, error) {
	var (
		w                Workflow
		uid              string
		trigger          sql.NullString
		triggerType      sql.NullString
		steps            string
		created, updated time.Time
	)
	if err := row.Scan(&w.ID, &uid, &w.Name, &w.Description, &w.Active, &triggerType, &trigger, &steps, &created, &updated); err != nil {
		return Workflow{}, err
	}
	var err error
	if w.UserID, err = userid.Parse(uid); err != nil {
		return Workflow{}, fmt.Errorf("workflow: stored user id of %s: %w", w.ID, err)
	}
	if trigger.Valid && trigger.String != "" {
		w.Trigger = new(Trigger)
		if err := json.Unmarshal([]byte(trigger.String), w.Trigger); err != nil {
			return Workflow{}, fmt.Errorf("workflow: stored trigger of %s: %w", w.ID, err)
		}
	}
	if err := json.Unmarshal([]byte(steps), &w.Steps); err != nil {
		return Workflow{}, fmt.Errorf("workflow: stored steps of %s: %w", w.ID, err)
	}
	if w.Steps == nil {
		w.Steps = []Step{}
	}
	w.CreatedAt, w.UpdatedAt = created.UTC(), updated.UTC()
	return w, nil
}

// encodeDefinition returns the columns trigger_type, trigger and steps of w.
func encodeDefinition(w Workflow) (triggerType, trigger sql.NullString, steps string, err error) {
	if w.Trigger != nil {
		b, err := marshalJSON(w.Trigger)
		if err != nil {
			return triggerType, trigger, "", fmt.Errorf("workflow: encode trigger: %w", err)
		}
		triggerType = sql.NullString{String: w.Trigger.Type, Valid: true}
		trigger = sql.NullString{String: string(b), Valid: true}
	}
	st := w.Steps
	if st == nil {
		st = []Step{}
	}
	b, err := marshalJSON(st)
	if err != nil {
		return triggerType, trigger, "", fmt.Errorf("workflow: encode steps: %w", err)
	}
	return triggerType, trigger, string(b), nil
}

// CreateWorkflow validates and normalises w (see Normalize) and stores it
// for user under a new id; w.ID and w.UserID are ignored. It returns the
// stored workflow; a problem with w is a *ValidationError.
func (s *Store) CreateWorkflow(ctx context.Context, user userid.ID, w Workflow) (Workflow, error) {
	if err := user.Check(); err != nil {
		return Workflow{}, err
	}
	n, err := Normalize(w)
	if err != nil {
		return Workflow{}, err
	}
	n.ID, n.UserID = NewID(), user
	n.CreatedAt = now()
	n.UpdatedAt = n.CreatedAt
	tt, trig, steps, err := encodeDefinition(n)
	if err != nil {
		return Workflow{}, err
	}
	_, err = s.db.ExecContext(ctx, s.db.Rebind("INSERT INTO workflows ("+workflowColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
		n.ID, user.String(), n.Name, n.Description, n.Active, tt, trig, steps, n.CreatedAt, n.UpdatedAt)
	if err != nil {
		return Workflow{}, fmt.Errorf("workflow: create workflow for %s: %w", user, err)
	}
	return n, nil
}

// GetWorkflow returns the user's workflow id, or ErrNotFound (also for
// another user's id and for a malformed id).
func (s *Store) GetWorkflow(ctx context.Context, user userid.ID, id string) (Workflow, error) {
	if err := user.Check(); err != nil {
		return Workflow{}, err
	}
	w, err := scanWorkflow(s.db.QueryRowContext(ctx,
		s.db.Rebind("SELECT "+workflowColumns+" FROM workflows WHERE id = ? AND user_id = ?"), id, user.String()))
	if errors.Is(err, sql.ErrNoRows) {
		return Workflow{}, fmt.Errorf("workflow: get workflow %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Workflow{}, fmt.Errorf("workflow: get workflow %q: %w", id, err)
	}
	return w, nil
}

// ListWorkflows returns the user's workflows, oldest first.
func (s *Store) ListWorkflows(ctx context.Context, user userid.ID) ([]Workflow, error) {
	if err := user.Check(); err != nil {
		return nil, err
	}
	return s.listWorkflows(ctx, "list workflows",
		"SELECT "+workflowColumns+" FROM workflows WHERE user_id = ? ORDER BY created_at, id", user.String())
}

// ListActiveByTrigger returns the user's active workflows whose trigger is
// of triggerType (TriggerNewEmail, TriggerSchedule), oldest first.
func (s *Store) ListActiveByTrigger(ctx context.Context, user userid.ID, triggerType string) ([]Workflow, error) {
	if err := user.Check(); err != nil {
		return nil, err
	}
	return s.listWorkflows(ctx, "list active "+triggerType+" workflows",
		"SELECT "+workflowColumns+" FROM workflows WHERE user_id = ? AND trigger_type = ? AND active = ? ORDER BY created_at, id",
		user.String(), triggerType, true)
}

func (s *Store) listWorkflows(ctx context.Context, what, query string, args ...any) ([]Workflow, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(query), args...)
	if err != nil {
		return nil, fmt.Errorf("workflow: %s: %w", what, err)
	}
	defer rows.Close()
	out := []Workflow{}
	for rows.Next() {
		w, err := scanWorkflow(rows)
		if err != nil {
			return nil, fmt.Errorf("workflow: %s: %w", what, err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("workflow: %s: %w", what, err)
	}
	return out, nil
}

// UsersWithActiveTrigger returns the users (not disabled) that have at
// least one active workflow with a trigger of triggerType: system-wide
// discovery for the mail poller and the scheduler, which then read each
// user's workflows with ListActiveByTrigger.
func (s *Store) UsersWithActiveTrigger(ctx context.Context, triggerType string) ([]userid.ID, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(
		"SELECT DISTINCT w.user_id FROM workflows w JOIN users u ON u.id = w.user_id"+
			" WHERE w.trigger_type = ? AND w.active = ? AND u.disabled = ? ORDER BY w.user_id"),
		triggerType, true, false)
	if err != nil {
		return nil, fmt.Errorf("workflow: users with active %s triggers: %w", triggerType, err)
	}
	defer rows.Close()
	var out []userid.ID
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("workflow: users with active %s triggers: %w", triggerType, err)
		}
		id, err := userid.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("workflow: users with active %s triggers: %w", triggerType, err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("workflow: users with active %s triggers: %w", triggerType, err)
	}
	return out, nil
}

// UpdateWorkflow replaces the user's workflow w.ID with w (validated and
// normalised like CreateWorkflow; created_at is kept). Instances already
// created keep the steps they were created with. ErrNotFound if the user
// has no such workflow.
func (s *Store) UpdateWorkflow(ctx context.Context, user userid.ID, w Workflow) (Workflow, error) {
	if err := user.Check(); err != nil {
		return Workflow{}, err
	}
	n, err := Normalize(w)
	if err != nil {
		return Workflow{}, err
	}
	n.ID, n.UserID, n.UpdatedAt = w.ID, user, now()
	tt, trig, steps, err := encodeDefinition(n)
	if err != nil {
		return Workflow{}, err
	}
	var created time.Time
	err = s.db.QueryRowContext(ctx, s.db.Rebind(
		"UPDATE workflows SET name = ?, description = ?, active = ?, trigger_type = ?, trigger = ?, steps = ?, updated_at = ?"+
			" WHERE id = ? AND user_id = ? RETURNING created_at"),
		n.Name, n.Description, n.Active, tt, trig, steps, n.UpdatedAt, n.ID, user.String()).Scan(&created)
	if errors.Is(err, sql.ErrNoRows) {
		return Workflow{}, fmt.Errorf("workflow: update workflow %q: %w", w.ID, ErrNotFound)
	}
	if err != nil {
		return Workflow{}, fmt.Errorf("workflow: update workflow %q: %w", w.ID, err)
	}
	n.CreatedAt = created.UTC()
	return n, nil
}

// DeleteWorkflow deletes the user's workflow id (ErrNotFound if none). Its
// instances stay as history; those still queued are cancelled (a running
// one finishes, or is cancelled with RequestCancel).
func (s *Store) DeleteWorkflow(ctx context.Context, user userid.ID, id string) (err error) {
	if err := user.Check(); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("workflow: delete workflow %q: %w", id, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	res, err := tx.ExecContext(ctx, s.db.Rebind("DELETE FROM workflows WHERE id = ? AND user_id = ?"), id, user.String())
	if err != nil {
		return fmt.Errorf("workflow: delete workflow %q: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("workflow: delete workflow %q: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("workflow: delete workflow %q: %w", id, ErrNotFound)
	}
	t := now()
	if _, err := tx.ExecContext(ctx, s.db.Rebind(
		"UPDATE step_runs SET status = ?, finished_at = ? WHERE user_id = ? AND status = ? AND instance_id IN"+
			" (SELECT id FROM workflow_instances WHERE user_id = ? AND workflow_id = ? AND status = ?)"),
		StepCancelled, t, user.String(), StepPending, user.String(), id, StatusQueued); err != nil {
		return fmt.Errorf("workflow: delete workflow %q: cancel queued steps: %w", id, err)
	}
	if _, err := tx.ExecContext(ctx, s.db.Rebind(
		"UPDATE workflow_instances SET status = ?, error = ?, finished_at = ? WHERE user_id = ? AND workflow_id = ? AND status = ?"),
		StatusCancelled, "workflow deleted", t, user.String(), id, StatusQueued); err != nil {
		return fmt.Errorf("workflow: delete workflow %q: cancel queued runs: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("workflow: delete workflow %q: %w", id, err)
	}
	return nil
}
