package scenario

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/lbtraffic"
	"termgate.dev/termgate/test/localrun"
)

// Kinds of the load-balancer scenario's timeline.
const (
	KindLBLeft = Kind("lb-left") // the node left the load balancer's host set
)

// LBRun is one preemption played with traffic through a load balancer.
type LBRun struct {
	Name string `json:"name"`
	// Wait: the agent waited for the load balancers (--lb-wait).
	Wait          bool   `json:"wait"`
	Service       string `json:"service"`
	Failed        int    `json:"failed"`
	Total         int    `json:"total"`
	LeftMs        *int64 `json:"left_ms"`
	FirstEviction *int64 `json:"first_eviction_ms"`
	DrainedMs     *int64 `json:"drained_ms"`
	DeadlineMs    int64  `json:"deadline_ms"`
	// EvictionsMs are the agent's evictions of backends on the node.
	EvictionsMs []int64 `json:"evictions_ms"`
	// Buckets count requests per 100 ms, by time since the notice.
	Buckets []LBBucket `json:"buckets"`
}

// LBBucket is the requests sent in 100 ms.
type LBBucket struct {
	Ms     int64 `json:"ms"`
	OK     int   `json:"ok"`
	Failed int   `json:"failed"`
}

const (
	lbApp       = "shop"
	lbPort      = 8080
	lbExitDelay = time.Second
)

// playLBPreemption: a Spot node runs two of the four backends of a Service
// of type LoadBalancer (externalTrafficPolicy Local) behind the real service
// controller; a client sends 50 requests a second through the load balancer.
// The node is preempted twice: with the agents as shipped, which wait for
// the node to leave the load balancer before evicting its backends, and
// with --lb-wait=false, which evicts at once as the other tools do.
func playLBPreemption(r *run) error {
	lbs := r.env.Cluster.LoadBalancers()
	if lbs == nil {
		r.check("the cluster runs the service controller and its load balancers", false, "started without cluster.Options.LoadBalancers")
		return nil
	}
	if err := r.expectUnmarkedAtStart(); err != nil {
		return err
	}
	ns := r.env.Workload.Namespace
	other := firstNode(r.env.Nodes, NodeOnDemand)
	if err := deployLBBackends(r.ctx, r, ns, other); err != nil {
		return err
	}
	defer r.deleteLBBackends(ns)
	standIns, err := lbtraffic.StartStandIns(r.ctx, r.env.Client, lbs, ns, "tier="+lbApp, lbExitDelay, nil)
	if err != nil {
		return err
	}
	defer standIns.Stop()
	service := ns + "/" + lbApp
	if err := r.awaitLBServing(service); err != nil {
		return err
	}

	on, err := r.lbRun(service, ns, true, func(give func()) {
		r.announce("instance/preempted = TRUE on "+r.node+" (agent waits for the load balancers)", give)
		r.expectMarked(nodemark.ReasonPreempted, preemptionNotice)
	})
	if err != nil {
		return err
	}
	r.check("with the wait: no request failed", on.Failed == 0, "%d of %d failed", on.Failed, on.Total)
	left, first := on.LeftMs, on.FirstEviction
	r.check("the node left the host set before the first backend on it was evicted",
		left != nil && first != nil && *left < *first, "left at +%s, first eviction at +%s", msText(left), msText(first))
	r.check("the backends were gone inside the deadline", on.DrainedMs != nil && *on.DrainedMs < on.DeadlineMs,
		"gone at +%s, deadline +%s", msText(on.DrainedMs), fmtDur(time.Duration(on.DeadlineMs)*time.Millisecond))
	if err := r.reset(); err != nil {
		return err
	}
	if err := r.awaitLBServing(service); err != nil {
		return err
	}

	restore, err := r.env.restartAgent(r.ctx, r.node, "--lb-wait=false")
	if err != nil {
		return err
	}
	off, err := r.lbRun(service, ns, false, func(give func()) {
		r.tl.Add(KindNotice, r.node, "instance/preempted = TRUE again on "+r.node+", agent restarted with --lb-wait=false")
		give()
	})
	restoreErr := restore()
	if err != nil {
		return err
	}
	r.check("without the wait (what the other tools do): requests fail, counted", off.Failed > 0,
		"%d of %d failed; node left the host set at +%s, first eviction at +%s",
		off.Failed, off.Total, msText(off.LeftMs), msText(off.FirstEviction))
	r.res.LB = []LBRun{on, off}
	return restoreErr
}

