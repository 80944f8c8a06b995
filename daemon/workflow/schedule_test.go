package workflow

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/storage/sqldb"
	"github.com/inboxd/inboxd/daemon/userid"
)

func scheduleWorkflow(spec string) Workflow {
	return Workflow{Name: "morning digest", Active: true, Trigger: &Trigger{Type: TriggerSchedule, Cron: spec},
		Steps: []Step{{Name: "digest", Kind: KindLLM, SystemPrompt: "Summarise my inbox for <<CURRENT_DATE>>."}}}
}

func newTestScheduler(t *testing.T, h *harness) *Scheduler {
	t.Helper()
	s, err := NewScheduler(SchedulerConfig{Store: h.store, Settings: h.settings, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func scheduledInstances(t *testing.T, h *harness, user userid.ID, workflowID string) []Instance {
	t.Helper()
	l := must[[]Instance](t)(h.store.ListInstances(context.Background(), user, workflowID, 100))
	sort.Slice(l, func(i, j int) bool { return l[i].IdempotencyKey < l[j].IdempotencyKey })
	return l
}

// TestSchedulerFireTimes drives the scheduler with a fake clock: a workflow
// at 08:00 in the user's timezone is queued once at that time, also when a
// second replica fires the same time; edits, deactivation and deletion
// apply at the next reload.
func TestSchedulerFireTimes(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "sqlite://"+t.TempDir()+"/inboxd.db")
	h := newHarness(t, db)
	user := newUser(t, db)
	h.settings.set(user, settings.Settings{Timezone: "Europe/Amsterdam"})
	other := newUser(t, db) // no timezone: UTC
	w := h.create(user, scheduleWorkflow("0 8 * * *"))
	wo := h.create(other, scheduleWorkflow("0 0 8 * * *"))

	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	s1, s2 := newTestScheduler(t, h), newTestScheduler(t, h)
	t0 := at("2025-01-06T06:30:00Z") // 07:30 in Amsterdam
	s1.reload(ctx, t0)
	s2.reload(ctx, t0)
	if len(s1.entries) != 2 {
		t.Fatalf("entries %v", s1.entries)
	}
	if e := s1.entries[user.String()+"/"+w.ID]; e == nil || !e.next.Equal(at("2025-01-06T07:00:00Z")) {
		t.Fatalf("next fire of the Amsterdam workflow: %+v", e)
	}
	if e := s1.entries[other.String()+"/"+wo.ID]; e == nil || !e.next.Equal(at("2025-01-06T08:00:00Z")) {
		t.Fatalf("next fire of the UTC workflow: %+v", e)
	}

	s1.fire(ctx, at("2025-01-06T06:59:59.9Z"))
	if l := scheduledInstances(t, h, user, w.ID); len(l) != 0 {
		t.Fatalf("queued early: %+v", l)
	}
	s1.fire(ctx, at("2025-01-06T07:00:00.01Z"))
	s2.fire(ctx, at("2025-01-06T07:00:00.3Z")) // another replica, a bit later
	s1.fire(ctx, at("2025-01-06T07:00:01Z"))
	l := scheduledInstances(t, h, user, w.ID)
	if len(l) != 1 {
		t.Fatalf("%d instances for one fire time", len(l))
	}
	fire := at("2025-01-06T07:00:00Z")
	if l[0].IdempotencyKey != ScheduleKey(user, w.ID, fire) || l[0].IdempotencyKey != user.String()+":"+w.ID+":schedule:"+strconv.FormatInt(fire.Unix(), 10) {
		t.Errorf("key %q", l[0].IdempotencyKey)
	}
	if want := "Scheduled run at 2025-01-06 08:00:00 (Monday) Europe/Amsterdam"; l[0].Trigger.Markdown != want || l[0].Trigger.Email != nil {
		t.Errorf("trigger input %+v, want %q", l[0].Trigger, want)
	}
	if e := s1.entries[user.String()+"/"+w.ID]; !e.next.Equal(at("2025-01-07T07:00:00Z")) {
		t.Errorf("next after firing: %v", e.next)
	}
	if l := scheduledInstances(t, h, other, wo.ID); len(l) != 0 {
		t.Errorf("the UTC workflow fired at 07:00 UTC")
	}

	// A stalled scheduler queues only the latest missed fire time.
	s1.fire(ctx, at("2025-01-09T07:30:00Z"))
	l = scheduledInstances(t, h, user, w.ID)
	if len(l) != 2 || l[1].IdempotencyKey != ScheduleKey(user, w.ID, at("2025-01-09T07:00:00Z")) {
		t.Errorf("after a stall: %v", keys(l))
	}
	if l := scheduledInstances(t, h, other, wo.ID); len(l) != 1 {
		t.Errorf("UTC workflow after the stall: %v", keys(l))
	}

	// An edit applies at the next reload; an unchanged entry keeps its next time.
	w.Trigger.Cron = "30 8 * * *"
	must[Workflow](t)(h.store.UpdateWorkflow(ctx, user, w))
	before := s1.entries[other.String()+"/"+wo.ID].next
	s1.reload(ctx, at("2025-01-10T06:00:00Z"))
	if e := s1.entries[user.String()+"/"+w.ID]; e == nil || !e.next.Equal(at("2025-01-10T07:30:00Z")) {
		t.Errorf("after the edit: %+v", e)
	}
	if after := s1.entries[other.String()+"/"+wo.ID].next; !after.Equal(before) {
		t.Errorf("unchanged entry moved from %v to %v", before, after)
	}
	// A timezone change too.
	h.settings.set(user, settings.Settings{Timezone: "America/New_York"})
	s1.reload(ctx, at("2025-01-10T06:00:00Z"))
	if e := s1.entries[user.String()+"/"+w.ID]; e == nil || !e.next.Equal(at("2025-01-10T13:30:00Z")) {
		t.Errorf("after the timezone change: %+v", e)
	}

	// Deactivated or deleted: no more runs.
	w.Active = false
	must[Workflow](t)(h.store.UpdateWorkflow(ctx, user, w))
	if err := h.store.DeleteWorkflow(ctx, other, wo.ID); err != nil {
		t.Fatal(err)
	}
	s1.reload(ctx, at("2025-01-10T06:00:00Z"))
	if len(s1.entries) != 0 {
		t.Errorf("entries left: %v", s1.entries)
	}
	// A workflow deleted between reload and fire is dropped quietly.
	s2.fire(ctx, at("2025-01-20T00:00:00Z"))
	if _, ok := s2.entries[other.String()+"/"+wo.ID]; ok {
		t.Errorf("entry of a deleted workflow kept")
	}
}

func keys(l []Instance) []string {
	var out []string
	for _, i := range l {
		out = append(out, i.IdempotencyKey)
	}
	return out
}

func TestAlignedEvery(t *testing.T) {
	s, err := parseCron("@every 15m", time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	a := s.Next(time.Date(2025, 1, 1, 10, 7, 12, 0, time.UTC))
	b := s.Next(time.Date(2025, 1, 1, 10, 14, 59, 0, time.UTC))
	if want := time.Date(2025, 1, 1, 10, 15, 0, 0, time.UTC); !a.Equal(want) || !b.Equal(want) {
		t.Errorf("@every 15m: %v, %v; want %v on every replica", a, b, want)
	}
}

// TestSchedulerTwoReplicas runs two schedulers (separate pools) on a
// per-second schedule in real time: every second is queued exactly once.
func TestSchedulerTwoReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string, db *sqldb.DB) {
		h := newHarness(t, db)
		user := newUser(t, db)
		w := h.create(user, scheduleWorkflow("* * * * * *"))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{}, 2)
		for range 2 {
			p := *h
			p.db = openDB(t, url)
			p.store = NewStore(p.db)
			s := newTestScheduler(t, &p)
			go func() {
				defer func() { done <- struct{}{} }()
				if err := s.Run(ctx); err != nil {
					t.Error(err)
				}
			}()
		}
		time.Sleep(2500 * time.Millisecond)
		cancel()
		<-done
		<-done
		l := scheduledInstances(t, h, user, w.ID)
		if len(l) < 2 || len(l) > 4 {
			t.Fatalf("%d runs in 2.5 s of a per-second schedule: %v", len(l), keys(l))
		}
		var secs []int64
		for _, i := range l {
			_, sec, _ := strings.Cut(i.IdempotencyKey, ":schedule:")
			n, err := strconv.ParseInt(sec, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			secs = append(secs, n)
		}
		for i := 1; i < len(secs); i++ {
			if secs[i] != secs[i-1]+1 {
				t.Errorf("fire times not consecutive seconds: %v", secs)
			}
		}
	})
}
