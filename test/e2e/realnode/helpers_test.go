package realnode_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// workDeployment runs the termrecord image (cluster.RunsTermRecord): each
// pod writes when SIGTERM arrived into dir/<pod name> and exits delay later,
// inside its grace.
func workDeployment(ns, name string, replicas int32, dir string, delay time.Duration, grace int64) *appsv1.Deployment {
	return kit.Deployment(ns, name, replicas, cluster.RunsTermRecord(dir, delay, grace))
}

// startWorkOnRealNode creates the deployment while the kwok nodes are
// cordoned, so every replica lands on the real node, and returns its pods
// once they run there. The kwok nodes take the replacements later.
func startWorkOnRealNode(t *testing.T, d *appsv1.Deployment) []corev1.Pod {
	t.Helper()
	ctx := context.Background()
	cordonKwokNodes(t, true)
	defer cordonKwokNodes(t, false)
	if _, err := shared.Client.AppsV1().Deployments(d.Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	t.Cleanup(func() {
		_ = shared.Client.AppsV1().Deployments(d.Namespace).Delete(context.Background(), d.Name, metav1.DeleteOptions{})
	})
	var pods []corev1.Pod
	// Image present, sandbox and container start: seconds on this node.
	testenv.Eventually(t, 60*time.Second, "the workload running on the real node", func(ctx context.Context) (bool, string, error) {
		pods = podsOn(ctx, d.Namespace, d.Spec.Selector.MatchLabels, node.Name, true)
		return len(pods) == int(*d.Spec.Replicas), fmt.Sprintf("%d running", len(pods)), nil
	})
	return pods
}

// podsOn lists the selected pods on (or, with on false, off) the node that
// are running and not being deleted.
func podsOn(ctx context.Context, ns string, sel map[string]string, nodeName string, on bool) []corev1.Pod {
	list, err := shared.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: sel})})
	if err != nil {
		return nil
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if (p.Spec.NodeName == nodeName) == on && p.Spec.NodeName != "" && p.DeletionTimestamp == nil &&
			p.Status.Phase == corev1.PodRunning && podReady(&p) {
			out = append(out, p)
		}
	}
	return out
}

func cordonKwokNodes(t *testing.T, cordon bool) {
	t.Helper()
	ctx := context.Background()
	nodes, err := shared.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%v}}`, cordon)
	for _, n := range nodes.Items {
		if n.Name == node.Name {
			continue
		}
		if _, err := shared.Client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatalf("cordon %s=%v: %v", n.Name, cordon, err)
		}
	}
}

// marked reports whether the real node carries termgate's taint and mark.
func marked(ctx context.Context) (bool, string, error) {
	n, err := shared.Client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	_, hasMark, _ := nodemark.Read(n.Annotations)
	tainted := false
	for _, tt := range n.Spec.Taints {
		if tt.Key == nodemark.TaintKey {
			tainted = true
		}
	}
	return hasMark && tainted, fmt.Sprintf("mark %v, taint %v", hasMark, tainted), nil
}

func unmarked(ctx context.Context) (bool, string, error) {
	m, seen, err := marked(ctx)
	if err != nil {
		return false, "", err
	}
	n, err := shared.Client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	_, lb := n.Labels[nodemark.LabelExcludeFromLB]
	return !m && !strings.Contains(seen, "true") && !lb, seen + fmt.Sprintf(", LB label %v", lb), nil
}

// restoreAfter withdraws the notice at the end of the test and waits for
// the node unmarked and the webhook back to full strength, so the next test
// starts from an installed, unmarked node.
func restoreAfter(t *testing.T) {
	t.Cleanup(func() {
		md.SetPreempted(false)
		md.SetMaintenanceEvent("NONE")
		ctx := context.Background()
		if err := kit.Poll(ctx, 30*time.Second, unmarked); err != nil {
			t.Errorf("node still marked after the notice was withdrawn: %v", err)
		}
		if err := waitInstalled(ctx); err != nil {
			t.Errorf("termgate did not come back after the test: %v", err)
		}
	})
}

// readRecord reads what the termrecord container of pod wrote.
func readRecord(dir, pod string) (cluster.TermRecord, error) { return cluster.ReadTermRecord(dir, pod) }

// pinnedPod is created with spec.nodeName set: it skips the scheduler, so
// only the webhook's pod-create check can stop it.
func pinnedPod(ns, name, nodeName string) *corev1.Pod {
	p := kit.Pod(ns, name)
	p.Spec.NodeName = nodeName
	p.Spec.Containers[0].Image, p.Spec.Containers[0].ImagePullPolicy = cluster.TermRecordImage, corev1.PullNever
	p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: cluster.RealNodeTaint, Operator: corev1.TolerationOpExists})
	return p
}
