package scenario

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
)

// The agent's default deadlines (its --preemption-notice and
// --maintenance-budget flags), which GCE's notices dictate.
const (
	preemptionNotice  = 30 * time.Second
	maintenanceBudget = 60 * time.Second
)

// burstReplicas is how many new pods the pinned-pod scenario asks the
// scheduler to place while a node is marked.
const burstReplicas = 6

// Scenario is one story the demo tells and the end-to-end tests assert.
type Scenario struct {
	Name  string
	Title string
	// Node is the kind of node it plays on; Index picks among several.
	Node  NodeKind
	Index int
	play  func(r *run) error
}

// All returns the scenarios in the order the demo plays them.
func All() []Scenario {
	return []Scenario{
		{Name: "spot-preemption", Title: "Spot node preempted, 30 s to go", Node: NodeSpot, play: playPreemption},
		{Name: "gpu-maintenance", Title: "TERMINATE_ON_HOST_MAINTENANCE on the GPU node, a PDB slows the drain", Node: NodeGPU, play: playGPUMaintenance},
		{Name: "maintenance-cancelled", Title: "Maintenance cancelled mid-drain, node restored", Node: NodeOnDemand, play: playCancelled},
		{Name: "pinned-pod-refused", Title: "Pod pinned onto a marked node refused, scheduler places elsewhere", Node: NodeSpot, Index: 1, play: playPinned},
		{Name: "lb-preemption", Title: "Spot node behind a load balancer preempted, with and without the wait", Node: NodeSpot, Index: 2, play: playLBPreemption},
		{Name: "aws-spot-interruption", Title: "EC2 Spot interruption (stop), 2 min to go, the instance comes back", Node: NodeAWSSpot, play: playEC2Spot},
		{Name: "azure-preempt", Title: "Azure Spot VM preempted (Scheduled Events, 30 s), the VM comes back", Node: NodeAzureSpot, play: playAzurePreempt},
	}
}

