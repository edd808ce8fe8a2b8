// Command fleetshift is the fleetshift server (serve, single services, migrate) and the operator CLI.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	_ "time/tzdata" // policy time zones work in minimal containers too

	"github.com/fleetshift/fleetshift/fleetshift/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "fleetshift:", oneLine(err))
		stop()
		os.Exit(cli.ExitCode(err)) // README "Exit codes"
	}
}

// oneLine is err's message on one line: a failure is one line on stderr, whatever produced it.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
