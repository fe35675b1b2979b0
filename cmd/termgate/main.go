// Command termgate is the single binary of termgate's image: `termgate agent`
// runs the per-node agent, `termgate webhook` the admission webhook and
// `termgate notifier` the notifier.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"termgate.dev/termgate/cmd/termgate/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal asks for a graceful stop (the agent may drain on
	// within its grace period); a second one ends the process at once.
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := app.Run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "termgate:", err)
		os.Exit(1)
	}
}
