package logs

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
)

// Store keeps the agent log in the SQL database.
type Store struct {
	db *sqldb.DB
}

// NewStore returns a Store over db (migrated).
func NewStore(db *sqldb.DB) *Store { return &Store{db: db} }

const columns = "id, user_id, reference_string, log_type, workflow_id, workflow_instance_id, workflow_name, " +
	"step_id, step_instance_id, step_name, messages, needs_review, feedback, start_time, end_time, " +
	"prompt_tokens, completion_tokens, total_tokens, total_cost, model, error"

// newest is the order of List and of Grouped's parents; the keyset of the cursor.
const newest = " ORDER BY start_time DESC, id DESC"

// newID returns a random (version 4) UUID.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	b[6], b[8] = (b[6]&0x0f)|0x40, (b[8]&0x3f)|0x80
	return formatUUID(b[:])
}

func formatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// canonicalID returns s as a canonical lowercase UUID, or false.
func canonicalID(s string) (string, bool) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return "", false
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36])
	if err != nil {
		return "", false
	}
	return formatUUID(b), true
}

// stamp is a time as stored: UTC, at the microsecond precision both dialects keep.
func stamp(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func nullTime(t time.Time) sql.NullTime {
	if t.IsZero() {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: stamp(t), Valid: true}
}

// messagesText checks that m is JSON and returns it as stored ("[]" for nil).
func messagesText(m json.RawMessage) (string, error) {
	if len(m) == 0 {
		return "[]", nil
	}
	if !json.Valid(m) {
		return "", invalid("messages", "not valid JSON")
	}
	return string(m), nil
}

type scanner interface{ Scan(dest ...any) error }

func scanEntry(row scanner) (Entry, error) {
	var (
		e        Entry
		uid, msg string
		end      sql.NullTime
	)
	if err := row.Scan(&e.ID, &uid, &e.ReferenceString, &e.LogType, &e.WorkflowID, &e.WorkflowInstanceID,
		&e.WorkflowName, &e.StepID, &e.StepInstanceID, &e.StepName, &msg, &e.NeedsReview, &e.Feedback,
		&e.StartTime, &end, &e.PromptTokens, &e.CompletionTokens, &e.TotalTokens, &e.TotalCost, &e.Model, &e.Error); err != nil {
		return Entry{}, err
	}
	id, err := userid.Parse(uid)
	if err != nil {
		return Entry{}, fmt.Errorf("logs: stored user id of %s: %w", e.ID, err)
	}
	e.UserID, e.Messages, e.StartTime = id, json.RawMessage(msg), e.StartTime.UTC()
	if end.Valid {
		e.EndTime = end.Time.UTC()
	}
	return e, nil
}

// Insert adds e as the user's row and returns it as stored: the id is a new
// UUID when empty, StartTime is now when zero, nil Messages is []. e.UserID is
// ignored (user is the owner).
func (s *Store) Insert(ctx context.Context, user userid.ID, e Entry) (Entry, error) {
	if err := user.Check(); err != nil {
		return Entry{}, err
	}
	if e.ID == "" {
		e.ID = newID()
	} else if id, ok := canonicalID(e.ID); ok {
		e.ID = id
	} else {
		return Entry{}, invalid("id", "%q is not a UUID", e.ID)
	}
	if !ValidType(e.LogType) {
		return Entry{}, invalid("log_type", "unknown log type %q", e.LogType)
	}
	if utf8.RuneCountInString(e.Feedback) > MaxFeedbackLen {
		return Entry{}, invalid("feedback", "over %d characters", MaxFeedbackLen)
	}
	msgs, err := messagesText(e.Messages)
	if err != nil {
		return Entry{}, err
	}
	if e.StartTime.IsZero() {
		e.StartTime = time.Now()
	}
	e.UserID, e.Messages, e.StartTime = user, json.RawMessage(msgs), stamp(e.StartTime)
	if !e.EndTime.IsZero() {
		e.EndTime = stamp(e.EndTime)
	}
	_, err = s.db.ExecContext(ctx, s.db.Rebind("INSERT INTO logs ("+columns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
		e.ID, user.String(), e.ReferenceString, e.LogType, e.WorkflowID, e.WorkflowInstanceID, e.WorkflowName,
		e.StepID, e.StepInstanceID, e.StepName, msgs, e.NeedsReview, e.Feedback, e.StartTime, nullTime(e.EndTime),
		e.PromptTokens, e.CompletionTokens, e.TotalTokens, e.TotalCost, e.Model, e.Error)
	if s.db.IsUniqueViolation(err) {
		return Entry{}, fmt.Errorf("logs: insert %s: %w", e.ID, ErrExists)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("logs: insert %s: %w", e.ID, err)
	}
	return e, nil
}

// Update records the outcome of the user's row e.ID: end time (zero: NULL),
// messages (nil: left as they are), tokens, cost, model and error. Another user's
// row, an unknown or a malformed id is ErrNotFound.
func (s *Store) Update(ctx context.Context, user userid.ID, e Entry) error {
	if err := user.Check(); err != nil {
		return err
	}
	id, ok := canonicalID(e.ID)
	if !ok {
		return fmt.Errorf("logs: update %q: %w", e.ID, ErrNotFound)
	}
	var msgs sql.NullString
	if e.Messages != nil {
		m, err := messagesText(e.Messages)
		if err != nil {
			return err
		}
		msgs = sql.NullString{String: m, Valid: true}
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`UPDATE logs SET end_time = ?, messages = COALESCE(?, messages),
		prompt_tokens = ?, completion_tokens = ?, total_tokens = ?, total_cost = ?, model = ?, error = ?
		WHERE id = ? AND user_id = ?`),
		nullTime(e.EndTime), msgs, e.PromptTokens, e.CompletionTokens, e.TotalTokens, e.TotalCost, e.Model, e.Error,
		id, user.String())
	return affectedOne(res, err, "update "+id)
}

func affectedOne(res sql.Result, err error, what string) error {
	if err != nil {
		return fmt.Errorf("logs: %s: %w", what, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("logs: %s: %w", what, err)
	}
	if n == 0 {
		return fmt.Errorf("logs: %s: %w", what, ErrNotFound)
	}
	return nil
}

// Get returns the user's row id. Another user's row, an unknown or a
// malformed id is ErrNotFound.
func (s *Store) Get(ctx context.Context, user userid.ID, id string) (Entry, error) {
	if err := user.Check(); err != nil {
		return Entry{}, err
	}
	cid, ok := canonicalID(id)
	if !ok {
		return Entry{}, fmt.Errorf("logs: get %q: %w", id, ErrNotFound)
	}
	e, err := scanEntry(s.db.QueryRowContext(ctx, s.db.Rebind("SELECT "+columns+" FROM logs WHERE id = ? AND user_id = ?"),
		cid, user.String()))
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, fmt.Errorf("logs: get %s: %w", cid, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("logs: get %s: %w", cid, err)
	}
	return e, nil
}

// Review stores the user's verdict on row id and returns the row. Feedback
// over MaxFeedbackLen characters is refused; another user's row, an unknown
// or a malformed id is ErrNotFound.
func (s *Store) Review(ctx context.Context, user userid.ID, id string, needsReview bool, feedback string) (Entry, error) {
	if err := user.Check(); err != nil {
		return Entry{}, err
	}
	if utf8.RuneCountInString(feedback) > MaxFeedbackLen {
		return Entry{}, invalid("feedback", "over %d characters", MaxFeedbackLen)
	}
	cid, ok := canonicalID(id)
	if !ok {
		return Entry{}, fmt.Errorf("logs: review %q: %w", id, ErrNotFound)
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind("UPDATE logs SET needs_review = ?, feedback = ? WHERE id = ? AND user_id = ?"),
		needsReview, feedback, cid, user.String())
	if err := affectedOne(res, err, "review "+cid); err != nil {
		return Entry{}, err
	}
	return s.Get(ctx, user, cid)
}

// cursor is the keyset position after the last row of a page.
type cursor struct {
	start time.Time
	id    string
}

func (c cursor) String() string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.start.UnixMicro(), 10) + "," + c.id))
}

