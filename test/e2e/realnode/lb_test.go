package realnode_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/lbtraffic"
	"termgate.dev/termgate/test/testenv"
)

// The shipped load-balancer settings: at most 40% of a 30 s notice, 2 s
// after the evidence.
const (
	lbCap    = 12 * time.Second
	lbMargin = 2 * time.Second
	// lbExitDelay: the backends finish their requests for 1 s after
	// SIGTERM, as a server behind a load balancer should.
	lbExitDelay = time.Second
	lbPort      = 8080
	// lbSyncWindow is above the test cloud's 5 s calls, as a user sizes
	// --lb-sync-window to the cloud's operations.
	lbSyncWindow = 8 * time.Second
)

// lbCase is one Service of type LoadBalancer with two backends on the real
// node (real containers, real pod IPs) and two on kwok nodes (stand-ins the
// test serves).
type lbCase struct {
	ns, name string
	service  string // namespace/name
	standIns *lbtraffic.StandIns
}

func newLBCase(t *testing.T, policy corev1.ServiceExternalTrafficPolicy) *lbCase {
	t.Helper()
	if shared.LoadBalancers() == nil {
		t.Skip("the cluster runs no service controller")
	}
	ctx := context.Background()
	c := &lbCase{ns: testenv.Namespace(t, shared.Client), name: "web-" + strings.ToLower(string(policy))}
	c.service = c.ns + "/" + c.name
	tier := func(p *corev1.Pod) { p.Labels["tier"] = c.name }
	real := kit.Deployment(c.ns, c.name+"-real", 2, cluster.RunsTermRecord(t.TempDir(), lbExitDelay, 10), cluster.ServesHTTP(lbPort), tier,
		kit.NodeSelector(map[string]string{"kubernetes.io/hostname": node.Name}))
	kwok := kit.Deployment(c.ns, c.name+"-kwok", 2, tier, kit.NodeSelector(map[string]string{"type": "kwok"}))
	for _, d := range []*appsv1.Deployment{real, kwok} {
		if _, err := shared.Client.AppsV1().Deployments(c.ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	c.standIns, err = lbtraffic.StartStandIns(ctx, shared.Client, shared.LoadBalancers(), c.ns, "tier="+c.name, lbExitDelay,
		func(p *corev1.Pod) bool { return p.Spec.NodeName == node.Name })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.standIns.Stop)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: c.name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: policy,
			Selector: map[string]string{"tier": c.name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: lbPort, TargetPort: intstr.FromInt32(lbPort)}},
		},
	}
	if _, err := shared.Client.CoreV1().Services(c.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitServing(t)
	return c
}

