package workflow

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
)

// MaxIdempotencyKeyLen bounds CreateInstance's key.
const MaxIdempotencyKeyLen = 500

// maxErrorLen bounds the error text stored on instances and step runs.
const maxErrorLen = 4000

const instanceColumns = "id, user_id, workflow_id, workflow_name, status, trigger_input, trigger_snapshot, steps_snapshot," +
	" idempotency_key, error, cancel_requested, claimed_by, claim_expires_at, attempts, log_id, created_at, started_at, finished_at"

const stepRunColumns = "id, step_id, position, name, kind, status, input, output, error," +
	" prompt_tokens, completion_tokens, total_tokens, cost, started_at, finished_at"

// instanceRow is an instance as stored, with its steps snapshot still encoded.
type instanceRow struct {
	Instance
	stepsSnapshot string
	claimedBy     string
}

func scanInstance(row scanner) (instanceRow, error) {
	var (
		r                     instanceRow
		uid                   string
		triggerIn             string
		triggerSnap           sql.NullString
		key, claimedBy, logID sql.NullString
		claimExpires          sql.NullTime
		started, finished     sql.NullTime
	)
	if err := row.Scan(&r.ID, &uid, &r.WorkflowID, &r.WorkflowName, &r.Status, &triggerIn, &triggerSnap, &r.stepsSnapshot,
		&key, &r.Error, &r.CancelRequested, &claimedBy, &claimExpires, &r.Attempts, &logID, &r.CreatedAt, &started, &finished); err != nil {
		return instanceRow{}, err
	}
	var err error
	if r.UserID, err = userid.Parse(uid); err != nil {
		return instanceRow{}, fmt.Errorf("stored user id of instance %s: %w", r.ID, err)
	}
	if err := json.Unmarshal([]byte(triggerIn), &r.Trigger); err != nil {
		return instanceRow{}, fmt.Errorf("stored trigger input of instance %s: %w", r.ID, err)
	}
	if triggerSnap.Valid && triggerSnap.String != "" {
		r.WorkflowTrigger = new(Trigger)
		if err := json.Unmarshal([]byte(triggerSnap.String), r.WorkflowTrigger); err != nil {
			return instanceRow{}, fmt.Errorf("stored trigger of instance %s: %w", r.ID, err)
		}
	}
	r.IdempotencyKey, r.claimedBy, r.LogID = key.String, claimedBy.String, logID.String
	r.CreatedAt = r.CreatedAt.UTC()
	if started.Valid {
		r.StartedAt = started.Time.UTC()
	}
	if finished.Valid {
		r.FinishedAt = finished.Time.UTC()
	}
	return r, nil
}

func scanStepRun(row scanner) (StepRun, error) {
	var (
		sr                StepRun
		started, finished sql.NullTime
	)
	if err := row.Scan(&sr.ID, &sr.StepID, &sr.Position, &sr.Name, &sr.Kind, &sr.Status, &sr.Input, &sr.Output, &sr.Error,
		&sr.Usage.PromptTokens, &sr.Usage.CompletionTokens, &sr.Usage.TotalTokens, &sr.Usage.Cost, &started, &finished); err != nil {
		return StepRun{}, err
	}
	if started.Valid {
		sr.StartedAt = started.Time.UTC()
	}
	if finished.Valid {
		sr.FinishedAt = finished.Time.UTC()
	}
	return sr, nil
}

// querier is *sql.DB or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (s *Store) stepRuns(ctx context.Context, q querier, user userid.ID, instanceID string) ([]StepRun, error) {
	rows, err := q.QueryContext(ctx, s.db.Rebind("SELECT "+stepRunColumns+" FROM step_runs WHERE instance_id = ? AND user_id = ? ORDER BY position"),
		instanceID, user.String())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []StepRun{}
	for rows.Next() {
		sr, err := scanStepRun(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sr)
	}
	return out, rows.Err()
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + " …"
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