func parseCursor(s string) (cursor, error) {
	bad := invalid("cursor", "not a cursor from this API")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return cursor{}, bad
	}
	us, id, ok := strings.Cut(string(raw), ",")
	micros, err := strconv.ParseInt(us, 10, 64)
	if !ok || err != nil {
		return cursor{}, bad
	}
	cid, ok := canonicalID(id)
	if !ok || cid != id {
		return cursor{}, bad
	}
	return cursor{start: time.UnixMicro(micros).UTC(), id: id}, nil
}

// where builds a WHERE clause: always the user first, then more terms.
type where struct {
	terms []string
	args  []any
}

func userWhere(user userid.ID) *where {
	return &where{terms: []string{"user_id = ?"}, args: []any{user.String()}}
}

func (w *where) add(term string, args ...any) {
	w.terms = append(w.terms, term)
	w.args = append(w.args, args...)
}

func (w *where) String() string { return " WHERE " + strings.Join(w.terms, " AND ") }

// apply validates f and adds its terms (and the cursor's) to w; it returns
// the page size.
func (f Filter) apply(w *where) (int, error) {
	limit := f.Limit
	switch {
	case limit < 0:
		return 0, invalid("limit", "negative")
	case limit == 0:
		limit = DefaultLimit
	case limit > MaxLimit:
		limit = MaxLimit
	}
	if f.LogType != "" {
		if !ValidType(f.LogType) {
			return 0, invalid("log_type", "unknown log type %q", f.LogType)
		}
		w.add("log_type = ?", f.LogType)
	}
	if f.WorkflowID != "" {
		w.add("workflow_id = ?", f.WorkflowID)
	}
	if f.InstanceID != "" {
		w.add("workflow_instance_id = ?", f.InstanceID)
	}
	if f.NeedsReview != nil {
		// A literal, not a parameter, so the partial index on the review queue applies.
		if *f.NeedsReview {
			w.add("needs_review")
		} else {
			w.add("NOT needs_review")
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		return 0, invalid("until", "not after since")
	}
	if !f.Since.IsZero() {
		w.add("start_time >= ?", stamp(f.Since))
	}
	if !f.Until.IsZero() {
		w.add("start_time < ?", stamp(f.Until))
	}
	if f.Cursor != "" {
		c, err := parseCursor(f.Cursor)
		if err != nil {
			return 0, err
		}
		w.add("(start_time < ? OR (start_time = ? AND id < ?))", c.start, c.start, c.id)
	}
	return limit, nil
}

// query runs a SELECT of whole rows.
func (s *Store) query(ctx context.Context, what, q string, args ...any) ([]Entry, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("logs: %s: %w", what, err)
	}
	defer rows.Close()
	out := []Entry{}
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, fmt.Errorf("logs: %s: %w", what, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("logs: %s: %w", what, err)
	}
	return out, nil
}

