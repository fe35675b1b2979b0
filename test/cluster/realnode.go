package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"termgate.dev/termgate/test/proc"
)

// RealNodeName is the name the real node registers under.
const RealNodeName = "realnode"

// RealNodeTaint is the taint the real node registers with, so that ordinary
// workloads stay on the kwok nodes; pods meant for the real node tolerate it
// and select it by name (kubernetes.io/hostname).
const RealNodeTaint = "termgate.dev/real-node"

// Images imported into the real node's containerd by `make binaries`
// (test/imagebuild). Pods name them with imagePullPolicy: Never.
const (
	PauseImage      = "termgate.local/pause:1"
	TermRecordImage = "termgate.local/termrecord:1"
)

// ErrRealNodeUnavailable wraps the reason this machine cannot run the real
// node (not root, no overlayfs, binaries missing...). Tests skip with it.
var ErrRealNodeUnavailable = errors.New("real node unavailable")

// kubeServiceIP is the first address of serviceCIDR: the ClusterIP of the
// `kubernetes` Service, which the kubelet hands to every pod as
// KUBERNETES_SERVICE_HOST. There is no kube-proxy here, so the real node
// puts this address on its bridge and forwards :443 to the API server.
var kubeServiceIP = net.IPv4(10, 0, 0, 1)

// RealNode is one kubelet with containerd, runc and the CNI bridge plugin,
// registered beside the kwok nodes. It exists only for clusters started
// with Options.RealNode.
type RealNode struct {
	// Name is the Node's name (RealNodeName).
	Name string
	// Dir holds the node's configuration, roots, sockets and logs
	// (kubelet.log, containerd.log).
	Dir string
	// IP is the node's address: the gateway of its pod bridge.
	IP net.IP
	// StartTime is how long the node took from nothing to Ready and
	// schedulable (bridge, containerd, image imports, kubelet).
	StartTime time.Duration
	// CgroupRoot is the kubelet's --cgroup-root, in every hierarchy.
	CgroupRoot string
	// Bridge is the pods' bridge interface, holding IP.
	Bridge string

	bins      realNodeBinaries
	id        string // short random suffix of the bridge and cgroup names
	bridge    string
	cgroupDir string // relative to each cgroup hierarchy's mount point
	socket    string
	lock      net.Listener
	madeDirs  []string          // machine-wide directories containerd and the kubelet create
	sysctls   map[string]string // values before the kubelet changed them
	proxy     net.Listener
	kubelet   *proc.Process
	runtime   *proc.Process
}

type realNodeBinaries struct {
	dir                                   string
	kubelet, containerd, ctr, runc, pause string
}

func findRealNodeBinaries(binDir string) (realNodeBinaries, error) {
	dir := filepath.Join(binDir, "realnode")
	b := realNodeBinaries{
		dir:        dir,
		kubelet:    filepath.Join(dir, "kubelet"),
		containerd: filepath.Join(dir, "containerd"),
		ctr:        filepath.Join(dir, "ctr"),
		runc:       filepath.Join(dir, "runc"),
		pause:      filepath.Join(dir, "pause.tar"),
	}
	need := []string{b.kubelet, b.containerd, b.ctr, b.runc, b.pause,
		filepath.Join(dir, "containerd-shim-runc-v2"), filepath.Join(dir, "bridge"),
		filepath.Join(dir, "host-local"), filepath.Join(dir, "termrecord.tar")}
	for _, f := range need {
		if _, err := os.Stat(f); err != nil {
			return b, fmt.Errorf("%w: %s missing (run `make binaries`)", ErrRealNodeUnavailable, f)
		}
	}
	return b, nil
}

// realNodeSupported returns why this machine cannot run a kubelet with
// containerd, or nil.
func realNodeSupported() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (namespaces, cgroups, mounts, a bridge)", ErrRealNodeUnavailable)
	}
	fss, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(fss), "\toverlay\n") {
		return fmt.Errorf("%w: the kernel offers no overlay filesystem (containerd's snapshotter)", ErrRealNodeUnavailable)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: the ip command (iproute2) is missing", ErrRealNodeUnavailable)
	}
	if len(cgroupMounts()) == 0 {
		return fmt.Errorf("%w: no cgroup hierarchy mounted", ErrRealNodeUnavailable)
	}
	return nil
}

