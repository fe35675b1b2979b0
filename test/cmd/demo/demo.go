package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/scenario"
)

// Exit codes.
const (
	exitHeld        = 0
	exitNotHeld     = 1
	exitBroken      = 2
	exitInterrupted = 130
)

// options are the demo's flags.
type options struct {
	nodes     int
	scenario  string
	keep      bool
	out       string
	gpuBudget time.Duration
	certs     string
	realNode  bool
	notify    bool
}

func parseFlags(args []string) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.IntVar(&o.nodes, "nodes", 6, "GKE-like kwok nodes: half Spot, one GPU, the rest on-demand (at least 4 for every scenario); one EC2 and one Azure Spot node come beside them")
	fs.StringVar(&o.scenario, "scenario", "all", "scenario to play: all, or one of "+strings.Join(scenarioNames(), ", ")+" (default spot-preemption with --certs cert-manager)")
	fs.BoolVar(&o.keep, "keep", false, "leave the cluster up after the scenarios and print its kubeconfig, until Ctrl-C")
	fs.StringVar(&o.out, "out", "", "directory of report.json and timeline.svg (default bin/demo in the repository)")
	fs.DurationVar(&o.gpuBudget, "gpu-budget", 45*time.Second, "GPU maintenance deadline given to the agents (GCE gives 60m; shortened to fit a demo)")
	fs.StringVar(&o.certs, "certs", scenario.CertsSelfManaged, "webhook certificates: self-managed, or cert-manager (the real cert-manager issues them from the cert-manager overlay and its CA injector injects the CA)")
	fs.BoolVar(&o.realNode, "real-node", false, "play the Spot preemption on the local cluster's real node (kubelet, containerd, runc, CNI), "+
		"termgate installed from its image with kubectl apply -k of the self-managed overlay (needs root, `make binaries` and `make image`)")
	fs.BoolVar(&o.notify, "notify", false, "also run termgate's notifier, sending the scenarios' notifications to a CloudEvents and a Slack receiver the demo runs, and print what arrived")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.notify && o.realNode {
		fmt.Fprintln(fs.Output(), "--notify runs the notifier as a local process; --real-node installs termgate from its image")
		return o, errors.New("bad --notify with --real-node")
	}
	if o.certs != scenario.CertsSelfManaged && o.certs != scenario.CertsCertManager {
		fmt.Fprintf(fs.Output(), "--certs %q: want %s or %s\n", o.certs, scenario.CertsSelfManaged, scenario.CertsCertManager)
		return o, errors.New("bad --certs")
	}
	scenarioSet := false
	fs.Visit(func(f *flag.Flag) { scenarioSet = scenarioSet || f.Name == "scenario" })
	if o.certs == scenario.CertsCertManager && !scenarioSet {
		// What the cert-manager run shows is the webhook's certificate at
		// work: the Spot preemption's bind gate is enough for that.
		o.scenario = "spot-preemption"
	}
	if o.realNode {
		// The real node is the one Spot node that runs containers; the
		// other scenarios need nodes of their own kinds, which are kwok's.
		if scenarioSet && o.scenario != "spot-preemption" {
			fmt.Fprintf(fs.Output(), "--real-node plays spot-preemption only, not %q\n", o.scenario)
			return o, errors.New("bad --scenario for --real-node")
		}
		if o.certs != scenario.CertsSelfManaged {
			fmt.Fprintf(fs.Output(), "--real-node installs the self-managed overlay; --certs %s runs without it\n", o.certs)
			return o, errors.New("bad --certs for --real-node")
		}
		o.scenario = "spot-preemption"
	}
	if o.nodes < 1 {
		fmt.Fprintln(fs.Output(), "--nodes must be at least 1")
		return o, errors.New("bad --nodes")
	}
	if _, err := o.selected(); err != nil {
		fmt.Fprintln(fs.Output(), err)
		return o, err
	}
	return o, nil
}

func scenarioNames() []string {
	var names []string
	for _, s := range scenario.All() {
		names = append(names, s.Name)
	}
	return names
}

func (o options) selected() ([]scenario.Scenario, error) {
	if o.scenario == "all" {
		return scenario.All(), nil
	}
	s, ok := scenario.Find(o.scenario)
	if !ok {
		return nil, fmt.Errorf("--scenario %q: want all or one of %s", o.scenario, strings.Join(scenarioNames(), ", "))
	}
	return []scenario.Scenario{s}, nil
}