// CreateInstance queues a run of the user's workflow workflowID (active or
// not) with the trigger input in: the instance keeps a snapshot of the
// workflow's trigger and steps, its step runs are pending, its status is
// queued. With a non-empty idempotencyKey (unique per user), a key already
// used returns the existing instance and created=false, also when several
// callers race (the unique index decides). A workflow of another user is
// ErrNotFound.
func (s *Store) CreateInstance(ctx context.Context, user userid.ID, workflowID string, in TriggerInput, idempotencyKey string) (inst Instance, created bool, err error) {
	if err := user.Check(); err != nil {
		return Instance{}, false, err
	}
	if len(idempotencyKey) > MaxIdempotencyKeyLen {
		return Instance{}, false, fmt.Errorf("workflow: idempotency key longer than %d bytes", MaxIdempotencyKeyLen)
	}
	if idempotencyKey != "" {
		existing, err := s.instanceByKey(ctx, s.db, user, idempotencyKey)
		if err == nil {
			return existing, false, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Instance{}, false, err
		}
	}
	w, err := s.GetWorkflow(ctx, user, workflowID)
	if err != nil {
		return Instance{}, false, err
	}
	_, trig, steps, err := encodeDefinition(w)
	if err != nil {
		return Instance{}, false, err
	}
	input, err := marshalJSON(in)
	if err != nil {
		return Instance{}, false, fmt.Errorf("workflow: encode trigger input: %w", err)
	}
	inst = Instance{
		ID: NewID(), UserID: user, WorkflowID: w.ID, WorkflowName: w.Name, Status: StatusQueued,
		Trigger: in, IdempotencyKey: idempotencyKey, CreatedAt: now(), WorkflowTrigger: w.Trigger,
		Steps: make([]StepRun, len(w.Steps)),
	}
	for i, st := range w.Steps {
		inst.Steps[i] = StepRun{ID: NewID(), StepID: st.ID, Position: i, Name: st.Name, Kind: st.Kind, Status: StepPending}
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Instance{}, false, fmt.Errorf("workflow: create instance: %w", err)
	}
	defer func() {
		if err != nil || !created {
			_ = tx.Rollback()
		}
	}()
	res, err := tx.ExecContext(ctx, s.db.Rebind("INSERT INTO workflow_instances"+
		" (id, user_id, workflow_id, workflow_name, status, trigger_input, trigger_snapshot, steps_snapshot, idempotency_key, created_at)"+
		" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, idempotency_key) DO NOTHING"),
		inst.ID, user.String(), w.ID, w.Name, StatusQueued, string(input), trig, steps, nullString(idempotencyKey), inst.CreatedAt)
	if err != nil {
		return Instance{}, false, fmt.Errorf("workflow: create instance: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return Instance{}, false, fmt.Errorf("workflow: create instance: %w", err)
	} else if n == 0 { // the key was taken since we looked
		existing, err := s.instanceByKey(ctx, tx, user, idempotencyKey)
		if err != nil {
			return Instance{}, false, err
		}
		return existing, false, nil
	}
	if len(inst.Steps) > 0 {
		var (
			q    strings.Builder
			args []any
		)
		q.WriteString("INSERT INTO step_runs (id, instance_id, user_id, step_id, position, name, kind, status) VALUES ")
		for i, sr := range inst.Steps {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
			args = append(args, sr.ID, inst.ID, user.String(), sr.StepID, sr.Position, sr.Name, sr.Kind, sr.Status)
		}
		if _, err := tx.ExecContext(ctx, s.db.Rebind(q.String()), args...); err != nil {
			return Instance{}, false, fmt.Errorf("workflow: create instance: step runs: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		if idempotencyKey != "" && sqldb.IsUniqueViolation(err) {
			existing, kerr := s.instanceByKey(ctx, s.db, user, idempotencyKey)
			if kerr == nil {
				return existing, false, nil
			}
		}
		return Instance{}, false, fmt.Errorf("workflow: create instance: commit: %w", err)
	}
	created = true
	if f := s.created.Load(); f != nil {
		(*f)()
	}
	return inst, true, nil
}

func (s *Store) instanceByKey(ctx context.Context, q querier, user userid.ID, key string) (Instance, error) {
	r, err := scanInstance(q.QueryRowContext(ctx,
		s.db.Rebind("SELECT "+instanceColumns+" FROM workflow_instances WHERE user_id = ? AND idempotency_key = ?"), user.String(), key))
	if errors.Is(err, sql.ErrNoRows) {
		return Instance{}, fmt.Errorf("workflow: instance with key %q: %w", key, ErrNotFound)
	}
	if err != nil {
		return Instance{}, fmt.Errorf("workflow: instance with key %q: %w", key, err)
	}
	if r.Steps, err = s.stepRuns(ctx, q, user, r.ID); err != nil {
		return Instance{}, fmt.Errorf("workflow: instance with key %q: step runs: %w", key, err)
	}
	return r.Instance, nil
}

// GetInstance returns the user's instance id with its step runs (ordered by
// position, with inputs and outputs), or ErrNotFound.
func (s *Store) GetInstance(ctx context.Context, user userid.ID, id string) (Instance, error) {
	if err := user.Check(); err != nil {
		return Instance{}, err
	}
	r, err := s.getInstance(ctx, s.db, user, id)
	if err != nil {
		return Instance{}, err
	}
	return r.Instance, nil
}

func (s *Store) getInstance(ctx context.Context, q querier, user userid.ID, id string) (instanceRow, error) {
	r, err := scanInstance(q.QueryRowContext(ctx,
		s.db.Rebind("SELECT "+instanceColumns+" FROM workflow_instances WHERE id = ? AND user_id = ?"), id, user.String()))
	if errors.Is(err, sql.ErrNoRows) {
		return instanceRow{}, fmt.Errorf("workflow: get instance %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return instanceRow{}, fmt.Errorf("workflow: get instance %q: %w", id, err)
	}
	if r.Steps, err = s.stepRuns(ctx, q, user, id); err != nil {
		return instanceRow{}, fmt.Errorf("workflow: get instance %q: step runs: %w", id, err)
	}
	return r, nil
}

// Default and largest page of ListInstances.
const (
	DefaultListLimit = 50
	MaxListLimit     = 1000
)

// ListInstances returns the user's instances of workflowID ("" for all of
// the user's instances), newest first, at most limit (<= 0:
// DefaultListLimit; capped at MaxListLimit). Their Steps are not loaded
// (nil): GetInstance has them.
func (s *Store) ListInstances(ctx context.Context, user userid.ID, workflowID string, limit int) ([]Instance, error) {
	if err := user.Check(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = DefaultListLimit
	}
	limit = min(limit, MaxListLimit)
	q := "SELECT " + instanceColumns + " FROM workflow_instances WHERE user_id = ?"
	args := []any{user.String()}
	if workflowID != "" {
		q += " AND workflow_id = ?"
		args = append(args, workflowID)
	}
	q += " ORDER BY created_at DESC, id DESC LIMIT ?"
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("workflow: list instances: %w", err)
	}
	defer rows.Close()
	out := []Instance{}
	for rows.Next() {
		r, err := scanInstance(rows)
		if err != nil {
			return nil, fmt.Errorf("workflow: list instances: %w", err)
		}
		out = append(out, r.Instance)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("workflow: list instances: %w", err)
	}
	return out, nil
}

// RequestCancel cancels the user's instance id: a queued one is cancelled
// at once (with its steps); a running one is flagged cancel_requested, and
// the runner holding it stops it (inside the current LLM or tool call) and
// ends it as cancelled; a finished one is left as it is. It returns the
// instance as it is afterwards, or ErrNotFound.
func (s *Store) RequestCancel(ctx context.Context, user userid.ID, id string) (inst Instance, err error) {
	if err := user.Check(); err != nil {
		return Instance{}, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Instance{}, fmt.Errorf("workflow: cancel instance %q: %w", id, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	t := now()
	res, err := tx.ExecContext(ctx, s.db.Rebind(
		"UPDATE workflow_instances SET status = ?, error = ?, finished_at = ? WHERE id = ? AND user_id = ? AND status = ?"),
		StatusCancelled, "cancelled", t, id, user.String(), StatusQueued)
	if err != nil {
		return Instance{}, fmt.Errorf("workflow: cancel instance %q: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return Instance{}, fmt.Errorf("workflow: cancel instance %q: %w", id, err)
	} else if n == 1 {
		if _, err := tx.ExecContext(ctx, s.db.Rebind(
			"UPDATE step_runs SET status = ?, finished_at = ? WHERE instance_id = ? AND user_id = ? AND status = ?"),
			StepCancelled, t, id, user.String(), StepPending); err != nil {
			return Instance{}, fmt.Errorf("workflow: cancel instance %q: steps: %w", id, err)
		}
	} else if _, err := tx.ExecContext(ctx, s.db.Rebind(
		"UPDATE workflow_instances SET cancel_requested = ? WHERE id = ? AND user_id = ? AND status = ?"),
		true, id, user.String(), StatusRunning); err != nil {
		return Instance{}, fmt.Errorf("workflow: cancel instance %q: %w", id, err)
	}
	r, err := s.getInstance(ctx, tx, user, id)
	if err != nil {
		return Instance{}, err
	}
	if err := tx.Commit(); err != nil {
		return Instance{}, fmt.Errorf("workflow: cancel instance %q: %w", id, err)
	}
	return r.Instance, nil
}

// QueueDepth counts queued instances of all users (the worker pool gauge).
func (s *Store) QueueDepth(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, s.db.Rebind("SELECT COUNT(*) FROM workflow_instances WHERE status = ?"), StatusQueued).Scan(&n); err != nil {
		return 0, fmt.Errorf("workflow: queue depth: %w", err)
	}
	return n, nil
}

// Claim takes the oldest claimable instance of any user for owner (a runner
// replica id) for lease: a queued one, or a running one whose lease has
// passed (its runner crashed or was stopped). The instance becomes running,
// claimed by owner until now+lease, its attempts count up, and started_at
// keeps the first claim's time. It returns the instance (UserID set, with
// its step runs) and its steps snapshot, or nil when nothing is claimable.
//
// Several processes may claim at once: on PostgreSQL the candidate row is
// selected FOR UPDATE SKIP LOCKED inside the claiming UPDATE, so two
// claimers never get the same row and never wait for each other; on SQLite
// the claim runs in an immediate (write-locked) transaction.
func (s *Store) Claim(ctx context.Context, owner string, lease time.Duration) (*Instance, []Step, error) {
	if owner == "" {
		return nil, nil, errors.New("workflow: claim: empty owner")
	}
	t := now()
	lock := ""
	if s.db.Dialect == sqldb.Postgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	query := s.db.Rebind("UPDATE workflow_instances SET status = ?, claimed_by = ?, claim_expires_at = ?, attempts = attempts + 1," +
		" started_at = COALESCE(started_at, ?)" +
		" WHERE id = (SELECT id FROM workflow_instances WHERE status = ? OR (status = ? AND claim_expires_at < ?)" +
		" ORDER BY created_at, id LIMIT 1" + lock + ")" +
		" RETURNING " + instanceColumns)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("workflow: claim: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	r, err := scanInstance(tx.QueryRowContext(ctx, query,
		StatusRunning, owner, t.Add(lease), t, StatusQueued, StatusRunning, t))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("workflow: claim: %w", err)
	}
	if r.Steps, err = s.stepRuns(ctx, tx, r.UserID, r.ID); err != nil {
		return nil, nil, fmt.Errorf("workflow: claim %s: step runs: %w", r.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, fmt.Errorf("workflow: claim %s: commit: %w", r.ID, err)
	}
	var steps []Step
	if err := json.Unmarshal([]byte(r.stepsSnapshot), &steps); err != nil {
		return nil, nil, fmt.Errorf("workflow: claim %s: stored steps: %w", r.ID, err)
	}
	inst := r.Instance
	return &inst, steps, nil
}

// Renew extends owner's claim on the user's instance to now+lease and
// reports whether a cancel was requested. ErrLostClaim if owner no longer
// holds a running claim on it.
func (s *Store) Renew(ctx context.Context, user userid.ID, instanceID, owner string, lease time.Duration) (cancelRequested bool, err error) {
	if err := user.Check(); err != nil {
		return false, err
	}
	err = s.db.QueryRowContext(ctx, s.db.Rebind(
		"UPDATE workflow_instances SET claim_expires_at = ? WHERE id = ? AND user_id = ? AND claimed_by = ? AND status = ? RETURNING cancel_requested"),
		now().Add(lease), instanceID, user.String(), owner, StatusRunning).Scan(&cancelRequested)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("workflow: renew %s: %w", instanceID, ErrLostClaim)
	}
	if err != nil {
		return false, fmt.Errorf("workflow: renew %s: %w", instanceID, err)
	}
	return cancelRequested, nil
}

// CancelRequested reports, without writing, whether a cancel was requested
// for owner's running instance; ErrLostClaim if owner no longer holds it.
func (s *Store) CancelRequested(ctx context.Context, user userid.ID, instanceID, owner string) (bool, error) {
	if err := user.Check(); err != nil {
		return false, err
	}
	var cancelRequested bool
	err := s.db.QueryRowContext(ctx, s.db.Rebind(
		"SELECT cancel_requested FROM workflow_instances WHERE id = ? AND user_id = ? AND claimed_by = ? AND status = ?"),
		instanceID, user.String(), owner, StatusRunning).Scan(&cancelRequested)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("workflow: check %s: %w", instanceID, ErrLostClaim)
	}
	if err != nil {
		return false, fmt.Errorf("workflow: check %s: %w", instanceID, err)
	}
	return cancelRequested, nil
}

// ReleaseClaim ends owner's lease on the user's running instance now,
// leaving it running and claimed by owner, so that any runner (this process
// after a restart, or another replica) resumes it at once rather than when
// the lease would have expired. Used at shutdown.
func (s *Store) ReleaseClaim(ctx context.Context, user userid.ID, instanceID, owner string) error {
	if err := user.Check(); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, s.db.Rebind(
		"UPDATE workflow_instances SET claim_expires_at = ? WHERE id = ? AND user_id = ? AND claimed_by = ? AND status = ?"),
		now(), instanceID, user.String(), owner, StatusRunning)
	if err != nil {
		return fmt.Errorf("workflow: release %s: %w", instanceID, err)
	}
	return nil
}

