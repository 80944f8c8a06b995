package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/inboxd/inboxd/daemon/userid"
)

// Run runs the recovery sweep (now and every RecoverEvery) and the
// incremental vectorisation cron until ctx ends, then closes the Manager:
// running jobs are cancelled, left "running" in the KV for the next start,
// and their leases released. It returns nil after everything stopped.
func (m *Manager) Run(ctx context.Context) error {
	defer m.Close()
	if m.cfg.Users == nil {
		m.log.Warn("jobs: no user list configured: no recovery sweep, no incremental vectorisation")
		<-ctx.Done()
		return nil
	}
	m.recover(ctx)
	recoverTick := time.NewTicker(m.cfg.RecoverEvery)
	defer recoverTick.Stop()
	next := m.sched.Next(m.cfg.now())
	cronTimer := time.NewTimer(time.Until(next))
	defer cronTimer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-recoverTick.C:
			m.recover(ctx)
		case <-cronTimer.C:
			m.incrementalSweep(ctx)
			next = m.sched.Next(m.cfg.now())
			cronTimer.Reset(time.Until(next))
		}
	}
}

// parseCron reads a spec as the workflow scheduler does: 5 fields, 6 with
// seconds first, or a descriptor.
func parseCron(spec string) (s cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil { // robfig/cron panics on some malformed specs
			s, err = nil, fmt.Errorf("invalid cron spec %q", spec)
		}
	}()
	p := cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	return p.Parse(spec)
}

// recover starts the jobs left running by processes that died: status
// running, no lease. A lease held by a dead process expires within
// LeaseTTL; a later sweep then picks the job up.
func (m *Manager) recover(ctx context.Context) {
	list, err := m.cfg.Users.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("jobs: recovery: list users", "error", err)
		}
		return
	}
	for _, u := range list {
		if ctx.Err() != nil {
			return
		}
		if u.Disabled {
			continue
		}
		kinds := []Kind{Initialize, ToneOfVoice, LabelDescriptions}
		statusKeys := make([]string, len(kinds))
		for i, kind := range kinds {
			statusKeys[i] = u.ID.Key(keysOf(kind).status)
		}
		statuses, err := m.cfg.KV.MGet(ctx, statusKeys...)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("jobs: recovery: read statuses", "user_id", u.ID, "error", err)
			}
			continue
		}
		for i, kind := range kinds {
			if statuses[statusKeys[i]] == StatusRunning {
				m.recoverOne(ctx, u.ID, kind)
			}
		}
	}
}

// recoverOne resumes user's job of kind, whose status is running, unless
// it runs (its lease is held).
func (m *Manager) recoverOne(ctx context.Context, user userid.ID, kind Kind) {
	m.mu.Lock()
	local := m.jobs[jobKey{user, kind}] != nil
	m.mu.Unlock()
	if held, err := m.Running(ctx, user, kind); local || held || err != nil {
		return
	}
	k := keysOf(kind)
	err := m.start(ctx, user, kind, startOptions{resumed: true}, func(ctx context.Context) error {
		// Under the lease: the job may have ended between our read and our
		// lease (its outcome is written before its lease is released).
		again, err := m.cfg.KV.Get(ctx, user.Key(k.status))
		if err != nil || again != StatusRunning {
			return errNothingToRecover
		}
		return nil
	})
	switch {
	case err == nil:
		m.log.Info("jobs: resumed a job left running by a stopped process", "user_id", user, "job", kind)
	case errors.Is(err, errNothingToRecover), errors.Is(err, ErrRunning), errors.Is(err, ErrClosed):
	case errors.Is(err, ErrNotConfigured):
		// The settings changed since: the job cannot run any more.
		m.log.Info("jobs: recovery: job no longer possible", "user_id", user, "job", kind, "reason", err)
		m.recordFailure(ctx, user, kind, err)
	default:
		if ctx.Err() == nil {
			m.log.Warn("jobs: recovery", "user_id", user, "job", kind, "error", err)
		}
	}
}

var errNothingToRecover = errors.New("jobs: nothing to recover")

func (m *Manager) recordFailure(ctx context.Context, user userid.ID, kind Kind, err error) {
	k := keysOf(kind)
	if k.status == "" {
		return
	}
	set := map[string]string{user.Key(k.status): StatusFailed, user.Key(k.errKey): errorMessage(err)}
	if werr := m.cfg.KV.SetMany(ctx, set); werr != nil {
		m.log.Warn("jobs: record failure", "user_id", user, "job", kind, "error", werr)
	}
}

// incrementalSweep starts incremental vectorisation for every user whose
// initialisation completed.
func (m *Manager) incrementalSweep(ctx context.Context) {
	list, err := m.cfg.Users.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("jobs: incremental: list users", "error", err)
		}
		return
	}
	started := 0
	for _, u := range list {
		if ctx.Err() != nil {
			return
		}
		if u.Disabled {
			continue
		}
		status, err := m.cfg.KV.Get(ctx, u.ID.Key(keyInboxStatus))
		if err != nil || status != StatusCompleted {
			continue
		}
		switch err := m.Start(ctx, u.ID, Incremental); {
		case err == nil:
			started++
		case errors.Is(err, ErrRunning), errors.Is(err, ErrNotConfigured), errors.Is(err, ErrClosed):
		default:
			m.log.Warn("jobs: incremental: start", "user_id", u.ID, "error", err)
		}
	}
	m.log.Info("jobs: incremental vectorisation queued", "users", started)
}
