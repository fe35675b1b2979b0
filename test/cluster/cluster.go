// Package cluster runs a real, local Kubernetes control plane for termgate's
// tests and demo: etcd, kube-apiserver, kube-scheduler and
// kube-controller-manager built from Kubernetes' own Go modules (one
// multi-call binary, bin/controlplane), and kwok playing the kubelet of fake
// nodes that look like GCE VMs. Everything listens on loopback on free ports.
//
// Start it once per test package from TestMain and share it; give each test
// its own namespace.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"termgate.dev/termgate/test/proc"
)

// Options configure a local cluster. The zero value is usable.
type Options struct {
	// Nodes to create at start. Defaults to DefaultNodes(3).
	Nodes []NodeSpec
	// Dir holds certificates, the kubeconfig, etcd's data and component logs.
	// Defaults to a new temporary directory, removed by Stop.
	Dir string
	// BinDir holds controlplane, kwok and kwok-stages/. Defaults to
	// $TERMGATE_BIN, else the bin/ folder of the repository.
	BinDir string
	// PodDeleteDelay is how long kwok, playing the kubelet, takes to finish
	// a pod's deletion once it has a deletionTimestamp (pods with finalizers
	// stay Terminating, as on a real node). Defaults to 100ms.
	PodDeleteDelay time.Duration
	// NodeLease is the kwok nodes' lease duration (default 40 s, the
	// kubelet's). kwok renews each lease every quarter of it: at 40 s a
	// 5,000-node cluster writes 500 leases a second, more than two cores
	// keep up with beside the work measured, and nodes late to renew turn
	// Ready=Unknown and their pods unready. The controller manager's
	// grace period follows it (five quarters of it, as 50 s follows 40 s
	// upstream).
	NodeLease time.Duration
	// Verbosity is passed as -v to the Kubernetes components (default 1).
	Verbosity int
	// CertManager installs cert-manager's CRDs and runs bin/cert-manager
	// (its certificates controllers, CA and SelfSigned issuers and CA
	// injector) against the cluster.
	CertManager bool
	// RealNode adds one real node (kubelet, containerd, runc, CNI bridge)
	// beside the kwok nodes; see RealNode. On a machine that cannot run it
	// the cluster starts without it and RealNode says why.
	RealNode bool
	// LoadBalancers runs the upstream service controller with a cloud
	// whose load balancers run on this machine (bin/service-controller);
	// see LoadBalancerOptions and Cluster.LoadBalancers.
	LoadBalancers *LoadBalancerOptions
}

// Cluster is a running local control plane.
type Cluster struct {
	// Config is an admin (system:masters) client configuration.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file holding Config.
	Kubeconfig string
	// Dir is the working directory (logs are <component>.log in it).
	Dir string
	// Client is a clientset built from Config.
	Client kubernetes.Interface

	opts    Options
	bins    binaries
	pki     *pki
	ownsDir bool
	procs   []*proc.Process

	realNode    *RealNode
	realNodeErr error // why a requested real node is missing
	lbs         *LoadBalancers
}

// Start builds nothing: it expects the binaries that `make binaries` caches
// under bin/, and fails with a clear message when they are missing.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bins, err := findBinaries(opts.BinDir, opts.CertManager, opts.LoadBalancers != nil)
	if err != nil {
		return nil, err
	}
	if opts.Dir != "" {
		if fi, err := os.Stat(opts.Dir); err != nil {
			return nil, fmt.Errorf("local cluster directory: %w", err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("local cluster directory %s is not a directory", opts.Dir)
		}
	}
	if opts.Nodes == nil {
		opts.Nodes = DefaultNodes(3)
	}
	if opts.PodDeleteDelay == 0 {
		opts.PodDeleteDelay = 100 * time.Millisecond
	}
	if opts.Verbosity == 0 {
		opts.Verbosity = 1
	}
	c := &Cluster{opts: opts, bins: bins, Dir: opts.Dir}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "termgate-cluster-"); err != nil {
			return nil, fmt.Errorf("create cluster dir: %w", err)
		}
		c.ownsDir = true
	}
	// c, not a named result, is stopped: a failed start returns nil and
	// must still stop what it started.
	if err := c.bringUp(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) bringUp(ctx context.Context) error {
	if err := c.startControlPlane(ctx); err != nil {
		return err
	}
	if c.opts.CertManager {
		if err := c.startCertManager(ctx); err != nil {
			return err
		}
	}
	if err := c.AddNodes(ctx, c.opts.Nodes...); err != nil {
		return err
	}
	if err := c.startRealNode(ctx); err != nil {
		return err
	}
	if c.opts.LoadBalancers != nil {
		return c.startServiceController(ctx)
	}
	return nil
}

func (c *Cluster) startControlPlane(ctx context.Context) error {
	var err error
	if c.pki, err = writePKI(c.Dir); err != nil {
		return err
	}
	ports, err := proc.FreePorts(3)
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	if err := c.start("etcd", c.etcdArgs(etcdURL, ports[1])...); err != nil {
		return err
	}
	audit, err := c.auditArgs()
	if err != nil {
		return err
	}
	if err := c.start("kube-apiserver", append(c.apiserverArgs(etcdURL, ports[2]), audit...)...); err != nil {
		return err
	}
	if err := c.connect(ports[2]); err != nil {
		return err
	}
	if err := c.waitAPIServerReady(ctx); err != nil {
		return err
	}
	stages, err := c.writeKwokStages()
	if err != nil {
		return err
	}
	return errors.Join(
		c.start("kube-controller-manager", c.controllerManagerArgs()...),
		c.start("kube-scheduler", c.schedulerArgs()...),
		c.startKwok(stages),
	)
}

func (c *Cluster) start(name string, args ...string) error {
	bin, args := c.bins.command(name, args)
	p, err := proc.Start(c.Dir, name, nil, bin, args...)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return nil
}

// Stop stops every component (newest first) and removes the directory it
// created. It is safe to call more than once.
func (c *Cluster) Stop() {
	if err := c.stopRealNode(); err != nil {
		fmt.Fprintln(os.Stderr, "local cluster:", err)
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].Stop(2 * time.Second)
	}
	c.procs = nil
	if c.ownsDir && c.Dir != "" {
		_ = os.RemoveAll(c.Dir)
		c.Dir = ""
	}
}

// Healthy returns an error naming the first component that has exited.
func (c *Cluster) Healthy() error {
	for _, p := range c.procs {
		if gone, err := p.Exited(); gone {
			return err
		}
	}
	return nil
}

// LogPath returns the log file of a component ("kube-apiserver", "kwok", ...).
func (c *Cluster) LogPath(component string) string {
	return filepath.Join(c.Dir, component+".log")
}

// PIDs returns the process IDs of the running components.
func (c *Cluster) PIDs() []int {
	pids := make([]int, 0, len(c.procs))
	for _, p := range c.procs {
		pids = append(pids, p.PID())
	}
	return pids
}
