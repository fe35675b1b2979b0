package realnode_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// TestRealNodeWebhookPodsKilledSchedulingGoesOnAndTheWebhookComesBack kills
// every webhook pod at once: pods keep being scheduled and bound meanwhile
// (every pod path fails open), and the Deployment's new pods serve again
// with the certificate kept in the cluster, refusing a pod pinned onto a
// marked node.
func TestRealNodeWebhookPodsKilledSchedulingGoesOnAndTheWebhookComesBack(t *testing.T) {
	needRealNode(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	t.Cleanup(func() {
		if err := waitInstalled(context.Background()); err != nil {
			t.Errorf("webhook not back after the test: %v", err)
		}
	})

	pods, err := shared.Client.CoreV1().Pods(webhookNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=termgate-webhook"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("list webhook pods: %d, %v", len(pods.Items), err)
	}
	// The API server's count of calls to termgate that failed open: only a
	// rise proves the pods below went through while no webhook answered.
	// Without it this test would pass with failurePolicy Fail too, since
	// the scheduler retries a refused bind until the webhook is back.
	failOpenBefore, err := kit.FailOpenCount(ctx, shared.Client)
	if err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	for _, p := range pods.Items {
		// A pod listed may be gone by the time it is killed (a replica the
		// Deployment replaced after an earlier test): it serves no one
		// either way, which is all the kill is for.
		err := shared.Client.CoreV1().Pods(webhookNS).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("kill webhook pod %s: %v", p.Name, err)
		}
	}
	killed := time.Now()

	// Three binds and creations through the admission chain while no
	// webhook pod serves: each call fails open within its 2 s timeout.
	// They are sent right after the kill: a force-deleted pod leaves the
	// Service's endpoints at once, while its replacements need a container
	// start, their caches and a readiness probe (period 2 s) before they
	// serve, so the creations and binds meet no webhook.
	d := kit.Deployment(ns, "meanwhile", 3)
	if _, err := shared.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, "pods scheduled and Ready while the webhook is down", func(ctx context.Context) (bool, string, error) {
		ready := podsOn(ctx, ns, d.Spec.Selector.MatchLabels, node.Name, false)
		return len(ready) == 3, fmt.Sprintf("%d Ready", len(ready)), nil
	})
	t.Logf("3 pods scheduled and Ready %s after every webhook pod was killed", time.Since(killed).Round(time.Millisecond))
	failOpenAfter, err := kit.FailOpenCount(ctx, shared.Client)
	if err != nil {
		t.Fatal(err)
	}
	if failOpenAfter <= failOpenBefore {
		t.Errorf("the API server counted no call to termgate's webhooks failing open (%d before the kill, %d after): "+
			"the pods were admitted and bound by a webhook that answered, not while it was down", failOpenBefore, failOpenAfter)
	} else {
		t.Logf("%d calls to termgate's webhooks failed open while it was down", failOpenAfter-failOpenBefore)
	}

	if err := waitInstalled(ctx); err != nil {
		t.Fatalf("webhook did not come back: %v", err)
	}
	t.Logf("webhook Available again %s after it was killed", time.Since(killed).Round(time.Millisecond))

	// Back with its certificate: a kwok node marked terminating refuses a
	// pinned pod (the API server verifies the serving certificate against
	// the injected CA bundle, else the call fails open and the pod lands).
	kwokNode := testenv.OtherNode(t, shared.Client, node.Name)
	testenv.MarkByHand(t, shared.Client, kwokNode)
	testenv.Eventually(t, 10*time.Second, "a pinned pod onto the marked kwok node refused", func(ctx context.Context) (bool, string, error) {
		p := kit.Pod(ns, "pinned-"+fmt.Sprint(time.Now().UnixNano()), kit.OnNode(kwokNode))
		_, err := shared.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err == nil {
			_ = shared.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})
			return false, "admitted", nil
		}
		return strings.Contains(err.Error(), "denied"), err.Error(), nil
	})
}