// Find returns the scenario with this name.
func Find(name string) (Scenario, bool) {
	for _, s := range All() {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

// playPreemption: instance/preempted turns TRUE; the node must be marked at
// once and drained within the 30 s, every workload pod replaced elsewhere.
func playPreemption(r *run) error {
	if err := r.expectUnmarkedAtStart(); err != nil {
		return err
	}
	r.announce("instance/preempted = TRUE on "+r.node, func() { r.md.SetPreempted(true) })
	if !r.expectMarked(nodemark.ReasonPreempted, preemptionNotice) {
		return nil
	}
	r.awaitDrain()
	r.settle()
	return nil
}

// playGPUMaintenance: host maintenance on the GPU node, whose inference pods
// sit behind a PDB that lets one go at a time.
func playGPUMaintenance(r *run) error {
	if err := r.expectUnmarkedAtStart(); err != nil {
		return err
	}
	pods, err := r.podsOnNode(AppInference)
	if err != nil {
		return err
	}
	r.check("at least 2 inference pods on the GPU node, so its PDB has work to do", len(pods) >= 2, "%d there", len(pods))
	r.announce(fmt.Sprintf("instance/maintenance-event = TERMINATE_ON_HOST_MAINTENANCE on %s (GPU budget shortened to %s by --accelerator-maintenance-budget; GCE gives 60m)",
		r.node, r.env.AcceleratorBudget), func() { r.md.SetMaintenanceEvent("TERMINATE_ON_HOST_MAINTENANCE") })
	if !r.expectMarked(nodemark.ReasonHostMaintenance, r.env.AcceleratorBudget) {
		return nil
	}
	r.awaitDrain()
	c := r.w.snapshot()
	r.check("the inference PDB slowed the drain: evictions refused (429) and retried", c.blocked >= 1,
		"%d pods had an eviction refused", c.blocked)
	r.settle()
	return nil
}

// playCancelled: host maintenance on the ledger's node; the ledger's PDB
// holds the drain; the event is withdrawn and the node must come back whole.
func playCancelled(r *run) error {
	if err := r.expectUnmarkedAtStart(); err != nil {
		return err
	}
	ledgerPrefix := r.env.Workload.Namespace + "/" + AppLedger + "-"
	r.announce("instance/maintenance-event = TERMINATE_ON_HOST_MAINTENANCE on "+r.node,
		func() { r.md.SetMaintenanceEvent("TERMINATE_ON_HOST_MAINTENANCE") })
	if !r.expectMarked(nodemark.ReasonHostMaintenance, maintenanceBudget) {
		return nil
	}
	inProgress := r.waitFor("draining", 10*time.Second, func(c counts) bool {
		return c.evicted >= 1 && c.blockedWithPrefix(ledgerPrefix)
	})
	c := r.w.snapshot()
	r.check("drain under way when cancelled: pods evicted, the ledger's PDB refusing", inProgress,
		"%d evicted, ledger blocked: %v", c.evicted, c.blockedWithPrefix(ledgerPrefix))
	cancelledAt := r.cancelMaintenance()
	r.awaitReplacements(false)
	r.expectNoEvictionSentAfter(cancelledAt)
	ledger, err := r.podsOnNode(AppLedger)
	if err != nil {
		return err
	}
	r.check("the ledger still runs on the node", len(ledger) == 1 && ready(&ledger[0]), "%d ledger pods there", len(ledger))
	if err := r.expectBudgetsReleased(); err != nil {
		return err
	}
	r.expectNothingLost(false)
	return nil
}

// expectBudgetsReleased checks that the cancelled drain left no budget
// counting a disruption that never happened. The API server records an
// allowed eviction in the PDB's status.disruptedPods before it deletes the
// pod; an eviction aborted between the two leaves the pod running but
// counted as disrupted, which blocks every eviction under that budget until
// the entry expires (two minutes). An aborted request can still be worked on
// by the API server for a while after its client gave up, so the check looks
// at the budgets once budgetSettle has passed since the restore.
func (r *run) expectBudgetsReleased() error {
	settled := r.tl.Notice().Add(r.w.snapshot().restoredAt + budgetSettle)
	var stuck []string
	err := kit.Poll(r.ctx, time.Until(settled)+budgetSettle, func(ctx context.Context) (bool, string, error) {
		var err error
		if stuck, err = r.phantomDisruptions(ctx); err != nil {
			return false, "", err
		}
		return time.Now().After(settled) && len(stuck) == 0, fmt.Sprint(stuck), nil
	})
	if err != nil && r.ctx.Err() != nil {
		return err
	}
	r.check("no PDB left counting a running pod as disrupted", len(stuck) == 0,
		"%d stuck %v: evictions under them blocked until the entries expire (2 min); an eviction aborted mid-flight leaves this", len(stuck), stuck)
	return nil
}

// budgetSettle is how long after the restore the budgets are judged: the
// API server finishes an aborted eviction within about a second, and the
// disruption controller clears the entries of pods that did go on their
// deletion event.
const budgetSettle = 2 * time.Second

// phantomDisruptions lists PDB/pod pairs where the pod is recorded as
// disrupted but still runs with no deletion pending.
func (r *run) phantomDisruptions(ctx context.Context) ([]string, error) {
	ns := r.env.Workload.Namespace
	pdbs, err := r.env.Client.PolicyV1().PodDisruptionBudgets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list PDBs: %w", err)
	}
	var stuck []string
	for _, pdb := range pdbs.Items {
		for name := range pdb.Status.DisruptedPods {
			p, err := r.env.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("read pod %s: %w", name, err)
			}
			if p.DeletionTimestamp == nil {
				stuck = append(stuck, pdb.Name+"/"+name)
			}
		}
	}
	return stuck, nil
}

// onTheWire is how much later than its sending an eviction may reach the
// API server on this machine: a request the agent sent just before it saw
// the withdrawal may arrive just after.
const onTheWire = 50 * time.Millisecond

