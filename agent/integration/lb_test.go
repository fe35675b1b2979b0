package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// The agent's shipped load-balancer settings: a Spot notice waits at most
// 40% of 30 s for the load balancers, and 2 s after the evidence.
const (
	lbCap    = 12 * time.Second
	lbMargin = drain.DefaultLBMargin
	// slack covers the audit log's and the cloud's clocks (the same
	// machine) and the agent's watch latency.
	slack = 500 * time.Millisecond
	// lbSyncWindow is the agents' --lb-sync-window here.
	lbSyncWindow = 5 * time.Second
)

// lbBackends runs two backends of the Service tier=<name> on the drained
// node and one on a node that stays, and returns the namespace.
func lbBackends(t *testing.T, n *node, name string) string {
	t.Helper()
	ctx := context.Background()
	ns := testenv.Namespace(t, env.Client)
	tier := func(p *corev1.Pod) { p.Labels["tier"] = name; p.Spec.TerminationGracePeriodSeconds = ptrTo[int64](2) }
	here := kit.Deployment(ns, name+"-here", 2, tier, kit.NodeSelector(map[string]string{"kubernetes.io/hostname": n.name}))
	there := kit.Deployment(ns, name+"-there", 1, tier, kit.NodeSelector(map[string]string{"kubernetes.io/hostname": testenv.OtherNode(t, env.Client, n.name)}))
	if _, err := env.Client.AppsV1().Deployments(ns).Create(ctx, here, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.AppsV1().Deployments(ns).Create(ctx, there, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.ExpectPodsRunning(t, env.Client, ns, map[string]string{"app": name + "-here"}, 2, 30*time.Second)
	testenv.ExpectPodsRunning(t, env.Client, ns, map[string]string{"app": name + "-there"}, 1, 30*time.Second)
	return ns
}

func ptrTo[T any](v T) *T { return &v }

// lbService creates a Service of type LoadBalancer over tier=name and, if
// wait, waits until its load balancer holds the node.
func lbService(t *testing.T, ns, name string, policy corev1.ServiceExternalTrafficPolicy, holding string, wait bool) string {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: policy,
			Selector: map[string]string{"tier": strings.TrimSuffix(name, "-internal")},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	key := ns + "/" + name
	if wait {
		// One cloud call (2 s) and the controller's sync.
		testenv.Eventually(t, 20*time.Second, "the load balancer of "+key+" holding "+holding, func(ctx context.Context) (bool, string, error) {
			st, ok, err := env.LoadBalancers().Of(ctx, key)
			return ok && contains(st.Hosts, holding), fmt.Sprintf("hosts %v", st.Hosts), err
		})
	}
	return key
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// cloudQuiet waits until no cloud call is under way and none ended within
// the agents' sync window, so that the drain sees an idle controller and
// takes the first update after its mark (the other case has unit tests).
func cloudQuiet(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, "the cloud idle", func(ctx context.Context) (bool, string, error) {
		return env.LoadBalancers().Idle(ctx, lbSyncWindow+time.Second)
	})
}

// firstEviction returns when the API server received the agent's first
// eviction or delete of a pod whose name starts with prefix.
func firstEviction(t *testing.T, ns, prefix string) time.Time {
	t.Helper()
	removals, err := env.PodRemovals()
	if err != nil {
		t.Fatal(err)
	}
	var first time.Time
	for _, r := range removals {
		if r.Namespace == ns && strings.HasPrefix(r.Pod, prefix) && r.Node != "" && (first.IsZero() || r.Received.Before(first)) {
			first = r.Received
		}
	}
	if first.IsZero() {
		t.Fatalf("no eviction of %s/%s* by the agent in the audit log", ns, prefix)
	}
	return first
}

// drained waits until the pods of app are gone from the node.
func (n *node) drained(t *testing.T, ns, app string, budget time.Duration) {
	t.Helper()
	testenv.Eventually(t, budget, app+" off "+n.name, func(ctx context.Context) (bool, string, error) {
		pods, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, "", err
		}
		left := 0
		for _, p := range pods.Items {
			if p.Spec.NodeName == n.name {
				left++
			}
		}
		return left == 0, fmt.Sprintf("%d left", left), nil
	})
}

// eventOnNode returns the message of the node's first event with reason.
func (n *node) eventOnNode(t *testing.T, reason string, budget time.Duration) string {
	t.Helper()
	var msg string
	testenv.Eventually(t, budget, reason+" on "+n.name, func(ctx context.Context) (bool, string, error) {
		evs, err := env.Client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + n.name + ",reason=" + reason})
		if err != nil || len(evs.Items) == 0 {
			return false, "none yet", err
		}
		msg = evs.Items[0].Message
		return true, "", nil
	})
	return msg
}

// setFault makes the Service's cloud calls slow or failing until the test
// ends.
func setFault(t *testing.T, svc string, f cluster.LBFault) {
	t.Helper()
	if err := env.LoadBalancers().SetFault(context.Background(), svc, f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.LoadBalancers().ClearFault(context.Background(), svc) })
}

func newLBNode(t *testing.T) *node {
	t.Helper()
	if env != nil && env.LoadBalancers() == nil {
		t.Skip("the cluster runs no service controller")
	}
	// The test cloud's calls take 2 s: a 5 s window covers them.
	return newNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s", "--system-grace=10s", "--lb-sync-window="+lbSyncWindow.String())
}

