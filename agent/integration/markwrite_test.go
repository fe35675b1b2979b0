package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/testenv"
)

// refuseNodeWrites installs a ValidatingAdmissionPolicy that refuses every
// change of node by a service account (the agent), as a Node policy or
// webhook with failurePolicy Fail refuses when it breaks, and waits until
// the agent's own identity is refused. It is removed when t ends; the
// returned func removes it earlier.
func refuseNodeWrites(t *testing.T, n *node) (lift func()) {
	t.Helper()
	ctx := context.Background()
	name := "refuse-" + n.name
	adm := env.Client.AdmissionregistrationV1()
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"nodes", "nodes/status"}},
				},
			}}},
			MatchConditions: []admissionregistrationv1.MatchCondition{
				{Name: "this-node", Expression: fmt.Sprintf("object.metadata.name == %q", n.name)},
				{Name: "service-accounts-only", Expression: "request.userInfo.username.startsWith('system:serviceaccount:')"},
			},
			Validations: []admissionregistrationv1.Validation{{Expression: "false", Message: "node writes refused by the test"}},
		},
	}
	if _, err := adm.ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	if _, err := adm.ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lifted := false
	lift = func() {
		if lifted {
			return
		}
		lifted = true
		_ = adm.ValidatingAdmissionPolicyBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
		_ = adm.ValidatingAdmissionPolicies().Delete(context.Background(), name, metav1.DeleteOptions{})
	}
	t.Cleanup(lift)
	agent := agentClient(t, n)
	probe := []byte(`{"metadata":{"annotations":{"termgate.dev/state":null}}}`)
	// The API server loads policies from a watch: wait until it applies it.
	testenv.Eventually(t, 10*time.Second, "the refusal in force for the agent", func(ctx context.Context) (bool, string, error) {
		_, err := agent.CoreV1().Nodes().Patch(ctx, n.name, types.StrategicMergePatchType, probe, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil, "agent's dry-run patch still allowed", nil
	})
	return lift
}

// agentClient is the agent's own pod-bound identity on n.
func agentClient(t *testing.T, n *node) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", n.spec.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The Node patch that marks the node is refused (a Node policy or webhook
// with failurePolicy Fail that breaks, or an API server too slow to answer
// in time). The user relies on the drain anyway: the pods are evicted as
// soon as the notice is read, long before the cut-off that would delete
// them, and the mark follows once the write goes through.
func TestDrainStartsWhenTheMarkIsRefused(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s", "--system-grace=10s")
	ns := pooledWorkload(t, n, 10, 10, 0)
	lift := refuseNodeWrites(t, n)
	n.start(t)

	// Without the taint the Deployment's replacements land on the node
	// again; the pods that count are the ones there at the notice.
	before, err := env.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	original := map[types.UID]bool{}
	for _, p := range before.Items {
		original[p.UID] = true
	}
	n.md.SetPreempted(true)
	noticed := time.Now()
	cutoff := noticed.Add(30*time.Second - 10*time.Second)
	testenv.Eventually(t, time.Until(cutoff), "the regular pods evicted before the cut-off, with the mark refused", func(ctx context.Context) (bool, string, error) {
		list, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		running := 0
		for _, p := range list.Items {
			if original[p.UID] && p.DeletionTimestamp == nil {
				running++
			}
		}
		return running == 0, fmt.Sprintf("%d of the %d pods there at the notice still running", running, len(original)), nil
	})
	drained := time.Since(noticed)
	n.expectEvent(t, nodemark.EventMarkRefused, "draining before", 2*time.Second)
	if node := n.get(t); hasTaint(node, corev1.TaintEffectNoSchedule) {
		t.Fatalf("node tainted while its writes were refused: the test refused nothing")
	}
	t.Logf("the %d pods of %s on their way out %s after the notice, with every Node write refused", len(original), ns, drained.Round(time.Millisecond))

	lift()
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
}

// An unmark is two writes: the condition, then the annotations and taint.
// An agent stopped between them (an older agent wrote them the other way
// round) leaves a TerminationImminent condition on a node with no mark;
// the next agent removes it instead of leaving it there for good.
func TestAConditionLeftWithoutAMarkIsRemoved(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Spot: true})
	stale := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":"True","reason":"Preempted","message":"left over"}]}}`, nodemark.ConditionType)
	if _, err := env.Client.CoreV1().Nodes().Patch(context.Background(), n.name, types.StrategicMergePatchType, []byte(stale), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	if condition(n.get(t)) == nil {
		t.Fatal("the stale condition was not written")
	}
	n.start(t)
	testenv.Eventually(t, 5*time.Second, "the stale condition removed", func(ctx context.Context) (bool, string, error) {
		return condition(n.get(t)) == nil, "condition still there", nil
	})
}
