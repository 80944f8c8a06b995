package workflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/inboxd/inboxd/daemon/userid"
)

// DefaultScheduleRefresh is how often the Scheduler re-reads the schedule
// workflows, so that edits apply without a restart.
const DefaultScheduleRefresh = 30 * time.Second

// SchedulerConfig configures a Scheduler; Store and Settings are required.
type SchedulerConfig struct {
	Store    *Store
	Settings SettingsSource
	// Refresh is how often the active schedule workflows and the users'
	// timezones are re-read (default 30s).
	Refresh time.Duration
	Logger  *slog.Logger     // default slog.Default()
	Now     func() time.Time // default time.Now
}

// Scheduler queues a run of every active workflow with a schedule trigger at
// each fire time of its cron spec, in its user's timezone (settings
// timezone, default UTC). The instance's idempotency key is
// "{user}:{workflow}:schedule:{fire time, unix seconds}", so several
// replicas running a Scheduler queue each fire time once. Fire times missed
// while no scheduler ran are not caught up; when several fire times of one
// workflow passed at once (a stalled process) only the latest is queued.
type Scheduler struct {
	cfg     SchedulerConfig
	log     *slog.Logger
	entries map[string]*scheduleEntry // "{user}/{workflow}"; only the Run goroutine touches it
}

type scheduleEntry struct {
	user       userid.ID
	workflowID string
	spec       string
	loc        *time.Location
	sched      cron.Schedule
	next       time.Time
}

// NewScheduler checks cfg and fills in defaults.
func NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("workflow: scheduler needs a Store")
	case cfg.Settings == nil:
		return nil, errors.New("workflow: scheduler needs a settings source")
	case cfg.Refresh < 0:
		return nil, errors.New("workflow: negative scheduler refresh")
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = DefaultScheduleRefresh
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Scheduler{cfg: cfg, log: cfg.Logger, entries: map[string]*scheduleEntry{}}, nil
}

// Run queues scheduled runs until ctx ends; it returns nil then.
func (s *Scheduler) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var reloadAt time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		now := s.cfg.Now()
		if !now.Before(reloadAt) {
			s.reload(ctx, now)
			reloadAt = now.Add(s.cfg.Refresh)
		}
		s.fire(ctx, now)
		wait := reloadAt.Sub(now)
		for _, e := range s.entries {
			wait = min(wait, e.next.Sub(now))
		}
		timer.Reset(max(wait, time.Millisecond))
	}
}

// reload reads the active schedule workflows of every user; entries whose
// spec and timezone did not change keep their next fire time. On a read
// error the entries of the users concerned are kept as they were.
func (s *Scheduler) reload(ctx context.Context, now time.Time) {
	users, err := s.cfg.Store.UsersWithActiveTrigger(ctx, TriggerSchedule)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("workflow: scheduler: read users", "error", err)
		}
		return
	}
	keep := map[string]bool{}
	for _, user := range users {
		loc := time.UTC
		if set, err := s.cfg.Settings.Get(ctx, user); err != nil {
			s.log.Warn("workflow: scheduler: read settings; using UTC", "user_id", user.String(), "error", err)
		} else if l, err := loadZone(set.Timezone); err == nil {
			loc = l
		}
		wfs, err := s.cfg.Store.ListActiveByTrigger(ctx, user, TriggerSchedule)
		if err != nil {
			s.log.Error("workflow: scheduler: read workflows", "user_id", user.String(), "error", err)
			for k, e := range s.entries {
				if e.user == user {
					keep[k] = true
				}
			}
			continue
		}
		for _, w := range wfs {
			if w.Trigger == nil {
				continue
			}
			key := user.String() + "/" + w.ID
			if e, ok := s.entries[key]; ok && e.spec == w.Trigger.Cron && e.loc.String() == loc.String() {
				keep[key] = true
				continue
			}
			sched, err := parseCron(w.Trigger.Cron, loc)
			if err != nil {
				s.log.Warn("workflow: scheduler: bad cron spec", "user_id", user.String(), "workflow_id", w.ID, "error", err)
				continue
			}
			next := sched.Next(now)
			if next.IsZero() {
				continue
			}
			s.entries[key] = &scheduleEntry{user: user, workflowID: w.ID, spec: w.Trigger.Cron, loc: loc, sched: sched, next: next}
			keep[key] = true
		}
	}
	for k := range s.entries {
		if !keep[k] {
			delete(s.entries, k)
		}
	}
}

// fire queues the due runs: for each entry whose next fire time is not
// after now, one instance for the latest due fire time.
func (s *Scheduler) fire(ctx context.Context, now time.Time) {
	for key, e := range s.entries {
		if e.next.After(now) {
			continue
		}
		at := e.next
		for {
			n := e.sched.Next(at)
			if n.IsZero() || n.After(now) {
				e.next = n
				break
			}
			at = n
		}
		if e.next.IsZero() {
			delete(s.entries, key)
		}
		s.enqueue(ctx, e, at)
		if ctx.Err() != nil {
			return
		}
	}
}

// ScheduleKey is the idempotency key of a scheduled run.
func ScheduleKey(user userid.ID, workflowID string, at time.Time) string {
	return fmt.Sprintf("%s:%s:schedule:%d", user, workflowID, at.Unix())
}

func (s *Scheduler) enqueue(ctx context.Context, e *scheduleEntry, at time.Time) {
	in := TriggerInput{Markdown: "Scheduled run at " + at.In(e.loc).Format("2006-01-02 15:04:05 (Monday)") + " " + e.loc.String()}
	inst, created, err := s.cfg.Store.CreateInstance(ctx, e.user, e.workflowID, in, ScheduleKey(e.user, e.workflowID, at))
	switch {
	case errors.Is(err, ErrNotFound): // deleted since the last reload
		delete(s.entries, e.user.String()+"/"+e.workflowID)
	case err != nil:
		if ctx.Err() == nil {
			s.log.Error("workflow: scheduler: queue run", "user_id", e.user.String(), "workflow_id", e.workflowID, "error", err)
		}
	case created:
		s.log.Debug("workflow: scheduled run queued", "user_id", e.user.String(), "workflow_id", e.workflowID, "instance_id", inst.ID)
	}
}
