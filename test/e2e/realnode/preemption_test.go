package realnode_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// The shipped agent flags: --preemption-notice=30s --system-grace=10s.
const (
	preemptionNotice = 30 * time.Second
	systemGrace      = 10 * time.Second
)

// TestRealNodePreemptionIsMarkedByTheAgentPodAndRealContainersGetTheirGrace
// plays a Spot preemption on the real node, as installed by users: the
// agent's pod, reading the fake metadata server through hostNetwork with its
// projected token, marks the node; the webhook behind its Service refuses a
// bind and a pinned pod onto it; the kubelet delivers SIGTERM to real
// containers, which exit inside their grace; replacements run on the kwok
// nodes; withdrawing the notice restores the node.
func TestRealNodePreemptionIsMarkedByTheAgentPodAndRealContainersGetTheirGrace(t *testing.T) {
	needRealNode(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	record := t.TempDir()
	const delay, grace = 2 * time.Second, int64(10)
	work := workDeployment(ns, "work", 2, record, delay, grace)
	before := startWorkOnRealNode(t, work)
	restoreAfter(t)

	noticed := time.Now()
	md.SetPreempted(true)
	testenv.Eventually(t, 5*time.Second, "the agent's pod marking the node", marked)
	t.Logf("marked %s after the notice", time.Since(noticed).Round(time.Millisecond))

	// The webhook, reached by the API server through the Service's
	// endpoints (pod IPs on the bridge), refuses both ways onto the node.
	_, err := shared.Client.CoreV1().Pods(ns).Create(ctx, pinnedPod(ns, "pinned", node.Name), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "denied") {
		t.Errorf("pod pinned onto the marked node: err %v, want the webhook's denial", err)
	}
	unscheduled := kit.Pod(ns, "bind-me", kit.Tolerating(corev1.Toleration{Key: cluster.RealNodeTaint, Operator: corev1.TolerationOpExists}))
	unscheduled.Spec.SchedulerName = "nobody" // the test plays the scheduler
	if _, err := shared.Client.CoreV1().Pods(ns).Create(ctx, unscheduled, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod to bind: %v", err)
	}
	err = shared.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: unscheduled.Name},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node.Name},
	}, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "denied") {
		t.Errorf("bind onto the marked node: err %v, want the webhook's denial", err)
	}

	// Regular pods are drained before the system grace, and each container
	// must have had SIGTERM and the time it asked for.
	testenv.Eventually(t, preemptionNotice-systemGrace+time.Duration(grace)*time.Second, "the workload off the real node",
		func(ctx context.Context) (bool, string, error) {
			for _, p := range before {
				r, err := readRecord(record, p.Name)
				if err != nil || r.Exit.IsZero() {
					return false, fmt.Sprintf("%s has not exited (%v)", p.Name, err), nil
				}
			}
			return true, "", nil
		})
	for _, p := range before {
		r, _ := readRecord(record, p.Name)
		switch {
		case r.SIGTERM.IsZero():
			t.Errorf("%s exited without SIGTERM", p.Name)
		case r.Exit.Sub(r.SIGTERM) < delay:
			t.Errorf("%s was killed %s after SIGTERM, before its %s of work", p.Name, r.Exit.Sub(r.SIGTERM), delay)
		case r.Exit.Sub(noticed) > preemptionNotice:
			t.Errorf("%s still ran %s after the notice, past the %s the VM has", p.Name, r.Exit.Sub(noticed), preemptionNotice)
		default:
			t.Logf("%s: SIGTERM +%s after the notice, exited %s later", p.Name,
				r.SIGTERM.Sub(noticed).Round(time.Millisecond), r.Exit.Sub(r.SIGTERM).Round(time.Millisecond))
		}
	}
	testenv.Eventually(t, 30*time.Second, "replacements Ready on the kwok nodes", func(ctx context.Context) (bool, string, error) {
		off := podsOn(ctx, ns, work.Spec.Selector.MatchLabels, node.Name, false)
		return len(off) == int(*work.Spec.Replicas), fmt.Sprintf("%d Ready elsewhere", len(off)), nil
	})

	md.SetPreempted(false)
	testenv.Eventually(t, 10*time.Second, "the node restored once the notice is withdrawn", unmarked)
}
