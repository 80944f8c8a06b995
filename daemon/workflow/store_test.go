package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
)

func simpleWorkflow(name string) Workflow {
	return Workflow{
		Name: name, Active: true,
		Trigger: &Trigger{Type: TriggerNewEmail},
		Steps: []Step{
			{Name: "one", Kind: KindLLM, SystemPrompt: "say hi"},
			{Name: "two", Kind: KindTool, Tool: "t-echo", Arguments: json.RawMessage(`{"v":"<<step_output.one>>"}`)},
		},
	}
}

func TestStoreWorkflows(t *testing.T) {
	forEachBackend(t, func(t *testing.T, _ string, db *sqldb.DB) {
		ctx := context.Background()
		s := NewStore(db)
		a, b := newUser(t, db), newUser(t, db)

		w := must[Workflow](t)(s.CreateWorkflow(ctx, a, simpleWorkflow("A's")))
		if len(w.ID) != 36 || w.UserID != a || w.CreatedAt.IsZero() || !w.CreatedAt.Equal(w.UpdatedAt) {
			t.Fatalf("created %+v", w)
		}
		if w.Steps[1].Arguments == nil || string(w.Steps[1].Arguments) != `{"v":"<<step_output.`+w.Steps[0].ID+`>>"}` {
			t.Errorf("arguments %s", w.Steps[1].Arguments)
		}
		got := must[Workflow](t)(s.GetWorkflow(ctx, a, w.ID))
		if !jsonEqual(t, got, w) {
			t.Errorf("get:\n%s\nwant\n%s", mustJSON(t, got), mustJSON(t, w))
		}
		if _, err := s.CreateWorkflow(ctx, a, Workflow{}); !isValidation(err, "name") {
			t.Errorf("invalid create: %v", err)
		}
		if _, err := s.CreateWorkflow(ctx, userid.ID{}, simpleWorkflow("x")); !errors.Is(err, userid.ErrZero) {
			t.Errorf("zero user: %v", err)
		}
		sched := simpleWorkflow("B's schedule")
		sched.Trigger = &Trigger{Type: TriggerSchedule, Cron: "0 8 * * *"}
		wb := must[Workflow](t)(s.CreateWorkflow(ctx, b, sched))
		manual := simpleWorkflow("A's manual")
		manual.Trigger = nil
		wm := must[Workflow](t)(s.CreateWorkflow(ctx, a, manual))

		// Isolation: B sees none of A's, by id or in lists; malformed ids are not found.
		for _, id := range []string{w.ID, "not-a-uuid", "", "' OR 1=1 --"} {
			if _, err := s.GetWorkflow(ctx, b, id); !errors.Is(err, ErrNotFound) {
				t.Errorf("B gets A's workflow %q: %v", id, err)
			}
		}
		if _, err := s.UpdateWorkflow(ctx, b, w); !errors.Is(err, ErrNotFound) {
			t.Errorf("B updates A's workflow: %v", err)
		}
		if err := s.DeleteWorkflow(ctx, b, w.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("B deletes A's workflow: %v", err)
		}
		if l := must[[]Workflow](t)(s.ListWorkflows(ctx, a)); len(l) != 2 || l[0].ID != w.ID || l[1].ID != wm.ID {
			t.Errorf("A's list: %v", names(l))
		}
		if l := must[[]Workflow](t)(s.ListWorkflows(ctx, b)); len(l) != 1 || l[0].ID != wb.ID {
			t.Errorf("B's list: %v", names(l))
		}
		if l := must[[]Workflow](t)(s.ListActiveByTrigger(ctx, a, TriggerNewEmail)); len(l) != 1 || l[0].ID != w.ID {
			t.Errorf("A's active new_email: %v", names(l))
		}
		if l := must[[]Workflow](t)(s.ListActiveByTrigger(ctx, b, TriggerNewEmail)); len(l) != 0 {
			t.Errorf("B's active new_email: %v", names(l))
		}
		if u := must[[]userid.ID](t)(s.UsersWithActiveTrigger(ctx, TriggerNewEmail)); len(u) != 1 || u[0] != a {
			t.Errorf("users with new_email: %v", u)
		}
		if u := must[[]userid.ID](t)(s.UsersWithActiveTrigger(ctx, TriggerSchedule)); len(u) != 1 || u[0] != b {
			t.Errorf("users with schedule: %v", u)
		}

		// Update replaces the whole workflow, keeps id and created_at.
		time.Sleep(2 * time.Millisecond)
		upd := w
		upd.Name, upd.Active, upd.Trigger = "renamed", false, nil
		upd.Steps = upd.Steps[:1]
		u := must[Workflow](t)(s.UpdateWorkflow(ctx, a, upd))
		if u.ID != w.ID || !u.CreatedAt.Equal(w.CreatedAt) || !u.UpdatedAt.After(w.UpdatedAt) || u.Name != "renamed" || len(u.Steps) != 1 || u.Trigger != nil {
			t.Errorf("updated %+v", u)
		}
		if got := must[Workflow](t)(s.GetWorkflow(ctx, a, w.ID)); !jsonEqual(t, got, u) {
			t.Errorf("after update:\n%s\nwant\n%s", mustJSON(t, got), mustJSON(t, u))
		}
		if _, err := s.UpdateWorkflow(ctx, a, Workflow{ID: w.ID, Name: "x", Steps: []Step{{Kind: "bogus"}}}); !isValidation(err, "steps[0].kind") {
			t.Errorf("invalid update: %v", err)
		}
		if u := must[[]userid.ID](t)(s.UsersWithActiveTrigger(ctx, TriggerNewEmail)); len(u) != 0 {
			t.Errorf("users with new_email after deactivation: %v", u)
		}

		// Delete keeps instances as history; queued ones are cancelled.
		inst := must[Instance](t)(createInstance(s, a, wm.ID, ""))
		if err := s.DeleteWorkflow(ctx, a, wm.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetWorkflow(ctx, a, wm.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted workflow: %v", err)
		}
		if err := s.DeleteWorkflow(ctx, a, wm.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("second delete: %v", err)
		}
		kept := must[Instance](t)(s.GetInstance(ctx, a, inst.ID))
		if kept.Status != StatusCancelled || kept.FinishedAt.IsZero() || stepStatuses(kept)[0] != StepCancelled {
			t.Errorf("instance of the deleted workflow: %+v", kept)
		}
		if _, _, err := s.CreateInstance(ctx, a, wm.ID, TriggerInput{}, ""); !errors.Is(err, ErrNotFound) {
			t.Errorf("instance of a deleted workflow: %v", err)
		}
	})
}

func createInstance(s *Store, user userid.ID, workflowID, key string) (Instance, error) {
	inst, _, err := s.CreateInstance(context.Background(), user, workflowID, TriggerInput{Markdown: "# hi", Email: &Email{Subject: "hi", From: "a@b.c"}}, key)
	return inst, err
}

func TestStoreInstances(t *testing.T) {
	forEachBackend(t, func(t *testing.T, _ string, db *sqldb.DB) {
		ctx := context.Background()
		s := NewStore(db)
		a, b := newUser(t, db), newUser(t, db)
		w := must[Workflow](t)(s.CreateWorkflow(ctx, a, simpleWorkflow("A's")))
		wb := must[Workflow](t)(s.CreateWorkflow(ctx, b, simpleWorkflow("B's")))

		kicks := 0
		var mu sync.Mutex
		s.OnInstanceCreated(func() { mu.Lock(); kicks++; mu.Unlock() })

		inst := must[Instance](t)(createInstance(s, a, w.ID, ""))
		if inst.Status != StatusQueued || inst.UserID != a || inst.WorkflowName != "A's" || len(inst.Steps) != 2 ||
			inst.Steps[1].StepID != w.Steps[1].ID || inst.Steps[1].Position != 1 || inst.Steps[1].Status != StepPending {
			t.Fatalf("created %+v", inst)
		}
		got := must[Instance](t)(s.GetInstance(ctx, a, inst.ID))
		if !jsonEqual(t, got, inst) {
			t.Errorf("get:\n%s\nwant\n%s", mustJSON(t, got), mustJSON(t, inst))
		}
		if _, _, err := s.CreateInstance(ctx, b, w.ID, TriggerInput{}, ""); !errors.Is(err, ErrNotFound) {
			t.Errorf("B runs A's workflow: %v", err)
		}
		for _, id := range []string{inst.ID, "nope"} {
			if _, err := s.GetInstance(ctx, b, id); !errors.Is(err, ErrNotFound) {
				t.Errorf("B gets A's instance %q: %v", id, err)
			}
			if _, err := s.RequestCancel(ctx, b, id); !errors.Is(err, ErrNotFound) {
				t.Errorf("B cancels A's instance %q: %v", id, err)
			}
		}
		instB := must[Instance](t)(createInstance(s, b, wb.ID, ""))
		if l := must[[]Instance](t)(s.ListInstances(ctx, b, w.ID, 0)); len(l) != 0 {
			t.Errorf("B lists A's instances: %d", len(l))
		}
		if l := must[[]Instance](t)(s.ListInstances(ctx, b, "", 0)); len(l) != 1 || l[0].ID != instB.ID {
			t.Errorf("B's instances: %+v", l)
		}
		inst2 := must[Instance](t)(createInstance(s, a, w.ID, ""))
		if l := must[[]Instance](t)(s.ListInstances(ctx, a, w.ID, 10)); len(l) != 2 || l[0].ID != inst2.ID || l[1].ID != inst.ID {
			t.Errorf("A's instances, newest first: %v", l)
		}
		if l := must[[]Instance](t)(s.ListInstances(ctx, a, "", 1)); len(l) != 1 || l[0].ID != inst2.ID {
			t.Errorf("limit 1: %v", l)
		}
		mu.Lock()
		if kicks != 3 {
			t.Errorf("OnInstanceCreated called %d times, want 3", kicks)
		}
		mu.Unlock()

		// The same key from 20 goroutines yields one instance; keys are per user.
		var (
			wg      sync.WaitGroup
			ids     sync.Map
			created int
			cmu     sync.Mutex
		)
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, c, err := s.CreateInstance(ctx, a, w.ID, TriggerInput{Markdown: "x"}, "a:INBOX:1:42")
				if err != nil {
					t.Error(err)
					return
				}
				ids.Store(got.ID, true)
				if c {
					cmu.Lock()
					created++
					cmu.Unlock()
				}
				if got.IdempotencyKey != "a:INBOX:1:42" || len(got.Steps) != 2 {
					t.Errorf("instance by key: %+v", got)
				}
			}()
		}
		wg.Wait()
		n := 0
		ids.Range(func(any, any) bool { n++; return true })
		if n != 1 || created != 1 {
			t.Errorf("20 creates with one key: %d instances, %d created", n, created)
		}
		if c := countRows(t, db, "SELECT COUNT(*) FROM workflow_instances WHERE idempotency_key = 'a:INBOX:1:42'"); c != 1 {
			t.Errorf("%d rows with the key", c)
		}
		if _, c, err := s.CreateInstance(ctx, b, wb.ID, TriggerInput{}, "a:INBOX:1:42"); err != nil || !c {
			t.Errorf("B with A's key: created=%v, %v", c, err)
		}

		// RequestCancel: queued -> cancelled at once.
		c := must[Instance](t)(s.RequestCancel(ctx, a, inst.ID))
		if c.Status != StatusCancelled || c.FinishedAt.IsZero() || stepStatuses(c)[0] != StepCancelled || stepStatuses(c)[1] != StepCancelled {
			t.Errorf("cancelled queued: %+v", c)
		}
		// Finished -> unchanged.
		if again := must[Instance](t)(s.RequestCancel(ctx, a, inst.ID)); !jsonEqual(t, again, c) {
			t.Errorf("cancel of a finished instance changed it")
		}
		// Running -> cancel_requested; the owner sees it on renew.
		claimed, _ := must2(t)(s.Claim(ctx, "r1", time.Minute))
		if claimed == nil {
			t.Fatal("nothing claimed")
		}
		owner := claimed.UserID
		r := must[Instance](t)(s.RequestCancel(ctx, owner, claimed.ID))
		if r.Status != StatusRunning || !r.CancelRequested {
			t.Errorf("cancel of a running instance: %+v", r)
		}
		if cr, err := s.Renew(ctx, owner, claimed.ID, "r1", time.Minute); err != nil || !cr {
			t.Errorf("renew: %v %v", cr, err)
		}
	})
}