// pageOf fetches one page (limit+1 rows tell whether there is a next one).
func (s *Store) pageOf(ctx context.Context, what string, w *where, limit int) ([]Entry, string, error) {
	items, err := s.query(ctx, what, "SELECT "+columns+" FROM logs"+w.String()+newest+" LIMIT "+strconv.Itoa(limit+1), w.args...)
	if err != nil {
		return nil, "", err
	}
	if len(items) <= limit {
		return items, "", nil
	}
	items = items[:limit]
	last := items[limit-1]
	return items, cursor{start: last.StartTime, id: last.ID}.String(), nil
}

// List returns one page of the user's rows that match f, newest first
// (by start time, then id), with their messages.
func (s *Store) List(ctx context.Context, user userid.ID, f Filter) (Page, error) {
	if err := user.Check(); err != nil {
		return Page{}, err
	}
	w := userWhere(user)
	limit, err := f.apply(w)
	if err != nil {
		return Page{}, err
	}
	items, next, err := s.pageOf(ctx, "list", w, limit)
	if err != nil {
		return Page{}, err
	}
	return Page{Items: items, NextCursor: next}, nil
}

// Grouped returns one page of the user's runs, newest first: each workflow
// row with the step rows of its instance (oldest first) as children. A
// non-workflow row that has no run to hang under (no instance id, or no
// workflow row for its instance) is a parent of its own, without children.
// f selects and pages the parents.
func (s *Store) Grouped(ctx context.Context, user userid.ID, f Filter) (GroupedPage, error) {
	if err := user.Check(); err != nil {
		return GroupedPage{}, err
	}
	w := userWhere(user)
	w.add(`(log_type = 'workflow' OR workflow_instance_id = '' OR NOT EXISTS (
		SELECT 1 FROM logs p WHERE p.user_id = logs.user_id
		AND p.workflow_instance_id = logs.workflow_instance_id AND p.log_type = 'workflow'))`)
	limit, err := f.apply(w)
	if err != nil {
		return GroupedPage{}, err
	}
	parents, next, err := s.pageOf(ctx, "grouped", w, limit)
	if err != nil {
		return GroupedPage{}, err
	}
	page := GroupedPage{Items: make([]Group, len(parents)), NextCursor: next}
	var instances []string
	seen := map[string]bool{}
	for i, p := range parents {
		page.Items[i] = Group{Entry: p, Children: []Entry{}}
		if p.LogType == TypeWorkflow && p.WorkflowInstanceID != "" && !seen[p.WorkflowInstanceID] {
			seen[p.WorkflowInstanceID] = true
			instances = append(instances, p.WorkflowInstanceID)
		}
	}
	if len(instances) == 0 {
		return page, nil
	}
	cw := userWhere(user)
	cw.add("log_type <> 'workflow'")
	cw.add("workflow_instance_id IN (?"+strings.Repeat(", ?", len(instances)-1)+")", toAny(instances)...)
	children, err := s.query(ctx, "grouped children", "SELECT "+columns+" FROM logs"+cw.String()+" ORDER BY start_time, id", cw.args...)
	if err != nil {
		return GroupedPage{}, err
	}
	byInstance := map[string][]Entry{}
	for _, c := range children {
		byInstance[c.WorkflowInstanceID] = append(byInstance[c.WorkflowInstanceID], c)
	}
	for i, p := range page.Items {
		if p.LogType == TypeWorkflow {
			if cs := byInstance[p.WorkflowInstanceID]; cs != nil {
				page.Items[i].Children = cs
			}
		}
	}
	return page, nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// dayExpr is the UTC day of start_time as "2006-01-02". On SQLite the
// timestamp is stored as sortable UTC text that starts with the day.
func (s *Store) dayExpr() string {
	if s.db.Dialect == sqldb.Postgres {
		return "to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
	}
	return "substr(start_time, 1, 10)"
}

const sums = "COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), " +
	"COALESCE(SUM(total_tokens), 0), COALESCE(SUM(total_cost), 0)"

// Costs returns the user's spend over [since, until) (a zero bound is
// unbounded), counting the non-workflow rows (see Entry).
func (s *Store) Costs(ctx context.Context, user userid.ID, since, until time.Time) (Costs, error) {
	if err := user.Check(); err != nil {
		return Costs{}, err
	}
	if !since.IsZero() && !until.IsZero() && !until.After(since) {
		return Costs{}, invalid("until", "not after since")
	}
	w := userWhere(user)
	w.add("log_type <> 'workflow'")
	if !since.IsZero() {
		w.add("start_time >= ?", stamp(since))
	}
	if !until.IsZero() {
		w.add("start_time < ?", stamp(until))
	}
	// One query, grouped finely, summed up here: the totals and the three
	// breakdowns come from one snapshot.
	q := "SELECT model, workflow_id, " + s.dayExpr() + ", " + sums +
		" FROM logs" + w.String() + " GROUP BY model, workflow_id, " + s.dayExpr()
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(q), w.args...)
	if err != nil {
		return Costs{}, fmt.Errorf("logs: costs: %w", err)
	}
	defer rows.Close()
	c := Costs{ByModel: []ModelCost{}, ByWorkflow: []WorkflowCost{}, ByDay: []DayCost{}}
	if !since.IsZero() {
		c.Since = stamp(since)
	}
	if !until.IsZero() {
		c.Until = stamp(until)
	}
	models, workflows, days := map[string]*ModelCost{}, map[string]*WorkflowCost{}, map[string]*DayCost{}
	for rows.Next() {
		var (
			model, wf, day string
			t              Totals
		)
		if err := rows.Scan(&model, &wf, &day, &t.Rows, &t.PromptTokens, &t.CompletionTokens, &t.TotalTokens, &t.TotalCost); err != nil {
			return Costs{}, fmt.Errorf("logs: costs: %w", err)
		}
		c.Totals.add(t)
		if models[model] == nil {
			models[model] = &ModelCost{Model: model}
		}
		models[model].add(t)
		if days[day] == nil {
			days[day] = &DayCost{Day: day}
		}
		days[day].add(t)
		if wf != "" {
			if workflows[wf] == nil {
				workflows[wf] = &WorkflowCost{WorkflowID: wf}
			}
			workflows[wf].add(t)
		}
	}
	if err := rows.Err(); err != nil {
		return Costs{}, fmt.Errorf("logs: costs: %w", err)
	}
	rows.Close()
	if err := s.workflowNames(ctx, user, workflows); err != nil {
		return Costs{}, err
	}
	for _, m := range models {
		c.ByModel = append(c.ByModel, *m)
	}
	for _, wc := range workflows {
		c.ByWorkflow = append(c.ByWorkflow, *wc)
	}
	for _, d := range days {
		c.ByDay = append(c.ByDay, *d)
	}
	sort.Slice(c.ByModel, func(i, j int) bool {
		a, b := c.ByModel[i], c.ByModel[j]
		return a.TotalCost > b.TotalCost || a.TotalCost == b.TotalCost && a.Model < b.Model
	})
	sort.Slice(c.ByWorkflow, func(i, j int) bool {
		a, b := c.ByWorkflow[i], c.ByWorkflow[j]
		return a.TotalCost > b.TotalCost || a.TotalCost == b.TotalCost && a.WorkflowID < b.WorkflowID
	})
	sort.Slice(c.ByDay, func(i, j int) bool { return c.ByDay[i].Day < c.ByDay[j].Day })
	return c, nil
}