// lbRun plays one preemption; announce gives the notice.
func (r *run) lbRun(service, ns string, wait bool, announce func(give func())) (LBRun, error) {
	o, err := lbtraffic.PlayPreemption(r.ctx, lbtraffic.PreemptionSpec{
		Cluster: r.env.Cluster, Service: service, Namespace: ns, Backends: lbApp + "-here-", Node: r.node,
		Preempt: func() { announce(func() { r.md.SetPreempted(true) }) }, Notice: preemptionNotice,
	})
	_ = r.env.Cluster.LoadBalancers().SetStopped(context.WithoutCancel(r.ctx), r.node, false)
	if err != nil {
		return LBRun{}, err
	}
	name := "wait off"
	if wait {
		name = "wait on"
		if !o.Left.IsZero() {
			r.tl.AddAt(o.Left, KindLBLeft, r.node, "the node left the load balancer of "+service)
		}
	}
	run := LBRun{Name: name, Wait: wait, Service: service, Failed: o.Failed, Total: o.Total,
		LeftMs: sinceMs(o.Notice, o.Left), FirstEviction: sinceMs(o.Notice, o.FirstEviction()),
		DrainedMs: sinceMs(o.Notice, o.Drained), DeadlineMs: o.Deadline.Sub(o.Notice).Milliseconds()}
	for _, e := range o.Evictions {
		run.EvictionsMs = append(run.EvictionsMs, e.Sub(o.Notice).Milliseconds())
	}
	for _, b := range lbtraffic.Buckets(o.Requests, o.Notice, 100*time.Millisecond) {
		run.Buckets = append(run.Buckets, LBBucket{Ms: b.Start.Milliseconds(), OK: b.OK, Failed: b.Failed})
	}
	return run, nil
}

func sinceMs(zero, t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	v := t.Sub(zero).Milliseconds()
	return &v
}

func msText(v *int64) string {
	if v == nil {
		return "never"
	}
	return fmtDur(time.Duration(*v) * time.Millisecond)
}

// deployLBBackends runs two backends on the scenario's node and two on
// another, and the Service of type LoadBalancer over them.
func deployLBBackends(ctx context.Context, r *run, ns, other string) error {
	tier := func(p *corev1.Pod) {
		p.Labels["tier"] = lbApp
		p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	}
	for name, node := range map[string]string{lbApp + "-here": r.node, lbApp + "-there": other} {
		d := kit.Deployment(ns, name, 2, tier, kit.NodeSelector(map[string]string{"kubernetes.io/hostname": node}))
		if _, err := r.env.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: lbApp},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Selector: map[string]string{"tier": lbApp},
			Ports:    []corev1.ServicePort{{Name: "http", Port: lbPort, TargetPort: intstr.FromInt32(lbPort)}},
		},
	}
	if _, err := r.env.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s: %w", lbApp, err)
	}
	return nil
}

// awaitLBServing waits until the node's backends are Ready and the load
// balancer holds the node and finds it healthy.
func (r *run) awaitLBServing(service string) error {
	return kit.Poll(r.ctx, 60*time.Second, func(ctx context.Context) (bool, string, error) {
		pods, err := r.env.Client.CoreV1().Pods(r.env.Workload.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + lbApp + "-here"})
		if err != nil {
			return false, "", err
		}
		n := 0
		for i := range pods.Items {
			if p := &pods.Items[i]; p.DeletionTimestamp == nil && p.Spec.NodeName == r.node && ready(p) {
				n++
			}
		}
		st, ok, err := r.env.Cluster.LoadBalancers().Of(ctx, service)
		if err != nil {
			return false, "", err
		}
		s, err := r.env.Cluster.LoadBalancers().State(ctx)
		if err != nil {
			return false, "", err
		}
		return n == 2 && ok && slices.Contains(st.Healthy, r.node) && len(s.InFlight) == 0,
			fmt.Sprintf("%d backends Ready on %s, load balancer healthy hosts %v, %d cloud calls under way", n, r.node, st.Healthy, len(s.InFlight)), nil
	})
}

func (r *run) deleteLBBackends(ns string) {
	ctx := context.WithoutCancel(r.ctx)
	for _, name := range []string{lbApp + "-here", lbApp + "-there"} {
		_ = r.env.Client.AppsV1().Deployments(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	}
	_ = r.env.Client.CoreV1().Services(ns).Delete(ctx, lbApp, metav1.DeleteOptions{})
}

// restartAgent restarts the node's agent with extra flags and returns what
// restarts it with the environment's own.
func (e *Env) restartAgent(ctx context.Context, node string, extra ...string) (func() error, error) {
	start := func(flags []string) error {
		for i, a := range e.agents {
			if a.Node != node {
				continue
			}
			a.Stop()
			md, _ := e.Fleet.Get(node)
			spec := localrun.IdentitySpec{Admin: e.Cluster.Client, AdminConfig: e.Cluster.Config, Dir: e.Cluster.Dir, Node: node}
			id, err := localrun.AgentIdentityOn(ctx, spec)
			if err != nil {
				return err
			}
			e.agents[i], err = localrun.StartAgent(ctx, localrun.AgentSpec{
				Binary: e.binary, Dir: e.Cluster.Dir, Kubeconfig: id.Kubeconfig,
				Node: node, MetadataHost: md.Host(), Flags: flags, Pod: id.Pod,
			})
			return err
		}
		return fmt.Errorf("no agent runs on %s (termgate runs as pods?)", node)
	}
	if err := start(append(slices.Clone(e.AgentFlags), extra...)); err != nil {
		return nil, err
	}
	return func() error { return start(e.AgentFlags) }, nil
}