// withClaim runs f in a transaction in which owner holds a running claim on
// the user's instance (the row is locked on PostgreSQL; SQLite transactions
// are write-locked), so a runner whose claim was taken over cannot write.
func (s *Store) withClaim(ctx context.Context, user userid.ID, instanceID, owner, what string, f func(tx *sql.Tx) error) (err error) {
	if err := user.Check(); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("workflow: %s %s: %w", what, instanceID, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	lock := ""
	if s.db.Dialect == sqldb.Postgres {
		lock = " FOR UPDATE"
	}
	var one int
	err = tx.QueryRowContext(ctx, s.db.Rebind("SELECT 1 FROM workflow_instances WHERE id = ? AND user_id = ? AND claimed_by = ? AND status = ?"+lock),
		instanceID, user.String(), owner, StatusRunning).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("workflow: %s %s: %w", what, instanceID, ErrLostClaim)
	}
	if err != nil {
		return fmt.Errorf("workflow: %s %s: %w", what, instanceID, err)
	}
	if err := f(tx); err != nil {
		return fmt.Errorf("workflow: %s %s: %w", what, instanceID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("workflow: %s %s: commit: %w", what, instanceID, err)
	}
	return nil
}

// SetLogID records the id of the run's "workflow" row in the agent log.
func (s *Store) SetLogID(ctx context.Context, user userid.ID, instanceID, owner, logID string) error {
	return s.withClaim(ctx, user, instanceID, owner, "set log id of", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.db.Rebind("UPDATE workflow_instances SET log_id = ? WHERE id = ? AND user_id = ?"),
			nullString(logID), instanceID, user.String())
		return err
	})
}