// The node leaves the load balancer's host set (the real service
// controller's update) before the first backend on it is evicted, and the
// drain still ends inside the deadline.
func TestLBBackendsGoOnlyAfterTheNodeLeftTheHostSet(t *testing.T) {
	for _, policy := range []corev1.ServiceExternalTrafficPolicy{corev1.ServiceExternalTrafficPolicyLocal, corev1.ServiceExternalTrafficPolicyCluster} {
		t.Run(string(policy), func(t *testing.T) {
			n := newLBNode(t)
			ns := lbBackends(t, n, "web")
			svc := lbService(t, ns, "web", policy, n.name, true)
			cloudQuiet(t)
			notice := time.Now()
			n.md.SetPreempted(true)
			m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
			n.drained(t, ns, "web-here", 30*time.Second)
			st, _, err := env.LoadBalancers().Of(context.Background(), svc)
			if err != nil {
				t.Fatal(err)
			}
			left := st.LeftAt(n.name, notice)
			evicted := firstEviction(t, ns, "web-here-")
			switch {
			case left.IsZero():
				t.Fatalf("%s never left the host set of %s: %+v", n.name, svc, st.History)
			case evicted.Before(left.Add(lbMargin - slack)):
				t.Errorf("first backend evicted %s after the notice, %s after the node left the host set; want at least the %s margin",
					evicted.Sub(notice), evicted.Sub(left), lbMargin)
			case evicted.After(m.Deadline):
				t.Errorf("first backend evicted after the deadline")
			default:
				t.Logf("node left the host set %s after the notice; first backend evicted %s later", left.Sub(notice).Round(time.Millisecond), evicted.Sub(left).Round(time.Millisecond))
			}
			if msg := n.eventOnNode(t, nodemark.EventLoadBalancersDrained, 5*time.Second); !strings.Contains(msg, svc) {
				t.Errorf("LoadBalancersDrained says %q, want it to name %s", msg, svc)
			}
			if done := n.eventOnNode(t, nodemark.EventDrainCompleted, 30*time.Second); done == "" {
				t.Error("no DrainCompleted")
			}
		})
	}
}

// A Service created during the drain: its backends wait for its own load
// balancer, which the controller creates without the labelled node.
func TestLBServiceCreatedDuringTheDrainIsWaitedFor(t *testing.T) {
	n := newLBNode(t)
	ns := lbBackends(t, n, "late")
	first := lbService(t, ns, "late", corev1.ServiceExternalTrafficPolicyLocal, n.name, true)
	second := ns + "/late-internal"
	// The new Service's load balancer takes 6 s to create.
	setFault(t, second, cluster.LBFault{OperationTime: 6 * time.Second})
	cloudQuiet(t)
	n.md.SetPreempted(true)
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
	time.Sleep(500 * time.Millisecond) // the drain holds the backends: the first Service's update takes 2 s
	lbService(t, ns, "late-internal", corev1.ServiceExternalTrafficPolicyLocal, "", false)
	n.drained(t, ns, "late-here", 30*time.Second)
	st, ok, err := env.LoadBalancers().Of(context.Background(), second)
	if err != nil || !ok {
		t.Fatalf("no load balancer for %s: %v", second, err)
	}
	if contains(st.Hosts, n.name) {
		t.Errorf("the load balancer created during the drain holds the labelled node: %v", st.Hosts)
	}
	created := st.History[0].At
	if evicted := firstEviction(t, ns, "late-here-"); evicted.Before(created.Add(lbMargin - slack)) {
		t.Errorf("first backend evicted %s before the new load balancer existed (+margin)", created.Add(lbMargin).Sub(evicted))
	}
	msg := n.eventOnNode(t, nodemark.EventLoadBalancersDrained, 5*time.Second)
	if !strings.Contains(msg, first) || !strings.Contains(msg, second) {
		t.Errorf("LoadBalancersDrained says %q, want both %s and %s", msg, first, second)
	}
}

// A load balancer that fails to update: the wait ends at the cap and the
// event names the Service with the controller's error.
func TestLBWaitReportsALoadBalancerThatFailsToUpdate(t *testing.T) {
	n := newLBNode(t)
	ns := lbBackends(t, n, "broken")
	svc := lbService(t, ns, "broken", corev1.ServiceExternalTrafficPolicyLocal, n.name, true)
	setFault(t, svc, cluster.LBFault{Fail: -1, Message: "quota exceeded"})
	cloudQuiet(t)
	n.md.SetPreempted(true)
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
	msg := n.eventOnNode(t, nodemark.EventLoadBalancerWaitCapped, 20*time.Second)
	if !strings.Contains(msg, svc) || !strings.Contains(msg, "quota exceeded") {
		t.Errorf("LoadBalancerWaitCapped says %q, want %s and the cloud's error", msg, svc)
	}
	n.drained(t, ns, "broken-here", 25*time.Second)
}

// A slow cloud (its update takes longer than the cap): the drain goes on at
// the cap and the event names the Service.
func TestLBWaitIsCappedWhenTheCloudIsSlow(t *testing.T) {
	n := newLBNode(t)
	ns := lbBackends(t, n, "slow")
	svc := lbService(t, ns, "slow", corev1.ServiceExternalTrafficPolicyLocal, n.name, true)
	setFault(t, svc, cluster.LBFault{OperationTime: 25 * time.Second})
	cloudQuiet(t)
	notice := time.Now()
	n.md.SetPreempted(true)
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
	msg := n.eventOnNode(t, nodemark.EventLoadBalancerWaitCapped, 20*time.Second)
	if !strings.Contains(msg, svc) {
		t.Errorf("LoadBalancerWaitCapped says %q, want it to name %s", msg, svc)
	}
	n.drained(t, ns, "slow-here", 25*time.Second)
	if d := firstEviction(t, ns, "slow-here-").Sub(notice); d < lbCap-slack || d > lbCap+2*time.Second {
		t.Errorf("first backend evicted %s after the notice, want at the %s cap", d, lbCap)
	}
}
