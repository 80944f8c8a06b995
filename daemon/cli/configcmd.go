package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
)

// runConfig implements `inboxd config check`: load, validate, and print the
// effective configuration with secrets masked.
func runConfig(_ context.Context, env Env, args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return usagef("want: inboxd config check [--config FILE]")
	}
	fs, cfgPath := newFlags(env, "config check", "config check [--config FILE]")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("config check takes no arguments")
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	if cfg.Auth.Mode == "password" {
		if _, err := cfg.Password(); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tENVIRONMENT\tVALUE")
	for _, s := range cfg.Effective() {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Key, s.Env, s.Value)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, "configuration ok")
	return nil
}
