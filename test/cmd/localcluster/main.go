// Command localcluster runs termgate's local Kubernetes cluster in the
// foreground (`make cluster`) until interrupted, then stops every component.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"termgate.dev/termgate/test/cluster"
)

func main() {
	nodes := flag.Int("nodes", 3, "number of kwok nodes (half Spot, one GPU node from 4 on, the rest on-demand)")
	dir := flag.String("dir", "", "working directory for certificates, kubeconfig and logs (default: a temporary directory, removed on exit)")
	flag.Parse()
	if err := run(*nodes, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run(nodes int, dir string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: cluster.DefaultNodes(nodes), Dir: dir})
	if err != nil {
		return err
	}
	defer c.Stop()
	fmt.Printf("cluster ready in %s with %d nodes; logs in %s\n", time.Since(began).Round(time.Millisecond), nodes, c.Dir)
	fmt.Printf("  export KUBECONFIG=%s\n  bin/kubectl get nodes\nCtrl-C stops it.\n", c.Kubeconfig)
	<-ctx.Done()
	fmt.Println("stopping")
	return nil
}
