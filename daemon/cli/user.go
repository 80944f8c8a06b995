package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/inboxd/inboxd/daemon/users"
)

const userUsage = `user add --email EMAIL [--name NAME] [--admin]
       inboxd user list
       inboxd user disable EMAIL|ID
       inboxd user api-key [--name NAME] EMAIL|ID`

// runUser administers users directly on the configured store.
func runUser(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 {
		return usagef("missing subcommand\nUsage: inboxd %s", userUsage)
	}
	sub, args := args[0], args[1:]
	fs, cfgPath := newFlags(env, "user "+sub, userUsage)
	var email, name *string
	var admin *bool
	switch sub {
	case "add":
		email = fs.String("email", "", "the new user's email (required)")
		name = fs.String("name", "", "display name")
		admin = fs.Bool("admin", false, "make the user an admin")
	case "api-key":
		name = fs.String("name", "", "a name for the key, to recognise it later")
	case "list", "disable":
	default:
		return usagef("unknown subcommand %q\nUsage: inboxd %s", sub, userUsage)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	wantArgs := map[string]int{"add": 0, "list": 0, "disable": 1, "api-key": 1}[sub]
	if fs.NArg() != wantArgs {
		return usagef("user %s takes %d argument(s), got %d\nUsage: inboxd %s", sub, wantArgs, fs.NArg(), userUsage)
	}
	if sub == "add" && *email == "" {
		return usagef("user add needs --email")
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

	switch sub {
	case "add":
		u, err := st.users.Create(ctx, users.NewUser{Email: *email, DisplayName: *name, Admin: *admin})
		if err != nil {
			return err
		}
		key, err := st.users.CreateAPIKey(ctx, u.ID, "created by user add")
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "user %s created (%s)\napi key: %s\n(the key is shown only this once)\n", u.ID, u.Email, key)
	case "list":
		list, err := st.users.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tEMAIL\tNAME\tADMIN\tDISABLED\tCREATED")
		for _, u := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%t\t%s\n", u.ID, u.Email, u.DisplayName, u.Admin, u.Disabled, u.CreatedAt.UTC().Format("2006-01-02 15:04"))
		}
		return tw.Flush()
	case "disable":
		u, err := st.users.Lookup(ctx, fs.Arg(0))
		if err != nil {
			return fmt.Errorf("%s: %w", fs.Arg(0), err)
		}
		if err := st.users.SetDisabled(ctx, u.ID, true); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "user %s (%s) disabled\n", u.ID, u.Email)
	case "api-key":
		u, err := st.users.Lookup(ctx, fs.Arg(0))
		if err != nil {
			return fmt.Errorf("%s: %w", fs.Arg(0), err)
		}
		key, err := st.users.CreateAPIKey(ctx, u.ID, *name)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "api key for %s (%s): %s\n(the key is shown only this once)\n", u.ID, u.Email, key)
	}
	return nil
}