// run plays the demo and returns the exit code. Every process it starts is
// stopped by its defers, whatever happens.
func run(ctx context.Context, o options, out io.Writer) int {
	con := newConsole(out, isTerminal(out))
	scenarios, _ := o.selected()
	nodes := cluster.DefaultNodes(o.nodes)
	if !o.realNode {
		// The EC2 and Azure Spot nodes of their clouds' scenarios.
		nodes = append(nodes, cluster.CloudNodes()...)
	}
	con.headline(nodes, scenarios)

	outDir, err := o.outDir()
	if err != nil {
		return con.broken(err)
	}
	workDir, err := os.MkdirTemp("", "termgate-demo-")
	if err != nil {
		return con.broken(err)
	}
	defer os.RemoveAll(workDir)

	c, binary, err := startClusterAndBuild(ctx, con, workDir, nodes, o)
	if err != nil {
		return con.broken(err)
	}
	defer c.Stop()
	env, err := scenario.StartEnv(ctx, scenario.EnvOptions{
		Cluster: c, Nodes: nodes, Binary: binary, AcceleratorBudget: o.gpuBudget, Namespace: "shop", Say: con.step, Warn: con.warn,
		Certs: o.certs, RealNode: o.realNode,
	})
	if err != nil {
		return con.broken(err)
	}
	defer env.Stop()
	var notify *notifyRun
	if o.notify {
		if notify, err = startNotify(ctx, con, c, binary); err != nil {
			return con.broken(err)
		}
		defer notify.stop()
	}
	if o.realNode {
		con.note("the kwok nodes run no agent (the DaemonSet is placed on the real node only); termgate's own pods on the real node are left out of the figures: on a real cluster its webhook replicas sit on other nodes")
	} else {
		con.note("GPU maintenance deadline shortened to %s by --accelerator-maintenance-budget (GCE gives 60m)", o.gpuBudget)
	}

	results, err := play(ctx, env, scenarios, con)
	notify.report(con)
	if env.RealNode != nil && err == nil {
		checkRealContainers(env, results, con)
	}
	rep := newReport(o.nodes, o.certs, env, results)
	if werr := rep.write(outDir); werr != nil {
		con.note("could not write the report: %v", werr)
	} else {
		con.note("wrote %s and %s", filepath.Join(outDir, reportFile), filepath.Join(outDir, svgFile))
	}
	con.summary(results)
	code := verdict(ctx, con, results, err)
	if o.keep && ctx.Err() == nil {
		con.keep(c.Kubeconfig, env.LogPaths())
		<-ctx.Done()
	}
	return code
}

func (o options) outDir() (string, error) {
	if o.out != "" {
		return o.out, os.MkdirAll(o.out, 0o755)
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "bin", "demo")
	return dir, os.MkdirAll(dir, 0o755)
}

// startClusterAndBuild starts the cluster while termgate compiles. With
// --real-node nothing compiles: the real node runs the image.
func startClusterAndBuild(ctx context.Context, con *console, dir string, nodes []cluster.NodeSpec, o options) (*cluster.Cluster, string, error) {
	certManager := o.certs == scenario.CertsCertManager
	type built struct {
		bin string
		err error
		d   time.Duration
	}
	done := make(chan built, 1)
	go func() {
		if o.realNode {
			done <- built{}
			return
		}
		began := time.Now()
		bin, err := localrun.Build(ctx, dir)
		done <- built{bin, err, time.Since(began)}
	}()
	began := time.Now()
	copts := cluster.Options{Nodes: nodes, CertManager: certManager, RealNode: o.realNode}
	if !o.realNode {
		// The real service controller for lb-preemption; its cloud calls
		// take 5 s, like a GCE target-pool update.
		copts.LoadBalancers = &cluster.LoadBalancerOptions{OperationTime: 5 * time.Second}
	}
	c, err := cluster.Start(ctx, copts)
	if err != nil {
		<-done
		return nil, "", fmt.Errorf("start the local cluster: %w", err)
	}
	con.step("local cluster Ready: etcd, kube-apiserver, scheduler, controller-manager (v1.37.2) and kwok with %d nodes (%s)",
		len(nodes), time.Since(began).Round(time.Millisecond))
	if o.realNode {
		node, err := c.RealNode()
		if err != nil {
			<-done
			c.Stop()
			return nil, "", err
		}
		con.step("real node %s Ready: kubelet v1.37.2, containerd, runc and a CNI bridge, Spot (%s)", node.Name, node.StartTime.Round(time.Millisecond))
	}
	if certManager {
		con.step("cert-manager v1.21.2 running: its CRDs, certificates controllers, CA and SelfSigned issuers and CA injector (log: %s)", c.LogPath("cert-manager"))
	}
	b := <-done
	if b.err != nil {
		c.Stop()
		return nil, "", b.err
	}
	if !o.realNode {
		con.step("built termgate (%s)", b.d.Round(time.Millisecond))
	}
	return c, b.bin, nil
}

// play runs the scenarios one after the other.
func play(ctx context.Context, env *scenario.Env, scenarios []scenario.Scenario, con *console) ([]*scenario.Result, error) {
	var results []*scenario.Result
	for _, s := range scenarios {
		if ctx.Err() != nil {
			break
		}
		res, err := scenario.Run(ctx, env, s, con.observer(len(scenarios)))
		if res != nil {
			con.result(res)
			results = append(results, res)
		}
		if err != nil {
			return results, fmt.Errorf("scenario %s: %w", s.Name, err)
		}
		if err := env.Healthy(); err != nil {
			return results, err
		}
	}
	return results, nil
}

// verdict prints the outcome and picks the exit code.
func verdict(ctx context.Context, con *console, results []*scenario.Result, err error) int {
	switch {
	case ctx.Err() != nil:
		con.note("interrupted: stopping every process the demo started")
		return exitInterrupted
	case err != nil:
		return con.broken(err)
	}
	var failed []string
	for _, r := range results {
		for _, f := range r.Failures() {
			failed = append(failed, r.Name+": "+f)
		}
	}
	if len(failed) > 0 {
		con.failures(failed)
		return exitNotHeld
	}
	con.note("every expectation held")
	return exitHeld
}
