package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// tenant puts n pods of a Deployment on n only, in a namespace of its own,
// with a PodDisruptionBudget allowing maxUnavailable disruptions if
// maxUnavailable is not negative. It returns the namespace.
func tenant(t *testing.T, n *node, pool map[string]string, pods, maxUnavailable int) string {
	t.Helper()
	ctx := context.Background()
	ns := testenv.Namespace(t, env.Client)
	if _, err := env.Client.AppsV1().Deployments(ns).Create(ctx, kit.Deployment(ns, "app", int32(pods), kit.NodeSelector(pool)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if maxUnavailable >= 0 {
		if _, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, kit.PDB(ns, "app", maxUnavailable), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.ExpectPodsRunning(t, env.Client, ns, map[string]string{"app": "app"}, pods, 60*time.Second)
	return ns
}

// leftIn counts the pods of ns on n that are not being deleted.
func (n *node) leftIn(ctx context.Context, ns string) (int, error) {
	list, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
	if err != nil {
		return 0, err
	}
	left := 0
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			left++
		}
	}
	return left, nil
}

// Two tenants share a Spot node. One has 60 pods under a budget that
// allows every disruption: its evictions conflict with each other on the
// budget's status, and the API server holds each one for hundreds of
// milliseconds to seconds while it retries. The other tenant's 40 pods
// must not wait behind them: the eviction slots are shared between
// namespaces, so its pods are all on their way out long before the busy
// tenant's (before the slots were shared, 3.0 s after the notice).
func TestOneNamespaceCannotHoldUpAnothersEvictions(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s")
	pool := map[string]string{"termgate.dev/test-pool": rand.String(6)}
	labelNode(t, n.name, pool)
	busy := tenant(t, n, pool, 60, 60)
	quiet := tenant(t, n, pool, 40, -1)
	n.start(t)

	n.md.SetPreempted(true)
	noticed := time.Now()
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
	var quietDone, busyDone time.Duration
	testenv.Eventually(t, time.Until(m.Deadline), "both tenants' pods on their way out", func(ctx context.Context) (bool, string, error) {
		q, err := n.leftIn(ctx, quiet)
		if err != nil {
			return false, "", err
		}
		b, err := n.leftIn(ctx, busy)
		if err != nil {
			return false, "", err
		}
		if q == 0 && quietDone == 0 {
			quietDone = time.Since(noticed)
		}
		if b == 0 && busyDone == 0 {
			busyDone = time.Since(noticed)
		}
		return q == 0 && b == 0, fmt.Sprintf("quiet tenant %d left, busy tenant %d left", q, b), nil
	})
	t.Logf("after the notice: the quiet tenant's 40 pods evicted in %v, the busy tenant's 60 in %v",
		quietDone.Round(time.Millisecond), busyDone.Round(time.Millisecond))
	if quietDone > busyDone/2 {
		t.Fatalf("the quiet tenant's pods took %v, more than half of the busy tenant's %v: it waited behind the other tenant's evictions",
			quietDone.Round(time.Millisecond), busyDone.Round(time.Millisecond))
	}
}
