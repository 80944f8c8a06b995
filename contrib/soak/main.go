// Command soak runs a real `inboxd serve` for a long time under load and
// faults, and checks that nothing was lost, duplicated or leaked.
//
// It starts a Dovecot tuned for load (scripts/bench-dovecot.sh, N users
// u0..u{N-1}), the daemon over embedded stores in a temporary directory
// (auth mode apikey, IMAP IDLE on, a short poll interval), and creates N
// tenants through the admin API, each with its IMAP account and one active
// new_email workflow whose single step calls a plugin tool, so that every
// mail is one workflow run and one plugin call. After a warm-up it delivers
// mail at a fixed rate to random tenants (APPEND over IMAP, one unique
// Message-ID and sequence number per mail), SIGKILLs the daemon's plugin
// processes every minute and cuts IMAP connections (doveadm kick) every
// 30 seconds. At the end it stops delivering, waits for the runs to drain,
// and checks: every mail produced exactly one run for its tenant, the runs
// that failed failed because of an injected fault, goroutines and resident
// memory did not grow beyond a tolerance, the daemon logged no error line
// other than the injected faults, and it stops cleanly on SIGTERM leaving
// no plugin process behind.
//
// `make soak` builds the binary and runs this program; see README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	inboxd          string
	tenants         int
	duration        time.Duration
	warmup          time.Duration
	rate            float64
	pluginKillEvery time.Duration
	imapCutEvery    time.Duration
	pollInterval    time.Duration
	drain           time.Duration
	sampleEvery     time.Duration
	setupWorkers    int
	deliverWorkers  int
	tool            string
	toolArgs        string
	goroutineTol    float64
	rssTol          float64
	script          string
	tmp             string
	keep            bool
	jsonOut         bool
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.inboxd, "inboxd", "bin/inboxd", "the inboxd binary to run (built by `make soak`)")
	fs.IntVar(&o.tenants, "tenants", 500, "tenants: inboxd users, each with its own Dovecot account and workflow")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long mail is delivered with faults injected (after the warm-up)")
	fs.DurationVar(&o.warmup, "warmup", time.Minute, "mail without faults before the start sample is taken")
	fs.Float64Var(&o.rate, "rate", 5, "mails per second, over all tenants")
	fs.DurationVar(&o.pluginKillEvery, "plugin-kill-every", time.Minute, "SIGKILL the daemon's plugin processes this often (0: never)")
	fs.DurationVar(&o.imapCutEvery, "imap-cut-every", 30*time.Second, "cut IMAP connections (doveadm kick -f of a tenant) this often (0: never)")
	fs.DurationVar(&o.pollInterval, "poll-interval", 10*time.Second, "the daemon's poll.interval (IDLE is on as well)")
	fs.DurationVar(&o.drain, "drain", 3*time.Minute, "after the last mail, how long to wait for every run to finish")
	fs.DurationVar(&o.sampleEvery, "sample-every", time.Minute, "print a progress line (and sample goroutines and RSS) this often")
	fs.IntVar(&o.setupWorkers, "setup-workers", 16, "API calls in flight while creating the tenants and checking their runs")
	fs.IntVar(&o.deliverWorkers, "deliver-workers", 4, "IMAP APPENDs in flight")
	fs.StringVar(&o.tool, "tool", "imap-get_thread_for_message_id", "the plugin tool every workflow run calls")
	fs.StringVar(&o.toolArgs, "tool-args", `{"messageId":"<<trigger.message_id>>"}`, "the tool step's arguments (JSON object, templated)")
	fs.Float64Var(&o.goroutineTol, "goroutine-tolerance", 0.10, "allowed growth of go_goroutines from start to end (0.10 = +10%)")
	fs.Float64Var(&o.rssTol, "rss-tolerance", 0.25, "allowed growth of process_resident_memory_bytes from start to end (0.25 = +25%)")
	fs.StringVar(&o.script, "dovecot-script", "scripts/bench-dovecot.sh", "the script that starts and stops the load-tuned Dovecot")
	fs.StringVar(&o.tmp, "tmp", "/tmp", "where the run's directory is made (Dovecot's mail processes must reach it: keep it world-searchable)")
	fs.BoolVar(&o.keep, "keep", false, "keep the run's directory (daemon data and log, Dovecot) even when the soak passes")
	fs.BoolVar(&o.jsonOut, "json", false, "print the summary as JSON on stdout")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var args0 map[string]any
	switch {
	case o.tenants < 1:
		return nil, errors.New("-tenants must be at least 1")
	case o.rate <= 0:
		return nil, errors.New("-rate must be above 0")
	case o.duration <= 0:
		return nil, errors.New("-duration must be above 0")
	case o.pollInterval < time.Second:
		return nil, errors.New("-poll-interval must be at least 1s (the daemon refuses less)")
	case o.sampleEvery <= 0:
		return nil, errors.New("-sample-every must be above 0")
	case o.setupWorkers < 1 || o.deliverWorkers < 1:
		return nil, errors.New("-setup-workers and -deliver-workers must be at least 1")
	case json.Unmarshal([]byte(o.toolArgs), &args0) != nil || args0 == nil:
		return nil, errors.New("-tool-args must be a JSON object")
	}
	return o, nil
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, o)
	stop()
	os.Exit(code)
}

// run runs the soak and prints its summary; the exit code is 0 when every
// check passed, 1 when one failed, 2 when the soak itself could not run.
func run(ctx context.Context, o *options) int {
	s := &soak{o: o, log: os.Stderr}
	rep, err := s.run(ctx)
	if rep != nil {
		if o.jsonOut {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			if jerr := enc.Encode(rep); jerr != nil {
				fmt.Fprintf(os.Stderr, "soak: print the summary: %v\n", jerr)
			}
		} else {
			rep.print(os.Stdout)
		}
	}
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		return 2
	case len(rep.Failures) > 0:
		return 1
	}
	return 0
}
