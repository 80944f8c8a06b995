package main

// The soak's order: Dovecot, daemon, tenants, warm-up, the soak proper
// with faults, drain, checks, SIGTERM.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

type soak struct {
	o   *options
	log io.Writer
}

func (s *soak) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "soak %s  %s\n", time.Now().Format(time.TimeOnly), fmt.Sprintf(format, args...))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// run runs the whole soak. The report is nil when the soak could not get
// as far as delivering mail; an error means it did not finish.
func (s *soak) run(ctx context.Context) (rep *report, err error) {
	o := s.o
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root: Dovecot's mail processes run as the dovecot user " +
			"(scripts/bench-dovecot.sh refuses otherwise); run it as root, e.g. sudo make soak")
	}
	bin, err := filepath.Abs(o.inboxd)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		return nil, fmt.Errorf("the inboxd binary (-inboxd; make soak builds it): %w", err)
	}
	script, err := filepath.Abs(o.script)
	if err == nil {
		_, err = os.Stat(script)
	}
	if err != nil {
		return nil, fmt.Errorf("the Dovecot script (-dovecot-script; run from the repository root): %w", err)
	}
	dir, err := os.MkdirTemp(o.tmp, "inboxd-soak-")
	if err != nil {
		return nil, fmt.Errorf("run directory: %w", err)
	}
	// Dovecot's mail processes (user dovecot) must pass through it.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("run directory: %w", err)
	}
	rep = newReport(o, dir)
	defer func() {
		if o.keep || err != nil || len(rep.Failures) > 0 {
			s.logf("kept the run directory %s (daemon log: data/daemon.log)", dir)
			return
		}
		if rmErr := os.RemoveAll(dir); rmErr != nil {
			s.logf("remove %s: %v", dir, rmErr)
		}
	}()

	s.logf("load average %s; starting Dovecot with %d users", rep.LoadStart, o.tenants)
	dove, err := startDovecot(ctx, script, o.tenants, filepath.Join(dir, "dovecot"))
	if err != nil {
		return rep, err
	}
	defer func() {
		if err := dove.stop(); err != nil {
			s.logf("%v", err)
		}
	}()

	d, err := newDaemon(bin, filepath.Join(dir, "data"), o.pollInterval)
	if err != nil {
		return rep, err
	}
	adminKey, err := d.addAdmin(ctx)
	if err != nil {
		return rep, err
	}
	if err := d.start(ctx); err != nil {
		return rep, err
	}
	defer func() {
		if d.running() {
			_, _ = d.stop(time.Minute)
		}
	}()
	s.logf("inboxd serve (pid %d) on %s, IMAP on 127.0.0.1:%d", d.pid(), d.base, dove.port)

	api := newAPI(d.base, 2*o.setupWorkers)
	began := time.Now()
	tenants, err := setupTenants(ctx, api, adminKey, o.tenants, o.setupWorkers, dove.port, o.tool, json.RawMessage(o.toolArgs))
	if err != nil {
		return rep, err
	}
	rep.SetupSeconds = time.Since(began).Seconds()
	s.logf("%d tenants set up in %.1f s (user, API key, IMAP settings, workflow)", len(tenants), rep.SetupSeconds)
	if err := s.waitBaselined(ctx, api, len(tenants)); err != nil {
		return rep, err
	}
	rep.BaselinedSeconds = time.Since(began).Seconds()

	m := newMailer(dove.port, o.tenants)
	stopMail := m.start(ctx, o.rate, o.deliverWorkers)
	defer stopMail()
	inj := &injector{daemonPID: d.pid(), dove: dove, mail: m}
	s.logf("warm-up: %s of mail at %g/s, no faults", o.warmup, o.rate)
	if err := sleep(ctx, o.warmup); err != nil {
		return rep, err
	}
	soakStart := time.Now()
	first, err := s.sample(ctx, api, m, inj, soakStart)
	if err != nil {
		return rep, err
	}
	rep.addSample(first)
	s.logf("soak: %s with a plugin kill every %s and an IMAP cut every %s", o.duration, o.pluginKillEvery, o.imapCutEvery)
	s.logf("%s", first.line())
	stopFaults := inj.start(ctx, o.pluginKillEvery, o.imapCutEvery)
	defer inj.finish() // after stopFaults: no kill starts a watch after it
	defer stopFaults()
	tick := time.NewTicker(o.sampleEvery)
	defer tick.Stop()
	end := time.NewTimer(o.duration)
	defer end.Stop()