// errStepState: the step run is not in a state the update applies to.
var errStepState = errors.New("step run is not pending or running")

// StartStep marks the step run at position running (from pending, or from
// running when a resumed run restarts it) with its rendered input.
func (s *Store) StartStep(ctx context.Context, user userid.ID, instanceID, owner string, position int, input string) error {
	return s.withClaim(ctx, user, instanceID, owner, fmt.Sprintf("start step %d of", position), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.db.Rebind("UPDATE step_runs SET status = ?, input = ?, output = '', error = '', started_at = ?, finished_at = NULL"+
			" WHERE instance_id = ? AND user_id = ? AND position = ? AND status IN (?, ?)"),
			StepRunning, input, now(), instanceID, user.String(), position, StepPending, StepRunning)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return errStepState
		}
		return nil
	})
}

// FinishStep ends the step run at position with status (StepCompleted,
// StepFailed, StepSkipped, StepCancelled), its output, error text and the
// usage of its LLM calls.
func (s *Store) FinishStep(ctx context.Context, user userid.ID, instanceID, owner string, position int, status, output, errMsg string, usage llm.Usage) error {
	switch status {
	case StepCompleted, StepFailed, StepSkipped, StepCancelled:
	default:
		return fmt.Errorf("workflow: finish step: %q is not a final step status", status)
	}
	return s.withClaim(ctx, user, instanceID, owner, fmt.Sprintf("finish step %d of", position), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.db.Rebind("UPDATE step_runs SET status = ?, output = ?, error = ?,"+
			" prompt_tokens = ?, completion_tokens = ?, total_tokens = ?, cost = ?, finished_at = ?"+
			" WHERE instance_id = ? AND user_id = ? AND position = ? AND status IN (?, ?)"),
			status, output, truncateText(errMsg, maxErrorLen), usage.PromptTokens, usage.CompletionTokens, usage.TotalTokens, usage.Cost, now(),
			instanceID, user.String(), position, StepPending, StepRunning)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return errStepState
		}
		return nil
	})
}