// RealNode returns the cluster's real node, or an error wrapping
// ErrRealNodeUnavailable that says why there is none.
func (c *Cluster) RealNode() (*RealNode, error) {
	if c.realNode == nil && c.realNodeErr == nil {
		return nil, fmt.Errorf("%w: the cluster was started without Options.RealNode", ErrRealNodeUnavailable)
	}
	return c.realNode, c.realNodeErr
}

// startRealNode starts the real node when the options ask for it. A machine
// that cannot run it is not an error: the reason is kept for RealNode.
func (c *Cluster) startRealNode(ctx context.Context) error {
	if !c.opts.RealNode {
		return nil
	}
	if err := realNodeSupported(); err != nil {
		c.realNodeErr = err
		return nil
	}
	bins, err := findRealNodeBinaries(filepath.Dir(c.bins.kwokStages))
	if err != nil {
		c.realNodeErr = err
		return nil
	}
	n := &RealNode{Name: RealNodeName, Dir: filepath.Join(c.Dir, "realnode"), bins: bins}
	c.realNode = n
	if err := n.start(ctx, c); err != nil {
		return fmt.Errorf("real node: %w", err)
	}
	return nil
}

func (n *RealNode) start(ctx context.Context, c *Cluster) error {
	var err error
	if n.lock, err = lockRealNode(ctx); err != nil {
		return err
	}
	began := time.Now() // not counting the wait for another package's node
	if err := reclaimLeftovers(); err != nil {
		return err
	}
	if n.sysctls, err = readSysctls(kubeletSysctls); err != nil {
		return err
	}
	if err := saveSysctls(n.sysctls); err != nil {
		return err
	}
	n.madeDirs = missingDirs(sharedDirs)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n.id = hex.EncodeToString(b)
	n.bridge = "tgbr" + n.id
	n.Bridge = n.bridge
	n.cgroupDir = "termgate-realnode-" + n.id
	n.CgroupRoot = "/" + n.cgroupDir
	n.socket = filepath.Join(n.Dir, "containerd.sock")
	for _, d := range []string{"kubelet", "containerd/root", "containerd/state", "net.d", "ipam", "pod-logs", "volume-plugins"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	subnet, err := n.setUpBridge()
	if err != nil {
		return err
	}
	if err := n.forwardAPIServer(c.Config.Host); err != nil {
		return err
	}
	if err := n.makeCgroupRoot(); err != nil {
		return err
	}
	if err := n.writeConfigs(c, subnet); err != nil {
		return err
	}
	path := "PATH=" + n.bins.dir + ":" + os.Getenv("PATH")
	n.runtime, err = proc.Start(c.Dir, "containerd", []string{path}, n.bins.containerd, "--config", filepath.Join(n.Dir, "containerd.toml"))
	if err != nil {
		return err
	}
	if err := n.waitContainerd(ctx); err != nil {
		return err
	}
	for _, img := range []string{n.bins.pause, filepath.Join(n.bins.dir, "termrecord.tar")} {
		if err := n.ImportImage(ctx, img); err != nil {
			return err
		}
	}
	n.kubelet, err = proc.Start(c.Dir, "kubelet", []string{path}, n.bins.kubelet,
		"--config="+filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig="+c.Kubeconfig,
		"--root-dir="+filepath.Join(n.Dir, "kubelet"),
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		// A Spot VM in the first zone: termgate's agent DaemonSet selects
		// Spot, preemptible and accelerator nodes.
		"--node-labels="+LabelSpot+"=true,topology.kubernetes.io/zone=us-central1-a,"+
			"topology.kubernetes.io/region=us-central1,node.kubernetes.io/instance-type=e2-standard-4,type=real",
		fmt.Sprintf("--v=%d", c.opts.Verbosity),
	)
	if err != nil {
		return err
	}
	if err := n.waitReady(ctx, c); err != nil {
		return err
	}
	n.StartTime = time.Since(began)
	return nil
}

// ImportImage imports an OCI or Docker archive into the node's containerd
// (namespace k8s.io, where the CRI looks).
func (n *RealNode) ImportImage(ctx context.Context, archive string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bins.ctr, "--address", n.socket, "--namespace", "k8s.io",
		"images", "import", "--platform", "linux/amd64", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import image %s: %w: %s", archive, err, out)
	}
	return nil
}

