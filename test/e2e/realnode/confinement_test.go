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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// TestRealNodeAgentTokenIsConfinedToItsOwnNode uses the token the kubelet
// projected into the agent's pod (read from the pod's volume on the node).
// The node is not draining: the token may evict nothing, not even on its
// own node (the webhook answers from the node's own state and fails
// closed); it may delete a pod on its own node (the drain's escalation)
// and none on another (the delete policy, in the API server).
func TestRealNodeAgentTokenIsConfinedToItsOwnNode(t *testing.T) {
	needRealNode(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	agent := agentPodReady(ctx)
	if agent == nil {
		t.Fatal("no Ready agent pod on the real node")
	}
	token := projectedToken(t, agent)
	cfg := &rest.Config{
		Host:            shared.Config.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: shared.Config.TLSClientConfig.CAFile},
	}
	asAgent, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	record := t.TempDir()
	own := startWorkOnRealNode(t, workDeployment(ns, "own", 1, record, 0, 5))[0]
	otherNode := testenv.OtherNode(t, shared.Client, node.Name)
	other, err := shared.Client.CoreV1().Pods(ns).Create(ctx, kit.Pod(ns, "elsewhere", kit.OnNode(otherNode)), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod on a kwok node: %v", err)
	}

	// Only the confinement's own refusal counts: any other error (RBAC, a
	// token the API server rejects, a PDB) would refuse for another reason
	// and prove nothing about the confinement. Each eviction carries the
	// pod's UID, as the agent's do.
	evict := func(p *corev1.Pod) error {
		return asAgent.CoreV1().Pods(ns).EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.Name},
			DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}}})
	}
	for _, p := range []*corev1.Pod{other, &own} {
		err := evict(p)
		switch {
		case err == nil:
			t.Errorf("the agent's own token evicted %s on node %s while its node does not drain", p.Name, p.Spec.NodeName)
		case !strings.Contains(err.Error(), "node "+node.Name+" is not marked terminating"):
			t.Errorf("eviction of %s: got %v, want the confinement's refusal (node %s not draining)", p.Name, err, node.Name)
		default:
			t.Logf("eviction of %s refused: %v", p.Name, err)
		}
	}
	// Deletes are confined by the API server itself (the shipped policy
	// termgate-agent-pod-deletes), from the node the kubelet bound the
	// token to.
	dryRun := metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}
	err = asAgent.CoreV1().Pods(ns).Delete(ctx, other.Name, dryRun)
	if err == nil || !strings.Contains(err.Error(), "may delete only pods on the node its token is bound to ("+node.Name+")") {
		t.Errorf("delete on another node: got %v, want the delete policy's refusal", err)
	}
	if err := asAgent.CoreV1().Pods(ns).Delete(ctx, own.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("the agent's token could not delete a pod on its own node: %v", err)
	}
	testenv.ExpectPodGone(t, shared.Client, &own, 15*time.Second)
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