// waitServing waits until the real node's backends are Ready and the load
// balancer holds the real node and finds it healthy.
func (c *lbCase) waitServing(t *testing.T) {
	t.Helper()
	err := kit.Poll(context.Background(), 90*time.Second, func(ctx context.Context) (bool, string, error) {
		real := podsOn(ctx, c.ns, map[string]string{"app": c.name + "-real"}, node.Name, true)
		st, ok, err := shared.LoadBalancers().Of(ctx, c.service)
		if err != nil {
			return false, err.Error(), nil
		}
		return len(real) == 2 && ok && slices.Contains(st.Healthy, node.Name),
			fmt.Sprintf("%d real backends Ready, hosts %v, healthy %v, errors %v", len(real), st.Hosts, st.Healthy, st.Errors), nil
	})
	if err != nil {
		out, _ := shared.Kubectl(context.Background(), "get", "pods", "-n", c.ns, "-o", "wide")
		t.Fatalf("backends Ready and the real node healthy in %s: %v\n%s\nservice controller log: %s", c.service, err, out, tailFile(shared.LogPath("service-controller"), 30))
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// play preempts the real node with traffic through the load balancer, then
// restores the node and the backends on it.
func (c *lbCase) play(t *testing.T) lbtraffic.Outcome {
	t.Helper()
	ctx := context.Background()
	lbQuiet(t)
	o, err := lbtraffic.PlayPreemption(ctx, lbtraffic.PreemptionSpec{
		Cluster: shared, Service: c.service, Namespace: c.ns, Backends: c.name + "-real-", Node: node.Name,
		Preempt: func() { md.SetPreempted(true) }, Notice: preemptionNotice,
	})
	md.SetPreempted(false)
	if serr := shared.LoadBalancers().SetStopped(ctx, node.Name, false); serr != nil {
		t.Errorf("start the VM again: %v", serr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := kit.Poll(ctx, 30*time.Second, unmarked); err != nil {
		t.Fatalf("node still marked after the notice was withdrawn: %v", err)
	}
	c.waitServing(t)
	return o
}

// close deletes the case's namespace and waits until its pods have left the
// real node, so that the next case's drain waits for its own Service only.
func (c *lbCase) close(t *testing.T) {
	t.Helper()
	if err := shared.Client.CoreV1().Namespaces().Delete(context.Background(), c.ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, c.ns+"'s pods off the real node", func(ctx context.Context) (bool, string, error) {
		pods, err := shared.Client.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		n := 0
		for _, p := range pods.Items {
			if p.Spec.NodeName == node.Name {
				n++
			}
		}
		return n == 0, fmt.Sprintf("%d left", n), nil
	})
	c.standIns.Stop()
}

// lbQuiet waits until no cloud call is under way and none ended within the
// agent's sync window: the drain then sees an idle controller.
func lbQuiet(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, "the cloud idle", func(ctx context.Context) (bool, string, error) {
		return shared.LoadBalancers().Idle(ctx, lbSyncWindow+time.Second)
	})
}

// setAgentFlags sets flags of the installed agent (adding those it lacks)
// and waits for its new pod; the test's cleanup re-applies the install.
func setAgentFlags(t *testing.T, flags ...string) {
	t.Helper()
	ctx := context.Background()
	// The DaemonSet controller writes the status meanwhile.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ds, err := shared.Client.AppsV1().DaemonSets(agentNS).Get(ctx, "termgate-agent", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := &ds.Spec.Template.Spec.Containers[0]
		for _, f := range flags {
			name, _, _ := strings.Cut(f, "=")
			i := slices.IndexFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, name+"=") })
			if i < 0 {
				c.Args = append(c.Args, f)
			} else {
				c.Args[i] = f
			}
		}
		_, err = shared.Client.AppsV1().DaemonSets(agentNS).Update(ctx, ds, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 90*time.Second, "the agent running with "+strings.Join(flags, " "), func(ctx context.Context) (bool, string, error) {
		p := agentPodReady(ctx)
		if p == nil {
			return false, "no Ready agent pod", nil
		}
		for _, f := range flags {
			if !slices.Contains(p.Spec.Containers[0].Args, f) {
				return false, "Ready pod has " + strings.Join(p.Spec.Containers[0].Args, " "), nil
			}
		}
		return true, "", nil
	})
}

// nodeEvent returns the message of the newest event with reason on the real
// node recorded after since.
func nodeEvent(t *testing.T, reason string, since time.Time) string {
	t.Helper()
	var msg string
	err := kit.Poll(context.Background(), 10*time.Second, func(ctx context.Context) (bool, string, error) {
		evs, err := shared.Client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node.Name + ",reason=" + reason})
		if err != nil {
			return false, "", err
		}
		for _, e := range evs.Items {
			if !e.LastTimestamp.Time.Before(since.Truncate(time.Second)) {
				msg = e.Message
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d older events", len(evs.Items)), nil
	})
	if err != nil {
		return ""
	}
	return msg
}

// expectLeftBeforeEvicted checks what the wait owes the user: the node left
// the host set, and the margin passed, before the first backend on it was
// evicted, and the backends were gone inside the deadline.
func expectLeftBeforeEvicted(t *testing.T, o lbtraffic.Outcome) {
	t.Helper()
	first := o.FirstEviction()
	switch {
	case o.Left.IsZero():
		t.Errorf("the node never left the host set: %s", o.Summary())
	case first.IsZero():
		t.Errorf("no backend on the node was evicted: %s", o.Summary())
	case first.Before(o.Left.Add(lbMargin - 300*time.Millisecond)):
		t.Errorf("first backend evicted %s after the node left the host set, before the %s margin: %s", first.Sub(o.Left), lbMargin, o.Summary())
	}
	expectDrainInsideDeadline(t, o)
}

