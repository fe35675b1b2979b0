// Package app wires termgate's subcommands: flags, clients and the real clock
// are built here and nowhere else.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// subcommands maps a name to its entry point. Each parses its own flags.
var subcommands = map[string]func(ctx context.Context, args []string) error{
	"agent":    runAgent,
	"notifier": runNotifier,
	"webhook":  runWebhook,
}

// Run dispatches to the subcommand named by args[0].
func Run(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stderr)
		if len(args) == 0 {
			return errors.New("missing subcommand")
		}
		return nil
	}
	run, ok := subcommands[args[0]]
	if !ok {
		usage(os.Stderr)
		return fmt.Errorf("unknown subcommand %q", args[0])
	}
	err := run(ctx, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func usage(w io.Writer) {
	names := make([]string, 0, len(subcommands))
	for n := range subcommands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "usage: termgate <subcommand> [flags]\nsubcommands: %v\nrun `termgate <subcommand> --help` for its flags\n", names)
}
