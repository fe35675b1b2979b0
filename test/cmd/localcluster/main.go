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
	dir := flag.String("dir", "", "existing working directory for certificates, kubeconfig and logs, kept on exit (default: a temporary directory, removed on exit)")
	certManager := flag.Bool("cert-manager", false, "also install cert-manager's CRDs and run bin/cert-manager (certificates controllers, CA and SelfSigned issuers, CA injector)")
	realNode := flag.Bool("real-node", false, "also run one real node (kubelet, containerd, runc, CNI; needs root), tainted termgate.dev/real-node")
	loadBalancers := flag.Bool("load-balancers", false, "also run the upstream service controller with a cloud whose load balancers run on this machine (bin/service-controller): Services of type LoadBalancer get a loopback address")
	lbOperation := flag.Duration("lb-operation-time", 2*time.Second, "with --load-balancers: time each cloud call takes, like a GCE operation")
	flag.Parse()
	opts := cluster.Options{Nodes: cluster.DefaultNodes(*nodes), Dir: *dir, CertManager: *certManager, RealNode: *realNode}
	if *loadBalancers {
		opts.LoadBalancers = &cluster.LoadBalancerOptions{OperationTime: *lbOperation}
	}
	if err := run(opts); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run(opts cluster.Options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	c, err := cluster.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer c.Stop()
	fmt.Printf("cluster ready in %s with %d nodes; logs in %s\n", time.Since(began).Round(time.Millisecond), len(opts.Nodes), c.Dir)
	if opts.CertManager {
		fmt.Printf("cert-manager running (log: %s)\n", c.LogPath("cert-manager"))
	}
	if opts.RealNode {
		if rn, err := c.RealNode(); err != nil {
			fmt.Printf("no real node: %v\n", err)
		} else {
			fmt.Printf("real node %s running\n", rn.Name)
		}
	}
	if opts.LoadBalancers != nil {
		fmt.Printf("service controller running (log: %s); a Service of type LoadBalancer gets an address in 127.100.0.0/16\n", c.LogPath("service-controller"))
	}
	fmt.Printf("  export KUBECONFIG=%s\n  bin/kubectl get nodes\nCtrl-C stops it.\n", c.Kubeconfig)
	<-ctx.Done()
	fmt.Println("stopping")
	return nil
}