// expectDrainInsideDeadline checks that the agent asked every backend on the
// node to go before the deadline. When they are gone is the kubelet's (on
// this shared machine it can lag seconds); it is reported beside.
func expectDrainInsideDeadline(t *testing.T, o lbtraffic.Outcome) {
	t.Helper()
	if len(o.Evictions) == 0 || o.Evictions[len(o.Evictions)-1].After(o.Deadline) {
		t.Errorf("the agent's last eviction of a backend came after the deadline: %s", o.Summary())
	}
}

// TestRealNodeLoadBalancerPreemptionLosesNoRequest: a client sends 50
// requests a second through a load balancer of the real service controller
// while the real node, which runs two of the four backends, is preempted.
// With the wait (the shipped manifests) not one request fails, for
// externalTrafficPolicy Local and Cluster; without it (--lb-wait=false,
// what the peers do) the failures are counted beside it. With a cloud
// slower than the cap, the drain goes on at the cap and says which Service.
func TestRealNodeLoadBalancerPreemptionLosesNoRequest(t *testing.T) {
	needRealNode(t)
	restoreAfter(t)
	t.Cleanup(func() {
		if err := applyOverlay(context.Background()); err != nil {
			t.Errorf("re-apply the install: %v", err)
		}
	})
	type result struct {
		name string
		o    lbtraffic.Outcome
	}
	var results []result
	defer func() {
		for _, r := range results {
			t.Logf("%-24s %s", r.name, r.o.Summary())
		}
	}()
	setAgentFlags(t, "--lb-sync-window="+lbSyncWindow.String())
	// One Service at a time: the drain waits for every load balancer the
	// node's pods back.
	local := newLBCase(t, corev1.ServiceExternalTrafficPolicyLocal)
	o := local.play(t)
	results = append(results, result{local.name + " wait on", o})
	expectNoLoss(t, local, o)

	// A cloud slower than the cap: the backends go at the cap, and the
	// event names the Service.
	slow := 25 * time.Second
	if err := shared.LoadBalancers().SetFault(context.Background(), local.service, cluster.LBFault{OperationTime: slow}); err != nil {
		t.Fatal(err)
	}
	o = local.play(t)
	if err := shared.LoadBalancers().ClearFault(context.Background(), local.service); err != nil {
		t.Fatal(err)
	}
	results = append(results, result{local.name + " wait capped", o})
	if d := o.FirstEviction().Sub(o.Notice); d < lbCap-300*time.Millisecond || d > lbCap+2*time.Second {
		t.Errorf("slow cloud: first backend evicted at +%s, want at the %s cap", d, lbCap)
	}
	expectDrainInsideDeadline(t, o)
	if msg := nodeEvent(t, nodemark.EventLoadBalancerWaitCapped, o.Notice); !strings.Contains(msg, local.service) {
		t.Errorf("LoadBalancerWaitCapped %q does not name %s", msg, local.service)
	}
	local.close(t)

	clusterPolicy := newLBCase(t, corev1.ServiceExternalTrafficPolicyCluster)
	o = clusterPolicy.play(t)
	results = append(results, result{clusterPolicy.name + " wait on", o})
	expectNoLoss(t, clusterPolicy, o)
	clusterPolicy.close(t)

	// Today's behaviour, and the peers': evict at once. Local sends the
	// node's traffic to its own backends only: once they exit, until the
	// node leaves the host set, it fails. (Cluster without the wait loses
	// nothing here, the other hosts forwarding; asserting nothing, that
	// case is the docs' figure, not this test's.)
	setAgentFlags(t, "--lb-wait=false")
	off := newLBCase(t, corev1.ServiceExternalTrafficPolicyLocal)
	o = off.play(t)
	results = append(results, result{off.name + " wait off", o})
	if o.Failed == 0 {
		t.Errorf("Local without the wait lost no request: the local load balancer does not model the problem: %s", o.Summary())
	}
	off.close(t)
}

func expectNoLoss(t *testing.T, c *lbCase, o lbtraffic.Outcome) {
	t.Helper()
	if o.Failed != 0 {
		t.Errorf("%s with the wait: %d of %d requests failed: %s", c.name, o.Failed, o.Total, o.Summary())
	}
	expectLeftBeforeEvicted(t, o)
	if msg := nodeEvent(t, nodemark.EventLoadBalancersDrained, o.Notice); !strings.Contains(msg, c.service) {
		t.Errorf("LoadBalancersDrained %q does not name %s", msg, c.service)
	}
}
