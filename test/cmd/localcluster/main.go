// Command localcluster runs termgate's local Kubernetes cluster in the
// foreground (`make cluster`) until interrupted, then stops every component.
// With the real node it also imports termgate's image into the node, runs
// the node's fake metadata server and writes a values file and an overlay
// with which the README's install commands run termgate there; lines on
// standard input then change the node's metadata (preempt, restore, or
// KEY VALUE and -KEY as in test/cmd/gcefake).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/realnodeinstall"
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
	var local *realnodeinstall.LocalInstall
	if opts.RealNode {
		rn, err := c.RealNode()
		if err != nil {
			fmt.Printf("no real node: %v\n", err)
		} else {
			fleet := gcefake.NewFleet()
			defer fleet.Close()
			if local, err = realnodeinstall.PrepareLocal(ctx, rn, fleet, c.Dir); err != nil {
				return fmt.Errorf("prepare the real node for termgate: %w", err)
			}
			fmt.Printf("real node %s running, termgate's image imported, its metadata server at %s\n", rn.Name, local.Metadata.Host())
		}
	}
	if opts.LoadBalancers != nil {
		fmt.Printf("service controller running (log: %s); a Service of type LoadBalancer gets an address in 127.100.0.0/16\n", c.LogPath("service-controller"))
	}
	fmt.Printf("  export KUBECONFIG=%s\n  bin/kubectl get nodes\n", c.Kubeconfig)
	if local != nil {
		fmt.Printf("install termgate on the real node, either way:\n"+
			"  bin/helm install termgate charts/termgate -f %s\n"+
			"  bin/kubectl apply -k %s\n"+
			"then type preempt (or restore) and Enter to preempt the node (or bring it back).\n", local.Values, local.Overlay)
		go readMetadataCommands(os.Stdin, local.Metadata)
	}
	fmt.Println("Ctrl-C stops it.")
	<-ctx.Done()
	fmt.Println("stopping")
	return nil
}

// readMetadataCommands applies each line of in to the real node's metadata
// server: preempt, restore, "KEY VALUE" or "-KEY" (keys relative to
// computeMetadata/v1/, e.g. instance/maintenance-event TERMINATE_ON_HOST_MAINTENANCE).
func readMetadataCommands(in io.Reader, md *gcefake.Server) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if err := metadataCommand(md, sc.Text()); err != nil {
			fmt.Println("metadata:", err)
		}
	}
}

func metadataCommand(md *gcefake.Server, line string) error {
	fields := strings.Fields(line)
	switch {
	case len(fields) == 0:
		return nil
	case len(fields) == 1 && fields[0] == "preempt":
		md.SetPreempted(true)
	case len(fields) == 1 && fields[0] == "restore":
		md.SetPreempted(false)
		md.SetMaintenanceEvent("NONE")
	case len(fields) == 1 && strings.HasPrefix(fields[0], "-"):
		md.Delete(strings.TrimPrefix(fields[0], "-"))
	case len(fields) == 2:
		if err := md.Set(fields[0], fields[1]); err != nil {
			return fmt.Errorf("set %s: %w", fields[0], err)
		}
	default:
		return fmt.Errorf("%q: want preempt, restore, KEY VALUE or -KEY", line)
	}
	fmt.Println("metadata:", line)
	return nil
}
