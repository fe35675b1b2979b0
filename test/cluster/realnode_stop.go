package cluster

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
)

// kubeletSysctls are the machine-wide kernel settings the kubelet sets on
// start (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1).
// The real node puts back what it found.
var kubeletSysctls = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"}

// sharedDirs are machine-wide directories that containerd's shims (socket
// directory), libcni (result cache) and the kubelet (log links) create
// whatever the configuration says, children before parents. The ones that
// did not exist before the node started are removed when empty.
var sharedDirs = []string{
	"/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni", "/var/log/containers",
}

func missingDirs(dirs []string) []string {
	var missing []string
	for _, d := range dirs {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			missing = append(missing, d)
		}
	}
	return missing
}

func readSysctls(keys []string) (map[string]string, error) {
	vals := make(map[string]string, len(keys))
	for _, k := range keys {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s: %w", k, err)
		}
		vals[k] = strings.TrimSpace(string(b))
	}
	return vals, nil
}

func writeSysctls(vals map[string]string) error {
	var errs []error
	for k, v := range vals {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 and the
// v2 one of a hybrid machine).
func cgroupMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
				mounts = append(mounts, fields[4])
			}
		}
	}
	return mounts
}

// makeCgroupRoot creates the kubelet's --cgroup-root in every hierarchy: the
// kubelet refuses a root that does not exist, and a private root keeps its
// kubepods tree apart from anything else on the machine.
func (n *RealNode) makeCgroupRoot() error {
	for _, m := range cgroupMounts() {
		if err := os.Mkdir(filepath.Join(m, n.cgroupDir), 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("create cgroup %s: %w", filepath.Join(m, n.cgroupDir), err)
		}
	}
	return nil
}

// stopRealNode takes the real node down and puts the machine back as it
// was. Each step runs even when an earlier one failed; errors are returned
// together.
func (c *Cluster) stopRealNode() error {
	n := c.realNode
	if n == nil {
		return nil
	}
	c.realNode = nil
	var errs []error
	if n.kubelet != nil && n.runtime != nil {
		if gone, _ := n.kubelet.Exited(); !gone {
			errs = append(errs, c.deleteRealNodePods(n))
		}
	}
	if n.kubelet != nil {
		n.kubelet.Stop(5 * time.Second)
	}
	// Whatever the kubelet left: every process in the node's cgroups
	// (containers), then the shims, which outlive containerd and leave
	// their sockets in the machine-wide /run/containerd/s when killed.
	sockets := n.shimSockets()
	errs = append(errs, n.killCgroupProcs(), n.killShims())
	if n.runtime != nil {
		n.runtime.Stop(5 * time.Second)
	}
	if n.proxy != nil {
		n.proxy.Close()
	}
	errs = append(errs, unmountUnder(n.Dir), n.removeCgroups(), n.removeContainerLogLinks())
	if n.bridge != "" {
		if out, err := exec.Command("ip", "link", "del", n.bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w: %s", n.bridge, err, out))
		}
	}
	if n.sysctls != nil {
		if err := writeSysctls(n.sysctls); err != nil {
			errs = append(errs, err)
		} else {
			_ = os.Remove(savedSysctlsFile)
		}
	}
	if err := os.RemoveAll(n.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", n.Dir, err))
	}
	for _, sock := range sockets {
		_ = os.Remove(sock)
	}
	if results, err := filepath.Glob("/var/lib/cni/results/termgate-" + n.id + "-*"); err == nil {
		for _, r := range results { // libcni's cache of this node's network
			_ = os.Remove(r)
		}
	}
	for _, d := range n.madeDirs {
		_ = os.Remove(d) // only when empty: never anything of someone else's
	}
	if n.lock != nil {
		n.lock.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop real node: %w", err)
	}
	return nil
}

