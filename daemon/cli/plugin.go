package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/inboxd/inboxd/plugins/imap"
	"github.com/inboxd/inboxd/plugins/tone"
	"io"
	"log/slog"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/inboxd/inboxd/daemon/pluginhost"
	"github.com/inboxd/inboxd/sdk"
)

const pluginUsage = `plugin list [--config FILE]
       inboxd plugin describe NAME [--config FILE]
       inboxd plugin serve NAME   (internal: how the daemon runs a built-in plugin)`

// builtinPlugins lists the first-party plugins compiled into the inboxd
// binary, by name; the daemon runs each out of process as
// `inboxd plugin serve NAME`. Add a plugin here (e.g. "imap": imap.Plugin)
// to build it in; daemon/pluginhost itself never imports plugins.
func builtinPlugins() map[string]func() sdk.Plugin {
	return map[string]func() sdk.Plugin{"imap": imap.Plugin, "tone": tone.Plugin}
}

// builtinNames returns the names of builtins, sorted.
func builtinNames(builtins map[string]func() sdk.Plugin) []string {
	names := make([]string, 0, len(builtins))
	for n := range builtins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// runPlugin lists, describes and (internally) serves plugins.
func runPlugin(ctx context.Context, env Env, args []string) error {
	return runPluginWith(ctx, env, args, builtinPlugins())
}

func runPluginWith(ctx context.Context, env Env, args []string, builtins map[string]func() sdk.Plugin) error {
	if len(args) == 0 {
		return usagef("missing subcommand\nUsage: inboxd %s", pluginUsage)
	}
	sub, args := args[0], args[1:]
	if sub == "serve" {
		if len(args) != 1 {
			return usagef("plugin serve takes 1 argument, the built-in plugin's name")
		}
		p, ok := builtins[args[0]]
		if !ok {
			return usagef("plugin serve: no built-in plugin %q (built in: %s)", args[0], strings.Join(builtinNames(builtins), ", "))
		}
		sdk.Serve(p()) // exits unless started by inboxd with the handshake
		return nil
	}
	fs, cfgPath := newFlags(env, "plugin "+sub, pluginUsage)
	switch sub {
	case "list", "describe":
	default:
		return usagef("unknown subcommand %q\nUsage: inboxd %s", sub, pluginUsage)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var only []string
	switch {
	case sub == "list" && fs.NArg() != 0:
		return usagef("plugin list takes no arguments, got %q", fs.Args())
	case sub == "describe" && fs.NArg() != 1:
		return usagef("plugin describe takes 1 argument, the plugin's name")
	case sub == "describe":
		only = fs.Args()
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	// Start the plugins to ask them (no host services: nothing is called).
	host, err := pluginhost.New(pluginhost.Config{
		Dir: cfg.Plugins.Dir, BuiltIn: builtinNames(builtins), Only: only,
		MinBackoff: time.Hour, // no restarts in a one-shot command
		Logger:     slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4})),
	})
	if err != nil {
		return err
	}
	if err := host.Start(ctx); err != nil {
		return err
	}
	defer host.Close()
	infos := host.Plugins()
	if sub == "list" {
		return listPlugins(env.Stdout, cfg.Plugins.Dir, infos)
	}
	if len(infos) == 0 {
		return fmt.Errorf("no plugin %q (built in: %s; plugin directory %s)", only[0], strings.Join(builtinNames(builtins), ", "), cfg.Plugins.Dir)
	}
	return describePlugin(env.Stdout, infos[0])
}

func listPlugins(w io.Writer, dir string, infos []pluginhost.Info) error {
	if len(infos) == 0 {
		fmt.Fprintf(w, "no plugins (plugin directory %s)\n", dir)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tTOOLS\tSTATE\tSOURCE")
	for _, i := range infos {
		state := string(i.State)
		if i.Error != "" {
			state += ": " + firstLine(i.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", i.Name, orDash(i.Version), len(i.Tools), state, i.Source)
	}
	return tw.Flush()
}

func describePlugin(w io.Writer, i pluginhost.Info) error {
	fmt.Fprintf(w, "%s %s (%s, %s)\n", i.Name, orDash(i.Version), i.Source, i.State)
	if i.Error != "" {
		return fmt.Errorf("plugin %s: %s", i.Name, i.Error)
	}
	if len(i.Needs) > 0 {
		fmt.Fprintf(w, "needs: %s\n", strings.Join(i.Needs, ", "))
	}
	for _, t := range i.Tools {
		fmt.Fprintf(w, "\n%s\n", t.Name)
		if t.Description != "" {
			fmt.Fprintf(w, "  %s\n", t.Description)
		}
		schema, err := json.MarshalIndent(json.RawMessage(t.InputSchema), "  ", "  ")
		if err != nil {
			schema = t.InputSchema
		}
		fmt.Fprintf(w, "  input: %s\n", schema)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