func TestStoreClaim(t *testing.T) {
	forEachBackend(t, func(t *testing.T, _ string, db *sqldb.DB) {
		ctx := context.Background()
		s := NewStore(db)
		a := newUser(t, db)
		w := must[Workflow](t)(s.CreateWorkflow(ctx, a, simpleWorkflow("A's")))
		if inst, _ := must2(t)(s.Claim(ctx, "r1", time.Minute)); inst != nil {
			t.Fatalf("claimed from an empty queue: %+v", inst)
		}
		first := must[Instance](t)(createInstance(s, a, w.ID, ""))
		second := must[Instance](t)(createInstance(s, a, w.ID, ""))
		if d := must[int](t)(s.QueueDepth(ctx)); d != 2 {
			t.Errorf("queue depth %d", d)
		}

		inst, steps := must2(t)(s.Claim(ctx, "r1", 300*time.Millisecond))
		if inst == nil || inst.ID != first.ID || inst.UserID != a || inst.Status != StatusRunning || inst.Attempts != 1 ||
			inst.StartedAt.IsZero() || len(inst.Steps) != 2 || len(steps) != 2 || steps[1].ID != w.Steps[1].ID || inst.WorkflowTrigger == nil {
			t.Fatalf("claimed %+v %+v", inst, steps)
		}
		if _, err := s.Renew(ctx, a, inst.ID, "r2", time.Minute); !errors.Is(err, ErrLostClaim) {
			t.Errorf("renew by another owner: %v", err)
		}
		if err := s.StartStep(ctx, a, inst.ID, "r1", 0, "in"); err != nil {
			t.Fatal(err)
		}
		if err := s.FinishStep(ctx, a, inst.ID, "r1", 0, StepCompleted, "out", "", usage(3, 4)); err != nil {
			t.Fatal(err)
		}
		if err := s.FinishStep(ctx, a, inst.ID, "r1", 0, StepCompleted, "again", "", llm.Usage{}); err == nil {
			t.Errorf("finished a completed step twice")
		}
		if err := s.SetLogID(ctx, a, inst.ID, "r1", "log-1"); err != nil {
			t.Fatal(err)
		}
		// The second one is claimed next.
		inst2, _ := must2(t)(s.Claim(ctx, "r2", time.Minute))
		if inst2 == nil || inst2.ID != second.ID {
			t.Fatalf("second claim: %+v", inst2)
		}
		if inst3, _ := must2(t)(s.Claim(ctx, "r2", time.Minute)); inst3 != nil {
			t.Fatalf("claimed a running instance with a live lease: %+v", inst3)
		}

		// r1 "crashes": after its lease, r2 takes the run over with its state.
		time.Sleep(400 * time.Millisecond)
		again, _ := must2(t)(s.Claim(ctx, "r2", time.Minute))
		if again == nil || again.ID != first.ID || again.Attempts != 2 || !again.StartedAt.Equal(inst.StartedAt) ||
			again.LogID != "log-1" || again.Steps[0].Status != StepCompleted || again.Steps[0].Output != "out" ||
			again.Steps[0].Usage != usage(3, 4) || again.Steps[0].Input != "in" {
			t.Fatalf("reclaimed %+v", again)
		}
		// The stale runner can write nothing any more.
		for name, err := range map[string]error{
			"renew":  second2(s.Renew(ctx, a, inst.ID, "r1", time.Minute)),
			"start":  s.StartStep(ctx, a, inst.ID, "r1", 1, "x"),
			"finish": s.FinishStep(ctx, a, inst.ID, "r1", 1, StepCompleted, "x", "", llm.Usage{}),
			"end":    s.FinishInstance(ctx, a, inst.ID, "r1", StatusCompleted, ""),
			"log":    s.SetLogID(ctx, a, inst.ID, "r1", "x"),
		} {
			if !errors.Is(err, ErrLostClaim) {
				t.Errorf("stale %s: %v", name, err)
			}
		}
		// Another user cannot write with the right owner either.
		b := newUser(t, db)
		if err := s.FinishInstance(ctx, b, inst.ID, "r2", StatusCompleted, ""); !errors.Is(err, ErrLostClaim) {
			t.Errorf("other user's finish: %v", err)
		}
		if err := s.StartStep(ctx, a, inst.ID, "r2", 1, "x"); err != nil {
			t.Fatal(err)
		}
		if err := s.FinishInstance(ctx, a, inst.ID, "r2", StatusFailed, "boom"); err != nil {
			t.Fatal(err)
		}
		done := must[Instance](t)(s.GetInstance(ctx, a, inst.ID))
		if done.Status != StatusFailed || done.Error != "boom" || done.FinishedAt.IsZero() ||
			stepStatuses(done)[0] != StepCompleted || stepStatuses(done)[1] != StepSkipped {
			t.Errorf("finished %+v", done)
		}
		if err := s.FinishInstance(ctx, a, inst.ID, "r2", StatusCompleted, ""); !errors.Is(err, ErrLostClaim) {
			t.Errorf("finish twice: %v", err)
		}
		// Release: the lease ends now and another runner may claim at once.
		if err := s.ReleaseClaim(ctx, a, second.ID, "r2"); err != nil {
			t.Fatal(err)
		}
		if rel, _ := must2(t)(s.Claim(ctx, "r3", time.Minute)); rel == nil || rel.ID != second.ID || rel.Attempts != 2 {
			t.Errorf("claim after release: %+v", rel)
		}
	})
}

func must2(t testing.TB) func(*Instance, []Step, error) (*Instance, []Step) {
	return func(i *Instance, s []Step, err error) (*Instance, []Step) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return i, s
	}
}

func second2[T any](_ T, err error) error { return err }

func isValidation(err error, field string) bool {
	var ve *ValidationError
	return errors.As(err, &ve) && ve.Field == field
}

func names(ws []Workflow) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name)
	}
	return out
}

func mustJSON(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func jsonEqual(t testing.TB, a, b any) bool { return mustJSON(t, a) == mustJSON(t, b) }

func countRows(t testing.TB, db *sqldb.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), db.Rebind(query), args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