// expectNoEvictionSentAfter checks, in the API server's audit log, that no
// eviction or delete by the node's agent (its token is bound to the node)
// arrived after the agent saw the withdrawal (the instant its
// TerminationCancelled event records). kwok's own final deletes, playing the
// kubelet, are not the agent's. Requests
// sent before it may still have been answered later (the server holds an
// eviction against a busy budget), so arrival time is what counts. The
// withdrawal cannot have been seen before the metadata server changed, so a
// claimed instant earlier than cancelledAt fails too.
func (r *run) expectNoEvictionSentAfter(cancelledAt time.Time) {
	const what = "no eviction sent after the agent saw the cancellation (API server audit log)"
	if !r.waitFor("restored event", 10*time.Second, func(c counts) bool { return !c.withdrawalSeen.IsZero() }) {
		r.check(what, false, "no %s event with %s", nodemark.EventTerminationCancelled, nodemark.EventAnnotationWithdrawalSeen)
		return
	}
	seen := r.w.snapshot().withdrawalSeen
	if seen.Before(cancelledAt) {
		r.check(what, false, "agent claims it saw the withdrawal %s before it happened", fmtDur(cancelledAt.Sub(seen)))
		return
	}
	removals, err := r.env.Cluster.PodRemovals()
	if err != nil {
		r.check(what, false, "audit log unreadable: %v", err)
		return
	}
	var late []string
	for _, rm := range removals {
		if rm.Node == r.node && rm.Received.After(seen.Add(onTheWire)) {
			late = append(late, fmt.Sprintf("%s +%s", rm.Pod, fmtDur(rm.Received.Sub(seen))))
		}
	}
	r.check(what, len(late) == 0, "seen %s after the change; %d sent after: %v", fmtDur(seen.Sub(cancelledAt)), len(late), late)
}

// cancelMaintenance withdraws the event, expects the node restored and
// returns the wall-clock time of the withdrawal.
func (r *run) cancelMaintenance() time.Time {
	r.tl.Add(KindCancelled, r.node, "instance/maintenance-event = NONE")
	at := r.tl.Since()
	cancelledAt := time.Now()
	r.md.SetMaintenanceEvent("NONE")
	ok := r.waitFor("restoring", restoreWithin, func(c counts) bool { return c.restored })
	c := r.w.snapshot()
	what := fmt.Sprintf("node restored within %s of the cancellation (taint, annotations, label, condition gone)", restoreWithin)
	if !ok {
		r.check(what, false, "still marked %s after", restoreWithin)
		return cancelledAt
	}
	r.check(what, true, "restored %s after the cancellation", fmtDur(c.restoredAt-at))
	return cancelledAt
}

// playPinned: a Spot node is preempted; meanwhile the scheduler must keep
// placing new pods on healthy nodes, a pod pinned onto the marked node must
// be refused, and so must a bind from a scheduler with a stale view.
func playPinned(r *run) error {
	if err := r.expectUnmarkedAtStart(); err != nil {
		return err
	}
	r.check("webhook running and registered", r.env.Webhook != nil, "%v", r.env.WebhookErr)
	defer r.cleanupPinned()
	r.announce("instance/preempted = TRUE on "+r.node, func() { r.md.SetPreempted(true) })
	if !r.expectMarked(nodemark.ReasonPreempted, preemptionNotice) {
		return nil
	}
	if err := r.burst(); err != nil {
		return err
	}
	if err := r.pinPod(); err != nil {
		return err
	}
	if err := r.staleBind(); err != nil {
		return err
	}
	r.awaitDrain()
	r.settle()
	return nil
}

// settle waits for replacements and checks that nothing was lost.
func (r *run) settle() {
	passed := !r.w.snapshot().drained
	r.awaitReplacements(passed)
	r.expectNothingLost(passed)
}

const burstApp = "checkout"

// burst asks the scheduler for new pods while the node is marked (and
// emptied, so its spreading would favour it): the taint must steer them.
func (r *run) burst() error {
	ns := r.env.Workload.Namespace
	d := kit.Deployment(ns, burstApp, burstReplicas)
	if _, err := r.env.Client.AppsV1().Deployments(ns).Create(r.ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create %s: %w", burstApp, err)
	}
	placed := func() int {
		n := 0
		for _, e := range r.tl.Events() {
			if e.Kind == KindPlaced && strings.HasPrefix(e.Subject, ns+"/"+burstApp+"-") {
				n++
			}
		}
		return n
	}
	r.waitFor("placing", 20*time.Second, func(counts) bool { return placed() >= burstReplicas })
	c := r.w.snapshot()
	r.check(fmt.Sprintf("scheduler placed %d new pods, all on healthy nodes", burstReplicas),
		placed() == burstReplicas && c.admitted == 0, "%d Ready elsewhere, %d landed on the marked node", placed(), c.admitted)
	return nil
}

