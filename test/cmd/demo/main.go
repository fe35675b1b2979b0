// Command demo shows termgate's main job end to end on a local cluster:
// `make demo`. It starts a real control plane with kwok nodes, a fake GCE
// metadata server per node, termgate's webhook and one agent per node, deploys
// a workload and plays the scenarios of test/scenario, printing a live
// timeline, then writes bin/demo/report.json and bin/demo/timeline.svg.
//
// It exits 1 when an expectation fails, 2 on bad flags or a broken set-up,
// 130 when interrupted; every process it started is stopped in all cases.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		stop()
		os.Exit(2)
	}
	code := run(ctx, opts, os.Stdout)
	stop()
	os.Exit(code)
}
