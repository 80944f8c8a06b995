// Package cli owns the inboxd command line: parsing of commands and flags,
// and (in serve.go) the one place that orders the daemon's start-up and
// shutdown.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// version is set at build time with -ldflags "-X github.com/inboxd/inboxd/daemon/cli.version=...".
var version = "dev"

// Version returns the build's version string.
func Version() string { return version }

// Env is what a command sees of the outside world; tests substitute it.
type Env struct {
	Args   []string // without the program name
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// errUsage marks errors answered with usage text and exit code 2.
var errUsage = errors.New("usage")

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env Env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run the daemon", runServe},
		{"user", "manage users: add, list, disable, api-key", runUser},
		{"workflow", "manage workflows: apply, list", runWorkflow},
		{"inbox", "inbox jobs: init", runInbox},
		{"plugin", "list, describe, serve plugins", runPlugin},
		{"config", "check the configuration: config check", runConfig},
		{"bench", "measure: bench poll", runBench},
		{"version", "print the version", runVersion},
	}
}

const usageHead = `inboxd — a multi-tenant email-agent daemon

Usage: inboxd COMMAND [flags]

Commands:
`

func usage(w io.Writer) {
	fmt.Fprint(w, usageHead)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun 'inboxd COMMAND -h' for the flags of a command.\n")
}

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, env Env) int {
	if len(env.Args) == 0 {
		usage(env.Stderr)
		return 2
	}
	name, args := env.Args[0], env.Args[1:]
	switch name {
	case "-h", "-help", "--help", "help":
		usage(env.Stdout)
		return 0
	case "-v", "--version":
		name = "version"
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(ctx, env, args)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(env.Stderr, "inboxd %s: %v\n", name, strings.TrimPrefix(err.Error(), "usage: "))
			return 2
		default:
			fmt.Fprintf(env.Stderr, "inboxd %s: %v\n", name, err)
			return 1
		}
	}
	fmt.Fprintf(env.Stderr, "inboxd: unknown command %q\n\n", name)
	usage(env.Stderr)
	return 2
}

// usagef returns a usage error: the caller prints it and exits 2.
func usagef(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// newFlags makes a flag set for a command with the common --config flag.
func newFlags(env Env, name, synopsis string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("inboxd "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	cfg := fs.String("config", "", "TOML configuration file (default "+"/etc/inboxd/inboxd.toml when present)")
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: inboxd %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs, cfg
}

// parseFlags parses args and turns flag errors into usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	return nil
}

func runVersion(_ context.Context, env Env, args []string) error {
	if len(args) > 0 {
		return usagef("version takes no arguments")
	}
	fmt.Fprintf(env.Stdout, "inboxd %s\n", version)
	return nil
}

// OSEnv is the real environment of the process.
func OSEnv() Env {
	return Env{Args: os.Args[1:], Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}