soaking:
	for {
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-end.C:
			break soaking
		case <-tick.C:
			smp, err := s.sample(ctx, api, m, inj, soakStart)
			if err != nil {
				s.logf("sample: %v", err) // a missed sample is no reason to stop
				continue
			}
			rep.addSample(smp)
			s.logf("%s", smp.line())
		}
	}
	stopFaults()
	stopMail()
	mailsIn, mailsFailed, mailsUncertain := m.counts()
	s.logf("delivery stopped: %d mails in (%d failed, %d uncertain); draining, up to %s", mailsIn, mailsFailed, mailsUncertain, o.drain)

	drainStart := time.Now()
	deadline := drainStart.Add(o.drain)
	if err := s.drain(ctx, api, mailsIn, deadline); err != nil {
		return rep, err
	}
	// The last sample before the listing, whose answers (every run of
	// every tenant) would weigh on the daemon's memory.
	last, err := s.sample(ctx, api, m, inj, soakStart)
	if err != nil {
		return rep, err
	}
	last.Elapsed += " (drained)"
	rep.addSample(last)
	s.logf("%s", last.line())
	runs, err := s.listFinished(ctx, api, tenants, deadline)
	if err != nil {
		return rep, err
	}
	rep.DrainSeconds = time.Since(drainStart).Seconds()

	inj.finish()
	faults := inj.list()
	rep.setMail(m, mailsIn, mailsFailed, mailsUncertain)
	rep.setFaults(faults)
	rep.Runs = checkRuns(m, tenants, runs, faults)

	s.logf("SIGTERM to the daemon")
	rep.PluginsAtStop = len(pluginChildren(d.pid()))
	rep.DaemonExit, err = d.stop(time.Minute)
	if err != nil {
		rep.fail("%v", err)
	}
	time.Sleep(time.Second) // the plugins' exit
	for _, p := range strayPlugins(d.dataDir) {
		name, _ := p.plugin()
		rep.StrayPlugins = append(rep.StrayPlugins, fmt.Sprintf("%s pid %d (parent %d)", name, p.pid, p.ppid))
	}
	userOf := make(map[string]string, len(tenants))
	for _, t := range tenants {
		userOf[t.id] = t.imapUser
	}
	rep.Log, err = checkLog(d.logPath, faults, userOf)
	if err != nil {
		return rep, err
	}
	rep.LoadEnd = loadAvg()
	rep.judge(o)
	return rep, nil
}

// waitBaselined waits until the poller has baselined every tenant's inbox
// (inboxd_tenants{state="active"}): mail delivered before that is not new.
func (s *soak) waitBaselined(ctx context.Context, api *apiClient, n int) error {
	wait := 5*time.Minute + time.Duration(n)*100*time.Millisecond
	deadline := time.Now().Add(wait)
	lastLog := time.Now()
	for {
		ms, err := api.metrics(ctx)
		if err != nil {
			return err
		}
		active := int(ms[`inboxd_tenants{state="active"}`])
		if active >= n {
			s.logf("all %d inboxes baselined", n)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d inboxes baselined after %s (inboxd_tenants: %v)", active, n, wait, ms.prefixed("inboxd_tenants{"))
		}
		if time.Since(lastLog) > 10*time.Second {
			s.logf("%d of %d inboxes baselined", active, n)
			lastLog = time.Now()
		}
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}
}

// drain waits until the daemon has ended as many runs as mails went in
// (and its workflow queue is empty), or the deadline; then two poll
// intervals more, for a late duplicate to show.
func (s *soak) drain(ctx context.Context, api *apiClient, mailsIn int, deadline time.Time) error {
	for {
		ms, err := api.metrics(ctx)
		if err == nil && ms.sum("inboxd_workflow_runs_total") >= float64(mailsIn) && ms[`inboxd_worker_pool_queue_depth{pool="workflow"}`] == 0 {
			s.logf("drain: %d runs ended", int(ms.sum("inboxd_workflow_runs_total")))
			break
		}
		if time.Now().After(deadline) {
			s.logf("drain: timed out (%d runs ended of %d mails in)", int(ms.sum("inboxd_workflow_runs_total")), mailsIn)
			break
		}
		if err := sleep(ctx, 2*time.Second); err != nil {
			return err
		}
	}
	return sleep(ctx, 2*s.o.pollInterval+5*time.Second)
}

// listFinished lists every run of every tenant, again while some are
// unfinished and the deadline allows.
func (s *soak) listFinished(ctx context.Context, api *apiClient, tenants []tenant, deadline time.Time) ([][]instance, error) {
	for {
		runs, err := listRuns(ctx, api, tenants, s.o.setupWorkers)
		if err != nil {
			return nil, err
		}
		open := 0
		for _, list := range runs {
			for _, in := range list {
				if !finished(in.Status) {
					open++
				}
			}
		}
		if open == 0 || time.Now().After(deadline) {
			return runs, nil
		}
		s.logf("drain: %d runs not finished yet", open)
		if err := sleep(ctx, 5*time.Second); err != nil {
			return nil, err
		}
	}
}

// sample reads the daemon's goroutines, RSS and runs ended from /metrics.
func (s *soak) sample(ctx context.Context, api *apiClient, m *mailer, inj *injector, since time.Time) (sample, error) {
	ms, err := api.metrics(ctx)
	if err != nil {
		return sample{}, err
	}
	in, _, _ := m.counts()
	return sample{
		Elapsed:     time.Since(since).Round(time.Second).String(),
		MailsIn:     in,
		RunsDone:    int(ms.sum("inboxd_workflow_runs_total")),
		Goroutines:  ms["go_goroutines"],
		RSSBytes:    ms["process_resident_memory_bytes"],
		PluginKills: inj.count(faultPluginKill),
		IMAPCuts:    inj.count(faultIMAPCut),
		Load:        loadAvg(),
	}, nil
}
