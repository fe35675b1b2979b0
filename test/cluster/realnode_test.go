package cluster_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"termgate.dev/termgate/test/cluster"
)

// TestRealNodeRunsAPodAndLeavesNothingBehind starts a cluster of its own with
// a real node, runs a real container on it, deletes the pod and checks the
// container got SIGTERM and its grace; then stops the cluster and checks the
// machine is as it was: kernel settings, bridge, cgroups, mounts, shims.
func TestRealNodeRunsAPodAndLeavesNothingBehind(t *testing.T) {
	// The machine's own state, read while no real node runs (another
	// package's may, between this test's steps).
	var sysctlsBefore string
	var missingBefore []string // machine-wide dirs containerd, libcni and the kubelet create
	machineState := func() {
		sysctlsBefore = readSysctls(t)
		for _, d := range []string{"/run/containerd", "/var/lib/cni", "/var/log/containers"} {
			if _, err := os.Stat(d); os.IsNotExist(err) {
				missingBefore = append(missingBefore, d)
			}
		}
	}
	if err := cluster.WhileNoRealNodeRuns(context.Background(), machineState); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: cluster.DefaultNodes(1), RealNode: true})
	if err != nil {
		t.Fatalf("start cluster with a real node: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			c.Stop()
		}
	})
	n, err := c.RealNode()
	if errors.Is(err, cluster.ErrRealNodeUnavailable) {
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("real node Ready in %s", n.StartTime.Round(time.Millisecond))

	node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node: %v", err)
	}
	if !hasTaint(node, cluster.RealNodeTaint) {
		t.Errorf("real node taints %v, want %s so ordinary pods stay off it", node.Spec.Taints, cluster.RealNodeTaint)
	}
	if _, kwok := node.Annotations["kwok.x-k8s.io/node"]; kwok {
		t.Errorf("real node carries kwok's annotation: kwok would play its kubelet")
	}

	record := t.TempDir()
	const delay, grace = 2 * time.Second, 10
	pod := termRecordPod("record-me", record, delay, grace)
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	running := waitPod(t, c, "default", pod.Name, 90*time.Second, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodRunning
	})
	if ip := net.ParseIP(running.Status.PodIP); ip == nil || !ip.Mask(net.CIDRMask(24, 32)).Equal(n.IP.Mask(net.CIDRMask(24, 32))) {
		t.Errorf("pod IP %q is not on the node's bridge %s/24", running.Status.PodIP, n.IP)
	}
	deleted := time.Now()
	if err := c.Client.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	waitPodGone(t, c, "default", pod.Name, time.Duration(grace+20)*time.Second)
	rec, err := cluster.ReadTermRecord(record, pod.Name)
	if err != nil {
		t.Fatalf("read the container's record: %v", err)
	}
	if rec.SIGTERM.IsZero() {
		t.Fatalf("container never recorded SIGTERM: %+v", rec)
	}
	if got := rec.SIGTERM.Sub(deleted); got > 5*time.Second {
		t.Errorf("SIGTERM arrived %s after the delete, want within 5 s", got)
	}
	if rec.Exit.IsZero() || rec.Exit.Sub(rec.SIGTERM) < delay {
		t.Errorf("container did not get to finish its %s of work after SIGTERM: %+v", delay, rec)
	}

	dir, bridge, cgroupRoot := n.Dir, n.Bridge, n.CgroupRoot
	c.Stop()
	stopped = true
	err = cluster.WhileNoRealNodeRuns(context.Background(), func() {
		if after := readSysctls(t); after != sysctlsBefore {
			t.Errorf("kernel settings after stop %q, want %q", after, sysctlsBefore)
		}
		for _, d := range missingBefore {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("%s was created by the real node and left behind", d)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "link", "show", bridge).CombinedOutput(); err == nil {
		t.Errorf("bridge %s still on the machine:\n%s", bridge, out)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), dir) {
		t.Errorf("mounts under %s left behind", dir)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind (stat: %v)", dir, err)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*" + cgroupRoot); len(left) > 0 {
		t.Errorf("cgroups left behind: %v", left)
	}
	if out, _ := exec.Command("pgrep", "-f", dir).Output(); len(out) > 0 {
		t.Errorf("processes still using %s: %s", dir, out)
	}
}

func readSysctls(t *testing.T) string {
	t.Helper()
	var vals []string
	for _, k := range []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"} {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatalf("read %s: %v", k, err)
		}
		vals = append(vals, k+"="+strings.TrimSpace(string(b)))
	}
	return strings.Join(vals, " ")
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

// termRecordPod runs the termrecord test image on the real node.
func termRecordPod(name, dir string, delay time.Duration, grace int64) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": cluster.RealNodeName}
	cluster.RunsTermRecord(dir, delay, grace)(p)
	return p
}

func waitPod(t *testing.T, c *cluster.Cluster, ns, name string, budget time.Duration, ok func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, budget, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return ok(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s: %v; last status %+v (kubelet log: %s)", ns, name, err, statusOf(last), c.LogPath("kubelet"))
	}
	return last
}

func statusOf(p *corev1.Pod) any {
	if p == nil {
		return nil
	}
	return p.Status
}

func waitPodGone(t *testing.T, c *cluster.Cluster, ns, name string, budget time.Duration) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, budget, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s still there after %s: %v", ns, name, budget, err)
	}
}
