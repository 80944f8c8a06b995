package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/inboxd/inboxd/daemon/embed"
	"github.com/inboxd/inboxd/daemon/jobs"
	"github.com/inboxd/inboxd/daemon/llm"
	"github.com/inboxd/inboxd/daemon/settings"
	"github.com/inboxd/inboxd/daemon/userid"
	"github.com/inboxd/inboxd/daemon/vectors"
)

const inboxUsage = `inbox init --user EMAIL|ID [--wait]`

// progressEvery is how often --wait redraws the progress bar.
const progressEvery = 250 * time.Millisecond

// runInbox runs inbox jobs in this process, against the configured stores.
func runInbox(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 {
		return usagef("missing subcommand\nUsage: inboxd %s", inboxUsage)
	}
	sub, args := args[0], args[1:]
	if sub != "init" {
		return usagef("unknown subcommand %q\nUsage: inboxd %s", sub, inboxUsage)
	}
	fs, cfgPath := newFlags(env, "inbox init", inboxUsage)
	user := fs.String("user", "", "the user whose inbox to initialise: email or id (required)")
	wait := fs.Bool("wait", false, "show a progress bar on stderr until the initialisation ends")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("inbox init takes no arguments, got %q\nUsage: inboxd %s", fs.Args(), inboxUsage)
	}
	if *user == "" {
		return usagef("inbox init needs --user EMAIL|ID")
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	st, err := openStores(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	u, err := st.users.Lookup(ctx, *user)
	if err != nil {
		return fmt.Errorf("--user %s: %w", *user, err)
	}
	catalog, err := embed.LoadCatalog("")
	if err != nil {
		return err
	}
	vec, err := vectors.Open(cfg.VectorsURL, st.sql, vectors.Options{})
	if err != nil {
		return fmt.Errorf("vectors_url: %w", err)
	}
	defer vec.Close()
	logger, _ := newLogger(cfg, env.Stderr)
	m, err := jobs.New(jobs.Config{
		Workers: 1, KV: st.kv, Settings: settings.NewStore(st.kv, st.box), Vectors: vec, Catalog: catalog,
		LLM: llm.NewOpenAI(llm.Options{Logger: logger}), Logger: logger, Owner: "cli-" + replicaName(),
	})
	if err != nil {
		return err
	}
	// On return (or Ctrl-C) a run still going is left "running" for the
	// daemon to resume.
	defer m.Close()

	err = m.Start(ctx, u.ID, jobs.Initialize)
	elsewhere := errors.Is(err, jobs.ErrRunning)
	switch {
	case elsewhere && !*wait:
		fmt.Fprintf(env.Stdout, "inbox initialisation of %s is already running elsewhere\n", u.Email)
		return nil
	case elsewhere:
		fmt.Fprintln(env.Stderr, "already running elsewhere: following its progress")
	case err != nil:
		return err
	}

	var bar *progressBar
	if *wait {
		bar = &progressBar{w: env.Stderr, start: time.Now()}
	}
	if err := followInit(ctx, m, u.ID, bar, elsewhere); err != nil {
		return err
	}
	status, err := m.InboxStatus(ctx, u.ID)
	if err != nil {
		return err
	}
	if status.Status != jobs.StatusCompleted {
		if status.LastError != "" {
			return fmt.Errorf("initialisation %s: %s", status.Status, status.LastError)
		}
		return fmt.Errorf("initialisation %s", status.Status)
	}
	fmt.Fprintf(env.Stdout, "inbox initialisation of %s completed: %d threads\n", u.Email, status.Progress.Total)
	// The initialisation starts tone analysis when the user has an LLM; its
	// failure is worth a warning, not a failed command.
	if err := m.Wait(ctx, u.ID, jobs.ToneOfVoice); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintf(env.Stderr, "tone of voice analysis did not complete: %v\n", err)
	}
	return nil
}

// followInit waits for the initialisation to end (this process's run, or
// another process's, read from the KV), redrawing bar (when not nil).
func followInit(ctx context.Context, m *jobs.Manager, user userid.ID, bar *progressBar, elsewhere bool) error {
	var done chan struct{} // closed when this process's run ended; nil when it runs elsewhere
	if !elsewhere {
		done = make(chan struct{})
		go func() {
			_ = m.Wait(ctx, user, jobs.Initialize) // the outcome is read from the status
			close(done)
		}()
	}
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		finished := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			finished = true
		case <-t.C:
		}
		st, err := m.InboxStatus(ctx, user)
		if err != nil {
			return err
		}
		finished = finished || (elsewhere && st.Status != jobs.StatusRunning)
		bar.draw(st.Progress, finished)
		if finished {
			return nil
		}
	}
}

// progressBar draws "[#####-----] done/total  rate threads/s" on one line.
type progressBar struct {
	w         io.Writer
	start     time.Time
	first     *jobs.Progress // the progress when counting began (resumed runs start above 0)
	firstTime time.Time
	last      string
	ended     bool
}

func (b *progressBar) draw(p jobs.Progress, final bool) {
	if b == nil || b.ended {
		return
	}
	now := time.Now()
	if b.first == nil && p.Total > 0 {
		b.first, b.firstTime = &p, now
	}
	rate := 0.0
	if b.first != nil {
		if secs := now.Sub(b.firstTime).Seconds(); secs > 0 {
			rate = float64(p.Done-b.first.Done) / secs
		}
	}
	const width = 30
	filled := 0
	if p.Total > 0 {
		filled = width * p.Done / p.Total
	}
	line := fmt.Sprintf("[%s%s] %d/%d threads  %.1f threads/s", strings.Repeat("#", filled), strings.Repeat("-", width-filled), p.Done, p.Total, rate)
	if line == b.last && !final {
		return
	}
	b.last = line
	fmt.Fprint(b.w, "\r"+line)
	if final {
		fmt.Fprintf(b.w, "  (%s)\n", now.Sub(b.start).Round(100*time.Millisecond))
		b.ended = true
	}
}
