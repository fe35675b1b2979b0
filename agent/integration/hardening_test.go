package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

// pooledWorkload puts pods on n only (a label of its own): a Deployment of
// regular pods behind a PDB that allows maxUnavailable disruptions, and
// system pods in kube-system. It returns the regular pods' namespace.
func pooledWorkload(t *testing.T, n *node, regular, maxUnavailable, system int) string {
	t.Helper()
	ctx := context.Background()
	pool := map[string]string{"termgate.dev/test-pool": rand.String(6)}
	labelNode(t, n.name, pool)
	ns := testenv.Namespace(t, env.Client)
	c := env.Client
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, kit.Deployment(ns, "api", int32(regular), kit.NodeSelector(pool)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, kit.PDB(ns, "api", maxUnavailable), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.ExpectPodsRunning(t, c, ns, map[string]string{"app": "api"}, regular, 60*time.Second)
	if system > 0 {
		name := "ks-" + rand.String(5)
		if _, err := c.AppsV1().Deployments("kube-system").Create(ctx, kit.Deployment("kube-system", name, int32(system), kit.NodeSelector(pool)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.AppsV1().Deployments("kube-system").Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
		})
		testenv.ExpectPodsRunning(t, c, "kube-system", map[string]string{"app": name}, system, 60*time.Second)
	}
	return ns
}

// evictable counts the pods on the node that the drain must remove: all but
// the agent's own pod (it tolerates every taint).
func (n *node) evictable(ctx context.Context) (left, terminating int, err error) {
	list, err := env.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
	if err != nil {
		return 0, 0, err
	}
	for _, p := range list.Items {
		if p.Namespace == localrun.AgentNamespace {
			continue
		}
		left++
		if p.DeletionTimestamp != nil {
			terminating++
		}
	}
	return left, terminating, nil
}

// The kubelet sends SIGTERM to the agent in the middle of a drain (a
// rollout, or the graceful node shutdown of a Spot VM). The user relies on
// the drain going on: pods behind a PDB that allows nothing and system pods
// are still escalated and gone by the deadline.
func TestSIGTERMDuringDrainStillEmptiesNodeByDeadline(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=16s", "--system-grace=8s", "--system-escalate-before=4s")
	n.start(t)
	pooledWorkload(t, n, 10, 0, 4)

	n.md.SetPreempted(true)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	testenv.Eventually(t, 3*time.Second, "regular wave under way", func(ctx context.Context) (bool, string, error) {
		return n.agentLogHas("drain step started"), "", nil
	})
	if err := n.agent.Terminate(); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	n.expectEvent(t, nodemark.EventShutdownDuringDrain, "covers the deadline", 3*time.Second)
	testenv.Eventually(t, time.Until(m.Deadline), "every evictable pod gone before the deadline", func(ctx context.Context) (bool, string, error) {
		left, term, err := n.evictable(ctx)
		return left == 0, fmt.Sprintf("%d left, %d terminating", left, term), err
	})
	t.Logf("node empty %s before the deadline, %s after SIGTERM", time.Until(m.Deadline).Round(time.Millisecond), time.Since(signalled).Round(time.Millisecond))
	select {
	case <-n.agent.Done():
	case <-time.After(time.Until(m.Deadline) + 3*time.Second):
		t.Fatal("agent still running well after its drain ended")
	}
}

// A short grace after SIGTERM (the kubelet's shutdownGracePeriodCriticalPods
// is often a few seconds): the agent moves the system wave and the
// escalations before its own end, so every pod is on its way out before the
// agent stops, not at a cut-off the agent will not live to see.
func TestSIGTERMWithShortGraceEscalatesAtOnce(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s", "--shutdown-grace=5s")
	n.start(t)
	pooledWorkload(t, n, 10, 0, 4)

	n.md.SetPreempted(true)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	if err := n.agent.Terminate(); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	n.expectEvent(t, nodemark.EventShutdownDuringDrain, "moving the system wave and escalations", 3*time.Second)
	testenv.Eventually(t, 5*time.Second, "every evictable pod deleted within the agent's grace", func(ctx context.Context) (bool, string, error) {
		left, term, err := n.evictable(ctx)
		return left == term, fmt.Sprintf("%d left, %d terminating", left, term), err
	})
	t.Logf("all pods deleted %s after SIGTERM, %s before the deadline", time.Since(signalled).Round(time.Millisecond), time.Until(m.Deadline).Round(time.Millisecond))
	select {
	case <-n.agent.Done():
	case <-time.After(6 * time.Second):
		t.Fatal("agent outlived its 5s grace")
	}
}

func (n *node) agentLogHas(text string) bool {
	return n.agent != nil && strings.Contains(n.agent.Log(), text)
}

// GCE serves an upcoming-maintenance value without a window start (its
// fields are optional), or the key keeps failing. The user relies on a
// preemption being acted on regardless.
func TestBrokenUpcomingMaintenanceDoesNotBlockPreemption(t *testing.T) {
	t.Run("unreadable value", func(t *testing.T) {
		n := prepareNode(t, cluster.NodeSpec{Spot: true})
		if err := n.md.Set(gcefake.KeyUpcomingMaintenance, `{"type":"UNSCHEDULED","maintenance_status":"ONGOING"}`); err != nil {
			t.Fatal(err)
		}
		n.start(t)
		n.expectEvent(t, nodemark.EventMaintenanceUnreadable, "no maintenance window", 3*time.Second)
		n.md.SetPreempted(true)
		n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	})
	t.Run("key failing with 503", func(t *testing.T) {
		n := prepareNode(t, cluster.NodeSpec{Spot: true})
		if err := n.md.InjectFault(gcefake.Fault{Key: string(gcefake.KeyUpcomingMaintenance), Kind: gcefake.Fault503}); err != nil {
			t.Fatal(err)
		}
		n.spec.NoWait = true
		n.start(t)
		testenv.Eventually(t, 5*time.Second, "preempted read", func(context.Context) (bool, string, error) {
			return n.md.RequestCount(gcefake.KeyPreempted) > 0, "", nil
		})
		n.md.SetPreempted(true)
		n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	})
}

// The notice is withdrawn while evictions are being refused and retried.
// The user relies on the node being restored at once and on the agent
// sending no eviction after the withdrawal. Requests already on the wire may
// finish (the API server holds an eviction against a busy budget for up to
// ten seconds), so the API server's audit log, which records when each
// request arrived, is the judge, not the time a pod left.
func TestNoEvictionAfterCancellation(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s")
	n.start(t)
	ns := pooledWorkload(t, n, 20, 1, 0)

	n.md.SetPreempted(true)
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	evictions := func(after time.Time) ([]string, int, error) {
		all, err := env.PodRemovals()
		var late []string
		sent := 0
		for _, r := range all {
			if r.Node != n.name || r.Namespace != ns {
				continue // not this agent's, or not the workload's
			}
			sent++
			if r.Received.After(after) {
				late = append(late, fmt.Sprintf("%s at +%s (%d)", r.Pod, r.Received.Sub(after).Round(time.Millisecond), r.Code))
			}
		}
		return late, sent, err
	}
	testenv.Eventually(t, 5*time.Second, "evictions refused and retried", func(context.Context) (bool, string, error) {
		_, sent, err := evictions(time.Time{})
		return sent > 20, fmt.Sprintf("%d evictions and deletes sent", sent), err
	})
	n.md.SetPreempted(false)
	withdrawn := time.Now()
	n.expectUnmarked(t, time.Second)
	restored := time.Since(withdrawn)
	// Retries of refused evictions come due within the backoff cap (5 s):
	// watch that long for any that should not be sent.
	wait := time.NewTimer(6 * time.Second)
	defer wait.Stop()
	select {
	case <-n.agent.Done():
		t.Fatal("agent exited")
	case <-wait.C:
	}
	// The agent records when it read the withdrawal; it cannot be before the
	// metadata server changed. After that instant nothing may be sent; a
	// request sent just before may reach the API server up to onTheWire
	// later.
	seen := n.withdrawalSeen(t)
	if seen.Before(withdrawn) {
		t.Fatalf("agent claims it saw the withdrawal %s before it happened", withdrawn.Sub(seen))
	}
	const onTheWire = 50 * time.Millisecond
	late, sent, err := evictions(seen.Add(onTheWire))
	if err != nil {
		t.Fatal(err)
	}
	if len(late) > 0 {
		t.Fatalf("evictions sent after the agent saw the withdrawal (%s after the change): %v", seen.Sub(withdrawn), late)
	}
	t.Logf("restored %s after the withdrawal; %d evictions sent before it, none after", restored.Round(time.Millisecond), sent)
}

// withdrawalSeen reads, from the agent's TerminationCancelled event on the
// node, when it read the withdrawal.
func (n *node) withdrawalSeen(t *testing.T) time.Time {
	t.Helper()
	var seen time.Time
	sel := "involvedObject.name=" + n.name + ",reason=" + nodemark.EventTerminationCancelled
	testenv.Eventually(t, 5*time.Second, "TerminationCancelled event on "+n.name, func(ctx context.Context) (bool, string, error) {
		list, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil || len(list.Items) == 0 {
			return false, "none yet", err
		}
		seen, err = time.Parse(time.RFC3339Nano, list.Items[len(list.Items)-1].Annotations[nodemark.EventAnnotationWithdrawalSeen])
		return err == nil, fmt.Sprint(err), nil
	})
	return seen
}

// The agent starts (crash loop, rollout, OOM) while instance/preempted is
// already TRUE. The user relies on a schedule that fits a VM with seconds
// left: the agent assumes the late-start budget, not a fresh 30 s.
func TestAgentStartingAfterThePreemptionAssumesLittleTimeLeft(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s", "--late-start-budget=12s")
	n.md.SetPreempted(true)
	started := time.Now()
	n.start(t)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	if d := m.Deadline.Sub(m.NoticeTime); d != 30*time.Second {
		t.Errorf("deadline %s after the recorded notice, want the 30s notice", d)
	}
	if left := m.Deadline.Sub(started); left > 12*time.Second+2*time.Second || left < 12*time.Second-2*time.Second {
		t.Errorf("deadline %s after the agent started, want about the 12s late-start budget", left.Round(time.Millisecond))
	}
	n.expectEvent(t, nodemark.EventTerminationNotice, "already present when the agent started", 3*time.Second)
}

// A pod stamped with the default drain order at creation gains a toleration
// of the termination taint later (a policy engine, a later webhook). The
// user relies on the agent honouring the live toleration, as the bind gate
// does: the stamp is informational, only an owner's drain-order counts.
func TestTolerationAddedAfterCreationIsHonoured(t *testing.T) {
	n := newNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=10s", "--system-grace=4s", "--system-escalate-before=2s")
	ctx := context.Background()
	ns := testenv.Namespace(t, env.Client)
	pod := kit.Pod(ns, "late-tolerant", kit.OnNode(n.name))
	pod.Annotations = map[string]string{nodemark.AnnotationDefaultDrainOrder: string(nodemark.WaveRegular)}
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	plain := kit.Pod(ns, "plain", kit.OnNode(n.name))
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, plain, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// kwok writes the pod's status meanwhile: retry the update on conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		got, err := env.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		got.Spec.Tolerations = append(got.Spec.Tolerations, corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists})
		_, err = env.Client.CoreV1().Pods(ns).Update(ctx, got, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("add toleration: %v", err)
	}
	n.md.SetPreempted(true)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	testenv.ExpectPodGone(t, env.Client, plain, time.Until(m.Deadline))
	kept, err := env.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil || kept.DeletionTimestamp != nil {
		t.Fatalf("pod that tolerates the taint was drained: %v, deletion %v", err, kept.DeletionTimestamp)
	}
}