// deleteRealNodePods deletes the pods bound to the real node and waits for
// the kubelet to stop them through the CRI (sandbox, network, mounts), as a
// node drain would. Pods still there after the budget are left to the
// cgroup sweep.
func (c *Cluster) deleteRealNodePods(n *RealNode) error {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	sel := fields.OneTermEqualSelector("spec.nodeName", n.Name).String()
	pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return fmt.Errorf("list real node pods: %w", err)
	}
	// One second of grace, not a forced delete: the pod object goes only
	// once the kubelet has stopped its containers and sandbox.
	one := int64(1)
	left := map[string]bool{}
	for _, p := range pods.Items {
		left[string(p.UID)] = true
		_ = c.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &one})
	}
	// A DaemonSet puts a new pod back at once: wait only for the ones
	// deleted. Whatever starts meanwhile is left to the cgroup sweep.
	err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		now, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, nil
		}
		for _, p := range now.Items {
			if left[string(p.UID)] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("pods on the real node not stopped by its kubelet: %w", err)
	}
	return nil
}

// hasCgroup guards every walk of the node's cgroup tree: an empty or odd
// name would make it the whole hierarchy, every process on the machine.
func (n *RealNode) hasCgroup() bool {
	return strings.HasPrefix(n.cgroupDir, "termgate-realnode-") && !strings.ContainsAny(n.cgroupDir, "/.")
}

// cgroupProcs returns the PIDs in the node's cgroup tree.
func (n *RealNode) cgroupProcs() []int {
	if !n.hasCgroup() {
		return nil
	}
	seen := map[int]bool{}
	for _, m := range cgroupMounts() {
		root := filepath.Join(m, n.cgroupDir)
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	pids := make([]int, 0, len(seen))
	for p := range seen {
		pids = append(pids, p)
	}
	return pids
}

func (n *RealNode) killCgroupProcs() error {
	for range 20 {
		pids := n.cgroupProcs()
		if len(pids) == 0 {
			return nil
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond) // the kernel reaps them asynchronously
	}
	return fmt.Errorf("processes still in cgroup %s: %v", n.cgroupDir, n.cgroupProcs())
}

// shimSockets returns the socket paths the shims of this node's containers
// use: containerd names them by the SHA-256 of its own socket, the
// namespace and the container ID (pkg/shim.SocketAddress).
func (n *RealNode) shimSockets() []string {
	if n.runtime == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bins.ctr, "--address", n.socket, "--namespace", "k8s.io", "containers", "list", "--quiet").Output()
	if err != nil {
		return nil
	}
	var socks []string
	for _, id := range strings.Fields(string(out)) {
		for _, p := range []string{filepath.Join(n.socket, "k8s.io", id), filepath.Join(n.socket, "k8s.io", id, "debug")} {
			socks = append(socks, fmt.Sprintf("/run/containerd/s/%x", sha256.Sum256([]byte(p))))
		}
	}
	return socks
}

// killShims ends the containerd shims of this node: they are found by the
// containerd socket on their command line, which is private to this node.
func (n *RealNode) killShims() error {
	if n.socket == "" {
		return nil // never started containerd
	}
	killProcs(func(args []string) bool {
		return strings.HasSuffix(args[0], "containerd-shim-runc-v2") && strings.Contains(strings.Join(args, " "), n.socket)
	})
	return nil
}

// unmountUnder detaches every mount below dir (overlay root filesystems,
// network namespaces, volume tmpfs, the kubelet's own bind mount), deepest
// first.
func unmountUnder(dir string) error {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) == "/" {
		return fmt.Errorf("unmount under %q: not a node directory", dir)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	var targets []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			targets = append(targets, f[4])
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	var errs []error
	for _, t := range targets {
		if err := syscall.Unmount(t, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the node's cgroup tree in every hierarchy, children
// first (a cgroup directory is removed with rmdir, and only when empty).
func (n *RealNode) removeCgroups() error {
	if !n.hasCgroup() {
		return nil
	}
	var errs []error
	for _, m := range cgroupMounts() {
		root := filepath.Join(m, n.cgroupDir)
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// removeContainerLogLinks removes the links the kubelet makes in the
// machine-wide /var/log/containers to this node's pod logs.
func (n *RealNode) removeContainerLogLinks() error {
	const dir = "/var/log/containers"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // never created
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, n.Dir+"/") {
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
