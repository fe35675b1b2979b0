// Package integration runs termgate's agent as users run it, a process with
// its own pod-bound service-account token under the shipped RBAC and Node
// policy, against one local cluster (real kube-apiserver, scheduler and
// controller-manager, kwok nodes, the upstream service controller with
// loopback load balancers) and the clouds' metadata stand-ins. Every test
// here needs that cluster; the agent's unit tests stay beside its code.
package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

var (
	env    *cluster.Cluster
	binary string
)

func TestMain(m *testing.M) {
	// The real service controller runs beside, for the load-balancer tests
	// (lb_test.go).
	opts := cluster.Options{Nodes: cluster.DefaultNodes(2), LoadBalancers: &cluster.LoadBalancerOptions{}}
	os.Exit(testenv.RunWithCluster(m, opts, &env, func(dir string) error {
		var err error
		if binary, err = localrun.Build(context.Background(), dir); err != nil {
			return err
		}
		// Tests about the agent's writes passing the shipped policies
		// mean something only once the API server enforces them.
		return localrun.WaitAgentPoliciesEnforced(context.Background(), env)
	}))
}

// node is one fresh node with its fake metadata server and its agent.
type node struct {
	name  string
	md    *gcefake.Server
	agent *localrun.Agent
	spec  localrun.AgentSpec
}

// newNode adds a node to the shared cluster, starts a fake metadata server
// for it and an agent with the given extra flags. The agent runs as users
// run it: with its own service-account token, bound to a pod of its
// DaemonSet on the node, under the shipped RBAC and Node policy.
func newNode(t *testing.T, spec cluster.NodeSpec, flags ...string) *node {
	t.Helper()
	n := prepareNode(t, spec, flags...)
	n.start(t)
	return n
}

// prepareNode is newNode without starting the agent, for tests that set
// the metadata server up first.
func prepareNode(t *testing.T, spec cluster.NodeSpec, flags ...string) *node {
	t.Helper()
	testenv.NeedCluster(t, env)
	ctx := context.Background()
	if spec.Name == "" {
		spec.Name = "n-" + rand.String(6)
	}
	if spec.Zone == "" {
		spec.Zone, spec.MachineType = "us-central1-a", "e2-standard-4"
	}
	if err := env.AddNodes(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.Background(), spec.Name, metav1.DeleteOptions{})
	})
	fleet := gcefake.NewFleet()
	t.Cleanup(func() { _ = fleet.Close() })
	md, err := fleet.Add(gcefake.Instance{Name: spec.Name, Zone: spec.Zone, MachineType: spec.MachineType, Preemptible: spec.Spot, Accelerator: spec.Accelerator})
	if err != nil {
		t.Fatal(err)
	}
	id, err := localrun.NewAgentIdentity(ctx, localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: env.Dir, Node: spec.Name})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{name: spec.Name, md: md, spec: localrun.AgentSpec{
		Binary: binary, Dir: env.Dir, Kubeconfig: id.Kubeconfig, Node: spec.Name, MetadataHost: md.Host(), Flags: flags, Pod: id.Pod,
	}}
	return n
}

func (n *node) start(t *testing.T) {
	t.Helper()
	a, err := localrun.StartAgent(context.Background(), n.spec)
	if err != nil {
		t.Fatal(err)
	}
	n.agent = a
	t.Cleanup(a.Stop)
}

func (n *node) get(t *testing.T) *corev1.Node {
	t.Helper()
	got, err := env.Client.CoreV1().Nodes().Get(context.Background(), n.name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node %s: %v", n.name, err)
	}
	return got
}

func hasTaint(node *corev1.Node, effect corev1.TaintEffect) bool {
	for _, t := range node.Spec.Taints {
		if t.Key == nodemark.TaintKey && t.Effect == effect {
			return true
		}
	}
	return false
}

func condition(node *corev1.Node) *corev1.NodeCondition {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == nodemark.ConditionType {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// expectMarked waits for the full mark: annotations, taint, condition, and
// the load-balancer exclusion label once (and only once) the node drains.
func (n *node) expectMarked(t *testing.T, reason nodemark.Reason, state nodemark.State, effect corev1.TaintEffect, budget time.Duration) nodemark.Mark {
	t.Helper()
	var m nodemark.Mark
	testenv.Eventually(t, budget, "node "+n.name+" marked "+string(reason), func(ctx context.Context) (bool, string, error) {
		node := n.get(t)
		var ok bool
		var err error
		m, ok, err = nodemark.Read(node.Annotations)
		seen := fmt.Sprintf("mark=%v ok=%v err=%v taints=%v labels=%v cond=%v", m, ok, err, node.Spec.Taints, node.Labels[nodemark.LabelExcludeFromLB], condition(node) != nil)
		_, excluded := node.Labels[nodemark.LabelExcludeFromLB]
		return ok && err == nil && m.Reason == reason && m.State == state && hasTaint(node, effect) &&
			excluded == (state == nodemark.StateTerminating) && condition(node) != nil, seen, nil
	})
	return m
}

// expectUnmarked waits until nothing of termgate's is left on the node.
func (n *node) expectUnmarked(t *testing.T, budget time.Duration) {
	t.Helper()
	testenv.Eventually(t, budget, "node "+n.name+" restored", func(ctx context.Context) (bool, string, error) {
		node := n.get(t)
		_, marked, _ := nodemark.Read(node.Annotations)
		_, label := node.Labels[nodemark.LabelExcludeFromLB]
		_, added := node.Annotations[nodemark.AnnotationLBLabelAdded]
		taint := false
		for _, tt := range node.Spec.Taints {
			taint = taint || tt.Key == nodemark.TaintKey
		}
		return !marked && !label && !added && !taint && condition(node) == nil,
			fmt.Sprintf("marked=%v label=%v taint=%v condition=%v", marked, label, taint, condition(node) != nil), nil
	})
}

func TestPreemptionMarksNodeAndCancellationRestoresIt(t *testing.T) {
	n := newNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s")
	before := n.get(t)
	n.md.SetPreempted(true)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
	if d := m.Deadline.Sub(m.NoticeTime); d != 30*time.Second {
		t.Errorf("deadline is %s after the notice, want 30s", d)
	}
	if m.BootID != before.Status.NodeInfo.BootID {
		t.Errorf("mark records boot ID %q, node has %q", m.BootID, before.Status.NodeInfo.BootID)
	}
	n.md.SetPreempted(false)
	n.expectUnmarked(t, 5*time.Second)
}
