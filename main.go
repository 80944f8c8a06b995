// Command inboxd is a self-hosted, multi-tenant email-agent daemon.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	_ "time/tzdata" // user time zones must resolve even where the system lacks zoneinfo

	"github.com/inboxd/inboxd/daemon/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, cli.OSEnv())
	stop()
	os.Exit(code)
}