// FinishInstance ends owner's run of the user's instance with status
// (StatusCompleted, StatusStopped, StatusFailed, StatusCancelled,
// StatusSkipped) and error text, and ends its unfinished step runs: cancelled
// for a cancelled run, skipped otherwise. The lease is dropped; claimed_by
// stays as a record of the runner.
func (s *Store) FinishInstance(ctx context.Context, user userid.ID, instanceID, owner, status, errMsg string) error {
	switch status {
	case StatusCompleted, StatusStopped, StatusFailed, StatusCancelled, StatusSkipped:
	default:
		return fmt.Errorf("workflow: finish instance: %q is not a final status", status)
	}
	stepStatus := StepSkipped
	if status == StatusCancelled {
		stepStatus = StepCancelled
	}
	return s.withClaim(ctx, user, instanceID, owner, "finish", func(tx *sql.Tx) error {
		t := now()
		if _, err := tx.ExecContext(ctx, s.db.Rebind("UPDATE step_runs SET status = ?, finished_at = ?"+
			" WHERE instance_id = ? AND user_id = ? AND status IN (?, ?)"),
			stepStatus, t, instanceID, user.String(), StepPending, StepRunning); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, s.db.Rebind("UPDATE workflow_instances SET status = ?, error = ?, finished_at = ?, claim_expires_at = NULL"+
			" WHERE id = ? AND user_id = ?"),
			status, truncateText(errMsg, maxErrorLen), t, instanceID, user.String())
		return err
	})
}
