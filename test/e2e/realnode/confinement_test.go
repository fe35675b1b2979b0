package realnode_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// TestRealNodeAgentTokenIsConfinedToItsOwnNode uses the token the kubelet
// projected into the agent's pod (read from the pod's volume on the node):
// while its node is not marked it may evict nothing, not even a pod on its
// own node (the webhook answers from the node's state and fails closed),
// and delete nothing on another node (the delete policy, in the API
// server); once the node is marked it may evict and delete a pod on that
// node and still evict none on another node.
func TestRealNodeAgentTokenIsConfinedToItsOwnNode(t *testing.T) {
	needRealNode(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	agent := agentPodReady(ctx)
	if agent == nil {
		t.Fatal("no Ready agent pod on the real node")
	}
	asAgent := agentClient(t, projectedToken(t, agent))

	record := t.TempDir()
	work := workDeployment(ns, "own", 1, record, 0, 5)
	// The budget keeps the agent's own drain off the pod, so the test's
	// eviction is the one that reaches it; the API server's 429 for the
	// budget comes after admission and so proves the webhook allowed it.
	budget := kit.PDB(ns, work.Name, 0)
	if _, err := shared.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, budget, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create budget: %v", err)
	}
	own := startWorkOnRealNode(t, work)[0]
	otherNode := testenv.OtherNode(t, shared.Client, node.Name)
	other, err := shared.Client.CoreV1().Pods(ns).Create(ctx, kit.Pod(ns, "elsewhere", kit.OnNode(otherNode)), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod on a kwok node: %v", err)
	}

	// Only the confinement's own refusal counts: any other error (RBAC, a
	// token the API server rejects) would refuse for another reason and
	// prove nothing about the confinement.
	err = evictWithUID(ctx, asAgent, &own)
	expectRefusal(t, err, "node "+node.Name+" is not marked terminating", "eviction on the agent's own, unmarked node")
	dryRun := metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}
	err = asAgent.CoreV1().Pods(ns).Delete(ctx, other.Name, dryRun)
	expectRefusal(t, err, "may delete only pods on the node its token is bound to ("+node.Name+")", "delete on another node")

	restoreAfter(t)
	md.SetPreempted(true)
	testenv.Eventually(t, 5*time.Second, "the agent's pod marking the node", marked)

	err = evictWithUID(ctx, asAgent, other)
	expectRefusal(t, err, "does not run on that node", "eviction on another node")
	err = evictWithUID(ctx, asAgent, &own)
	if !apierrors.IsTooManyRequests(err) || !strings.Contains(err.Error(), "disruption budget") {
		t.Fatalf("eviction on the agent's own, marked node: got %v, want the API server's budget refusal after the webhook allowed it", err)
	}
	// The drain's escalation deletes; deletes are confined by the API server
	// itself (the shipped policy termgate-agent-pod-deletes), from the node
	// the kubelet bound the token to.
	if err := asAgent.CoreV1().Pods(ns).Delete(ctx, own.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("the agent's token could not delete a pod on its own node: %v", err)
	}
	testenv.ExpectPodGone(t, shared.Client, &own, 15*time.Second)
}

// agentClient talks to the API server as the agent's pod does.
func agentClient(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{
		Host:            shared.Config.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: shared.Config.TLSClientConfig.CAFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// evictWithUID evicts p as the agent does: with its UID as precondition.
func evictWithUID(ctx context.Context, c kubernetes.Interface, p *corev1.Pod) error {
	return c.CoreV1().Pods(p.Namespace).EvictV1(ctx, &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: metav1.NewUIDPreconditions(string(p.UID))},
	})
}

func expectRefusal(t *testing.T, err error, want, what string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: the agent's token was allowed", what)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: got %v, want the confinement's refusal (%q)", what, err, want)
	default:
		t.Logf("%s refused: %v", what, err)
	}
}

// projectedToken reads the service-account token the kubelet wrote into the
// pod's projected volume.
func projectedToken(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	pattern := filepath.Join(node.Dir, "kubelet", "pods", string(p.UID), "volumes", "kubernetes.io~projected", "*", "token")
	files, _ := filepath.Glob(pattern)
	if len(files) != 1 {
		t.Fatalf("projected token of %s: %d files match %s", p.Name, len(files), pattern)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