// pinPod creates a pod with spec.nodeName set to the marked node.
func (r *run) pinPod() error {
	ns := r.env.Workload.Namespace
	name := "pinned-" + rand.String(5)
	_, err := r.env.Client.CoreV1().Pods(ns).Create(r.ctx, kit.Pod(ns, name, kit.OnNode(r.node)), metav1.CreateOptions{})
	const what = "pod pinned with spec.nodeName onto the marked node refused"
	switch {
	case err == nil:
		r.check(what, false, "admitted: pod %s/%s created on %s", ns, name, r.node)
		return r.deletePod(ns, name)
	case refused(err):
		r.res.BindsRefused++
		r.tl.Add(KindBindRefused, ns+"/"+name, "pinned pod refused: "+err.Error())
		r.check(what, true, "refused: %s", err)
		return nil
	}
	return fmt.Errorf("create pinned pod: %w", err)
}

// staleBind plays a scheduler whose cache missed the taint: it binds a
// pending pod to the marked node, then, refused, to a healthy one.
func (r *run) staleBind() error {
	ns := r.env.Workload.Namespace
	name := "stale-bind-" + rand.String(5)
	pod := kit.Pod(ns, name, func(p *corev1.Pod) { p.Spec.SchedulerName = "stale-scheduler" })
	if _, err := r.env.Client.CoreV1().Pods(ns).Create(r.ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod to bind: %w", err)
	}
	r.created = append(r.created, name)
	const what = "bind onto the marked node refused"
	switch err := r.bind(ns, name, r.node); {
	case err == nil:
		r.check(what, false, "bound %s/%s to %s", ns, name, r.node)
		return nil
	case refused(err):
		r.res.BindsRefused++
		r.tl.Add(KindBindRefused, ns+"/"+name, "bind refused: "+err.Error())
		r.check(what, true, "refused: %s", err)
	default:
		return fmt.Errorf("bind %s: %w", name, err)
	}
	healthy := r.env.Workload.LedgerNode
	err := r.bind(ns, name, healthy)
	r.check("the same bind onto a healthy node accepted", err == nil, "bind to %s: %v", healthy, err)
	return nil
}

func (r *run) bind(ns, pod, node string) error {
	return r.env.Client.CoreV1().Pods(ns).Bind(r.ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
}

// refused reports whether the API server refused a request on a webhook's
// word.
func refused(err error) bool {
	return apierrors.IsForbidden(err) || strings.Contains(err.Error(), "denied the request")
}

func (r *run) deletePod(ns, name string) error {
	err := r.env.Client.CoreV1().Pods(ns).Delete(r.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s: %w", name, err)
	}
	return nil
}

// cleanupPinned removes what the pinned-pod scenario created, so a kept
// cluster holds the workload only, and waits until its pods are gone: a
// later scenario draining a node must not find pods whose owner is gone
// (they would count as lost).
func (r *run) cleanupPinned() {
	ns := r.env.Workload.Namespace
	ctx := context.WithoutCancel(r.ctx)
	_ = r.env.Client.AppsV1().Deployments(ns).Delete(ctx, burstApp, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	for _, name := range r.created {
		_ = r.deletePod(ns, name)
	}
	_ = kit.Poll(r.ctx, replaceWithin, func(ctx context.Context) (bool, string, error) {
		pods, err := r.env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + burstApp})
		if err != nil {
			return false, "", err
		}
		left := len(pods.Items)
		for _, name := range r.created {
			if _, err := r.env.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
				left++
			}
		}
		return left == 0, fmt.Sprintf("%d pods left", left), nil
	})
}