func (n *RealNode) waitContainerd(ctx context.Context) error {
	const budget = 30 * time.Second // it listens within a second when healthy
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, budget, true, func(ctx context.Context) (bool, error) {
		if gone, err := n.runtime.Exited(); gone {
			return false, err
		}
		conn, err := net.Dial("unix", n.socket)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("containerd not listening on %s (log: %s): %w", n.socket, n.runtime.LogPath(), err)
	}
	return nil
}

func (n *RealNode) waitReady(ctx context.Context, c *Cluster) error {
	// The kubelet registers within seconds; the node turns Ready once the
	// runtime and the CNI configuration report ready, and schedulable after
	// the node lifecycle controller's next pass.
	const budget = 90 * time.Second
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, budget, true, func(ctx context.Context) (bool, error) {
		for _, p := range []*proc.Process{n.runtime, n.kubelet} {
			if gone, err := p.Exited(); gone {
				return false, err
			}
		}
		return c.nodeReadyAndSchedulable(ctx, n.Name), nil
	})
	if err != nil {
		return fmt.Errorf("node %s not Ready (logs: %s, %s): %w", n.Name, n.kubelet.LogPath(), n.runtime.LogPath(), err)
	}
	return nil
}

// setUpBridge creates the pod bridge with a free /24 and puts the gateway
// address and the `kubernetes` Service address on it.
func (n *RealNode) setUpBridge() (*net.IPNet, error) {
	subnet, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	n.IP = make(net.IP, 4)
	copy(n.IP, subnet.IP.To4())
	n.IP[3] = 1
	ones, _ := subnet.Mask.Size()
	steps := [][]string{
		{"link", "add", "name", n.bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", n.IP, ones), "dev", n.bridge},
		{"addr", "add", kubeServiceIP.String() + "/32", "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	return subnet, nil
}

// freeSubnet picks a /24 in 10.200.0.0/16 that no route on this machine
// covers yet.
func freeSubnet() (*net.IPNet, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	b := make([]byte, 1)
	for range 64 {
		_, _ = rand.Read(b)
		cidr := fmt.Sprintf("10.200.%d.0/24", b[0])
		if !strings.Contains(string(out), fmt.Sprintf("10.200.%d.", b[0])) {
			_, subnet, _ := net.ParseCIDR(cidr)
			return subnet, nil
		}
	}
	return nil, errors.New("no free /24 in 10.200.0.0/16 for the pod bridge")
}

// forwardAPIServer relays kubeServiceIP:443 to the API server on loopback,
// standing in for kube-proxy's rule for the `kubernetes` Service. Its
// serving certificate already names 10.0.0.1.
func (n *RealNode) forwardAPIServer(host string) error {
	u, err := url.Parse(host)
	if err != nil {
		return fmt.Errorf("API server address %q: %w", host, err)
	}
	n.proxy, err = net.Listen("tcp", net.JoinHostPort(kubeServiceIP.String(), "443"))
	if err != nil {
		return fmt.Errorf("forward the kubernetes Service address to the API server: %w", err)
	}
	go relay(n.proxy, u.Host)
	return nil
}

func relay(l net.Listener, target string) {
	for {
		in, err := l.Accept()
		if err != nil {
			return // closed by stop
		}
		go func() {
			defer in.Close()
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { copyConn(out, in); done <- struct{}{} }()
			go func() { copyConn(in, out); done <- struct{}{} }()
			<-done
		}()
	}
}

func copyConn(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// lockRealNode takes a machine-wide lock: the kubelet changes machine-wide
// kernel settings and the real node binds the `kubernetes` Service address,
// so two real nodes (two test packages) run one after the other. The lock is
// a socket in the abstract namespace: no file to clean up, and the kernel
// releases it when the holder dies.
func lockRealNode(ctx context.Context) (net.Listener, error) {
	const name = "@termgate-realnode-lock"
	// Another package's real node holds it for its whole test run.
	const budget = 20 * time.Minute
	var l net.Listener
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, budget, true, func(context.Context) (bool, error) {
		var err error
		l, err = net.Listen("unix", name)
		if errors.Is(err, syscall.EADDRINUSE) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return nil, fmt.Errorf("wait for the machine-wide real-node lock (another real node is running): %w", err)
	}
	return l, nil
}
