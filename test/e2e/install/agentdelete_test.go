package install

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

func dryRunEvict(t *testing.T, c kubernetes.Interface, ns, name string) error {
	t.Helper()
	return c.PolicyV1().Evictions(ns).Evict(ctx(t), &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Namespace: ns, Name: name},
		DeleteOptions: &metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}},
	})
}

// TestWithTheWebhookDownAStolenAgentTokenCannotDeleteOrEvictOnAnotherNode:
// the holder of a marked node's agent token (root on that node) stops or
// floods every webhook replica. Deletes are confined by the API server
// itself (termgate-agent-pod-deletes): on another node refused, on its own
// node allowed, which is how the drain still finishes. Evictions fail
// closed (agent.termgate.dev, failurePolicy Fail), on every node.
func TestWithTheWebhookDownAStolenAgentTokenCannotDeleteOrEvictOnAnotherNode(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	names := nodeNames(t)
	own, other := names[0], names[1]
	agent := agentClient(t, own)
	createPod(t, kit.Pod(ns, "here", kit.OnNode(own)))
	createPod(t, kit.Pod(ns, "there", kit.OnNode(other)))
	createPod(t, kit.Pod(ns, "escalated", kit.OnNode(own)))
	markNode(t, own, true)
	webhookOutOfThePath(t, ns)
	dryRun := metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}

	err := agent.CoreV1().Pods(ns).Delete(ctx(t), "there", dryRun)
	want := "may delete only pods on the node its token is bound to (" + own + "), not pod " + ns + "/there on node " + other
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("delete on another node with the webhook down: got %v, want the delete policy's refusal %q", err, want)
	}
	if err := agent.CoreV1().Pods(ns).Delete(ctx(t), "here", dryRun); err != nil {
		t.Fatalf("delete on its own node with the webhook down refused: %v", err)
	}
	for _, pod := range []string{"there", "here"} {
		err := dryRunEvict(t, agent, ns, pod)
		if err == nil || !strings.Contains(err.Error(), "agent.termgate.dev") {
			t.Fatalf("eviction of %s with the webhook down: got %v, want the registration's failure (failurePolicy Fail)", pod, err)
		}
	}
	// The drain's escalation for real: the pod on its own node goes.
	if err := agent.CoreV1().Pods(ns).Delete(ctx(t), "escalated", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("escalated delete on its own node refused: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, "the escalated pod gone", func(ctx context.Context) (bool, string, error) {
		_, err := env.Client.CoreV1().Pods(ns).Get(ctx, "escalated", metav1.GetOptions{})
		return apierrors.IsNotFound(err), "still there", nil
	})

	// A token of the agent's account bound to the Node object carries the
	// node name but no pod: refused even on its own node.
	node := getNode(t, env.Client, own)
	nodeBound := agentTokenBoundTo(t, &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: own, UID: node.UID})
	if err := nodeBound.CoreV1().Pods(ns).Delete(ctx(t), "here", dryRun); err == nil || !strings.Contains(err.Error(), "token bound to its own pod") {
		t.Fatalf("delete with a token bound to the Node: got %v, want a refusal asking for a pod-bound token", err)
	}
	// An administrator is not confined.
	if err := env.Client.CoreV1().Pods(ns).Delete(ctx(t), "there", dryRun); err != nil {
		t.Fatalf("admin delete refused: %v", err)
	}
}