// workflowNames fills in the name on each workflow's most recent row (a
// workflow may have been renamed between runs).
func (s *Store) workflowNames(ctx context.Context, user userid.ID, wfs map[string]*WorkflowCost) error {
	for id, wc := range wfs {
		err := s.db.QueryRowContext(ctx, s.db.Rebind(
			"SELECT workflow_name FROM logs WHERE user_id = ? AND workflow_id = ?"+newest+" LIMIT 1"),
			user.String(), id).Scan(&wc.WorkflowName)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("logs: costs: workflow name: %w", err)
		}
	}
	return nil
}

// Usage returns the spend of the user's run instanceID: sums over its step
// rows and each of them. A run the user has no rows for is ErrNotFound.
func (s *Store) Usage(ctx context.Context, user userid.ID, instanceID string) (Usage, error) {
	if err := user.Check(); err != nil {
		return Usage{}, err
	}
	if instanceID == "" {
		return Usage{}, fmt.Errorf("logs: usage: empty instance id: %w", ErrNotFound)
	}
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(`SELECT id, log_type, workflow_id, workflow_name, step_id,
		step_instance_id, step_name, model, start_time, end_time, prompt_tokens, completion_tokens, total_tokens, total_cost
		FROM logs WHERE user_id = ? AND workflow_instance_id = ? ORDER BY start_time, id`), user.String(), instanceID)
	if err != nil {
		return Usage{}, fmt.Errorf("logs: usage of %s: %w", instanceID, err)
	}
	defer rows.Close()
	u := Usage{InstanceID: instanceID, Steps: []StepUsage{}}
	found := false
	for rows.Next() {
		var (
			st           StepUsage
			wfID, wfName string
			end          sql.NullTime
		)
		if err := rows.Scan(&st.ID, &st.LogType, &wfID, &wfName, &st.StepID, &st.StepInstanceID, &st.StepName, &st.Model,
			&st.StartTime, &end, &st.PromptTokens, &st.CompletionTokens, &st.TotalTokens, &st.TotalCost); err != nil {
			return Usage{}, fmt.Errorf("logs: usage of %s: %w", instanceID, err)
		}
		found = true
		// The workflow row names the run; failing that, the first step row that does.
		if st.LogType == TypeWorkflow || u.WorkflowID == "" {
			u.WorkflowID, u.WorkflowName = wfID, wfName
		}
		if st.LogType == TypeWorkflow {
			continue
		}
		st.StartTime = st.StartTime.UTC()
		if end.Valid {
			st.EndTime = end.Time.UTC()
		}
		u.Steps = append(u.Steps, st)
		u.add(Totals{Rows: 1, PromptTokens: int64(st.PromptTokens), CompletionTokens: int64(st.CompletionTokens),
			TotalTokens: int64(st.TotalTokens), TotalCost: st.TotalCost})
	}
	if err := rows.Err(); err != nil {
		return Usage{}, fmt.Errorf("logs: usage of %s: %w", instanceID, err)
	}
	if !found {
		return Usage{}, fmt.Errorf("logs: usage of %s: %w", instanceID, ErrNotFound)
	}
	return u, nil
}
