// Package agent is termgate's per-node agent: it follows its cloud's
// termination notices (a notice.Source: GCE's metadata server in package
// watch, EC2's instance metadata in package aws, Azure's Scheduled Events in
// package azure), marks its Node (package mark), drains it in waves before
// the deadline (package drain) and removes the marks when the notice is
// withdrawn or the VM comes back.
package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/agent/mark"
	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
)

// Agent ties the watch, the marker and the drainer together. All decisions
// happen on one goroutine (Run's loop); drains run beside it and report back.
type Agent struct {
	cfg     Config
	client  kubernetes.Interface
	clock   clock.WithTicker
	sources SourceFor
	marker  *mark.Marker
	drainer *drain.Drainer
	pods    *drain.PodSource
	nodes   cache.SharedIndexInformer
	events  record.EventRecorder
	metrics *Metrics

	reading notice.Reading
	// reported holds the unreadable values already raised as events.
	reported map[notice.Unreadable]bool
	drain    *drainRun
	// refusedMark is the last mark whose write failed and was reported.
	refusedMark *nodemark.Mark

	mu        sync.Mutex
	lastErr   error         // last reconcile error, for readiness
	source    notice.Source // nil until resolved from the Node
	sourceErr error         // why the source could not be resolved
}

// drainRun is a drain in progress for one mark.
type drainRun struct {
	mark     nodemark.Mark
	cancel   context.CancelFunc
	done     chan drainOutcome
	finished bool // its outcome was received; it stays to block a rerun
}

type drainOutcome struct {
	res drain.Result
	err error
}

// SourceFor returns the notice source for the agent's Node: the cloud named
// by a flag, or told by the Node's spec.providerID. An error leaves the
// agent not ready; it tries again when the Node changes (a cloud controller
// may set the provider ID after the agent started).
type SourceFor func(node *corev1.Node) (notice.Source, error)

// Parts are the collaborators New wires together; cmd/termgate/app builds them.
type Parts struct {
	Client  kubernetes.Interface
	Clock   clock.WithTicker
	Sources SourceFor
	Drainer *drain.Drainer
	Pods    *drain.PodSource
	Events  record.EventRecorder
	Metrics *Metrics
}

// New returns an agent for cfg.NodeName.
func New(cfg Config, p Parts) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	selector := fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
	nodes := coreinformers.NewFilteredNodeInformer(p.Client, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.FieldSelector = selector })
	// The agent reads metadata, taints and the boot ID; the image list and
	// managed fields are most of a real Node's size.
	_ = nodes.SetTransform(func(obj any) (any, error) {
		if n, ok := obj.(*corev1.Node); ok {
			n.ManagedFields, n.Status.Images = nil, nil
		}
		return obj, nil
	})
	return &Agent{
		cfg: cfg, client: p.Client, clock: p.Clock, sources: p.Sources,
		marker:  markerWith(mark.New(p.Client, p.Clock, cfg.NodeName, cfg.DryRun), cfg.LBMarks),
		drainer: p.Drainer, pods: p.Pods, nodes: nodes, events: p.Events, metrics: p.Metrics,
		reported: map[notice.Unreadable]bool{},
	}, nil
}

// Run works until ctx ends. When ctx ends in the middle of a drain (SIGTERM:
// a rollout, or the kubelet's graceful node shutdown), the agent keeps
// draining until the drain ends, the notice is withdrawn or its own grace
// period runs out, with the drain's cut-offs moved before that moment. A
// drain it has to abandon keeps its marks on the Node, so the next agent
// resumes it.
func (a *Agent) Run(ctx context.Context) error {
	logger := log.FromContext(ctx).WithValues("node", a.cfg.NodeName)
	signalled := ctx.Done()
	// The watch, the caches and the API calls outlive the signal: they
	// serve the drain that goes on after it.
	work, stop := context.WithCancel(log.IntoContext(context.WithoutCancel(ctx), logger))
	defer stop()

	nodeChanged := make(chan struct{}, 1)
	_, _ = a.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke(nodeChanged) },
		UpdateFunc: func(any, any) { poke(nodeChanged) },
	})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	readings := make(chan notice.Reading, 8)
	wg.Go(func() { a.nodes.RunWithContext(work) })
	wg.Go(func() { a.pods.Run(work) })
	if !cache.WaitForCacheSync(ctx.Done(), a.nodes.HasSynced) {
		return nil
	}
	a.startSource(work, &wg, readings)
	logger.Info("agent started", "dryRun", a.cfg.DryRun, "taintEffect", a.cfg.TaintEffect)

	wake := a.clock.NewTimer(time.Hour)
	wake.Stop()
	var exit <-chan time.Time // the end of the grace after a signal
	for {
		var drainDone chan drainOutcome
		if a.draining() {
			drainDone = a.drain.done
		}
		select {
		case <-signalled:
			signalled = nil
			if !a.draining() {
				logger.Info("stopping: no drain in progress")
				return nil
			}
			exit = a.keepDrainingAfterSignal(work)
			continue
		case <-exit:
			logger.Info("stopping: the grace period after the signal is over; the next agent resumes the drain")
			return nil
		case r := <-readings:
			a.observe(work, r)
		case <-nodeChanged:
			a.startSource(work, &wg, readings)
		case <-wake.C():
		case out := <-drainDone:
			a.drainFinished(work, out)
		}
		next := a.reconcile(work)
		if exit != nil && !a.draining() {
			logger.Info("stopping: the drain is over")
			return nil
		}
		wake.Stop()
		if !next.IsZero() {
			wake.Reset(max(next.Sub(a.clock.Now()), 0))
		}
	}
}

// draining reports whether a drain is running.
func (a *Agent) draining() bool { return a.drain != nil && !a.drain.finished }

// keepDrainingAfterSignal moves the running drain's cut-offs before the end
// of the agent's grace period and returns a channel that fires at that end.
func (a *Agent) keepDrainingAfterSignal(ctx context.Context) <-chan time.Time {
	now := a.clock.Now()
	grace := a.shutdownGrace()
	exitAt := now.Add(max(grace-shutdownMargin, 0))
	deadline := a.drain.mark.Deadline
	log.FromContext(ctx).Info("signalled during a drain: draining on", "grace", grace, "until", exitAt, "deadline", deadline)
	if exitAt.Before(deadline) {
		a.drainer.Hurry(exitAt)
		a.event(corev1.EventTypeWarning, nodemark.EventShutdownDuringDrain,
			"agent stopping during the drain: %s left of its grace, %s before the deadline; moving the system wave and escalations before %s",
			grace.Round(time.Millisecond), deadline.Sub(now).Round(time.Millisecond), exitAt.UTC().Format(time.RFC3339Nano))
	} else {
		a.event(corev1.EventTypeNormal, nodemark.EventShutdownDuringDrain,
			"agent stopping during the drain: its grace (%s) covers the deadline; draining on", grace.Round(time.Millisecond))
	}
	return a.clock.After(max(exitAt.Sub(now), 0))
}

// shutdownGrace is how long the agent may keep working after a signal: the
// configured grace, else its own pod's (a pod already being deleted is
// killed at its deletionTimestamp), else the Kubernetes default.
func (a *Agent) shutdownGrace() time.Duration {
	if a.cfg.ShutdownGrace > 0 {
		return a.cfg.ShutdownGrace
	}
	pod := a.pods.Get(a.cfg.PodNamespace, a.cfg.PodName)
	switch {
	case pod == nil:
		return DefaultShutdownGrace
	case pod.DeletionTimestamp != nil:
		return max(pod.DeletionTimestamp.Sub(a.clock.Now()), 0)
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return DefaultShutdownGrace
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// reconcile brings the Node in line with the signals and returns when it
// must run again by itself.
func (a *Agent) reconcile(ctx context.Context) time.Time {
	wake, err := a.reconcileOnce(ctx)
	a.mu.Lock()
	a.lastErr = err
	a.mu.Unlock()
	if err != nil {
		log.FromContext(ctx).Error(err, "reconcile failed; will retry")
		retryAt := a.clock.Now().Add(time.Second)
		if !wake.IsZero() && wake.Before(retryAt) {
			retryAt = wake
		}
		return retryAt
	}
	return wake
}

// reconcileOnce applies the decision and returns when it changes by itself.
// The order is the order of urgency: a withdrawn notice stops the drain
// before the Node is unmarked; a notice taints the Node, then starts the
// drain, then records the condition, so neither the drain nor the scheduler
// waits for the condition.
func (a *Agent) reconcileOnce(ctx context.Context) (time.Time, error) {
	node := a.currentNode()
	if node == nil {
		return time.Time{}, fmt.Errorf("node %s not found", a.cfg.NodeName)
	}
	if a.reading.Empty() {
		return time.Time{}, nil
	}
	cur, marked, err := nodemark.Read(node.Annotations)
	if err != nil {
		log.FromContext(ctx).Error(err, "node carries a malformed mark; it will be rewritten or removed")
		marked = true
	}
	d := decideReading(a.cfg, a.reading, node, a.clock.Now())
	want := d.mark
	switch {
	case d.hold:
		return d.wake, nil
	case want == nil:
		a.stopDrain()
		if !marked {
			// A condition without a mark is left from an unmark cut short
			// (or an older agent's): nothing else would ever remove it.
			return d.wake, a.marker.RemoveStaleCondition(ctx, node)
		}
		return d.wake, a.unmark(ctx, node, cur)
	case !marked || err != nil || !sameMark(cur, *want):
		if err := a.markNode(ctx, node, *want, d.lateStart); err != nil {
			// The drain needs the mark only in memory: a Node patch that is
			// refused (a policy, a webhook) or times out must not hold back
			// evictions while the VM's time runs out. The write is retried
			// soon; the fence (taint, webhook) waits for it, the drain does not.
			a.ensureDrain(ctx, *want)
			a.markRefused(ctx, *want, err)
			return a.clock.Now().Add(markRetry), err
		}
	}
	a.ensureDrain(ctx, *want)
	return d.wake, a.marker.EnsureCondition(ctx, node, *want)
}

// markRetry is how soon a failed mark write is tried again. The Marker
// bounds each call; a quicker retry than the reconcile's usual second
// matters when the notice gives 30 s.
const markRetry = 250 * time.Millisecond

// markRefused records, once per mark, that its write failed and the drain
// started without it.
func (a *Agent) markRefused(ctx context.Context, m nodemark.Mark, err error) {
	log.FromContext(ctx).Error(err, "mark not written; draining from the mark in memory while retrying", "reason", m.Reason, "deadline", m.Deadline)
	if a.refusedMark != nil && sameMark(*a.refusedMark, m) {
		return
	}
	a.refusedMark = &m
	a.markEvent(m, nil, corev1.EventTypeWarning, nodemark.EventMarkRefused,
		"%s: the node's mark could not be written (%v); draining before %s from the mark in memory, retrying the write",
		m.Reason, err, m.Deadline.UTC().Format(time.RFC3339))
}

func (a *Agent) currentNode() *corev1.Node {
	obj, ok, err := a.nodes.GetStore().GetByKey(a.cfg.NodeName)
	if err != nil || !ok {
		return nil
	}
	return obj.(*corev1.Node)
}

// markNode writes the mark (annotations, taint, label) and records the
// notice. The condition follows (Marker.EnsureCondition), after the drain starts.
func (a *Agent) markNode(ctx context.Context, node *corev1.Node, m nodemark.Mark, lateStart bool) error {
	effect := a.cfg.TaintEffect
	if !m.Terminating() {
		effect = corev1.TaintEffectPreferNoSchedule
	}
	logger := log.FromContext(ctx).WithValues("reason", m.Reason, "state", m.State, "deadline", m.Deadline, "effect", effect)
	if a.cfg.DryRun {
		logger.Info("dry run: would mark node")
		return nil
	}
	if err := a.marker.Mark(ctx, node, m, effect); err != nil {
		return err
	}
	latency := a.clock.Since(m.NoticeTime)
	a.metrics.observeMark(m, latency)
	logger.Info("node marked", "noticeToMark", latency, "lateStart", lateStart)
	left := m.Deadline.Sub(a.clock.Now()).Round(time.Millisecond)
	switch {
	case m.Terminating() && lateStart:
		a.markEvent(m, nil, corev1.EventTypeWarning, nodemark.EventTerminationNotice,
			"%s: the notice was already present when the agent started; assuming %s left and draining before %s",
			m.Reason, left, m.Deadline.UTC().Format(time.RFC3339))
	case m.Terminating():
		a.markEvent(m, nil, corev1.EventTypeWarning, nodemark.EventTerminationNotice, "%s: draining before %s (%s left)", m.Reason, m.Deadline.UTC().Format(time.RFC3339), left)
	default:
		reason, msg := a.advanceEvent(m)
		a.markEvent(m, nil, corev1.EventTypeNormal, reason, "%s", msg)
	}
	return nil
}

func (a *Agent) unmark(ctx context.Context, node *corev1.Node, was nodemark.Mark) error {
	why, cause := "the notice was withdrawn", nodemark.UnmarkNoticeWithdrawn
	if was.BootID != "" && was.BootID != node.Status.NodeInfo.BootID {
		why, cause = "the node came back with a new boot ID", nodemark.UnmarkNewBoot
	}
	if a.cfg.DryRun {
		log.FromContext(ctx).Info("dry run: would unmark node", "why", why)
		return nil
	}
	if err := a.marker.Unmark(ctx, node); err != nil {
		return err
	}
	a.metrics.restored.Inc()
	seen := a.reading.At
	log.FromContext(ctx).Info("node restored", "why", why, "reason", was.Reason, "withdrawalSeen", seen)
	at := map[string]string{nodemark.EventAnnotationWithdrawalSeen: seen.UTC().Format(time.RFC3339Nano), nodemark.EventAnnotationUnmarkCause: cause}
	a.markEvent(was, at, corev1.EventTypeNormal, nodemark.EventTerminationCancelled, "termination marks removed: %s", why)
	return nil
}

// ensureDrain starts a drain for m unless one is running for it. A drain is
// keyed by its notice time and deadline: a new notice restarts it.
func (a *Agent) ensureDrain(ctx context.Context, m nodemark.Mark) {
	if !m.Terminating() {
		a.stopDrain()
		return
	}
	if a.drain != nil && sameMark(a.drain.mark, m) {
		return
	}
	a.stopDrain()
	dctx, cancel := context.WithCancel(ctx)
	run := &drainRun{mark: m, cancel: cancel, done: make(chan drainOutcome, 1)}
	a.drain = run
	go func() {
		res, err := a.drainer.Run(dctx, m)
		run.done <- drainOutcome{res: res, err: err}
	}()
}

// stopDrain cancels the running drain without waiting for it: the drain
// sends no new request once cancelled, and the calls already on the wire
// finish in the background (cutting one short could leave a disruption
// budget counting a running pod as evicted). The caller goes on at once,
// so a withdrawn notice unmarks the Node without waiting for them.
func (a *Agent) stopDrain() {
	if a.drain == nil {
		return
	}
	a.drain.cancel()
	a.drain = nil
}

// drainFinished logs the outcome. The mark stays: the VM is still going away.
// The finished run stays recorded so the same mark does not drain again.
func (a *Agent) drainFinished(ctx context.Context, out drainOutcome) {
	logger := log.FromContext(ctx)
	r := out.res
	kv := []any{"evicted", r.Evicted, "deleted", r.Deleted, "gone", r.Gone, "retried429", r.Retried429, "remaining", r.Remaining, "kept", r.Kept, "duration", r.Duration}
	switch {
	case out.err == nil:
		logger.Info("drain complete", kv...)
	case errors.Is(out.err, context.Canceled):
		logger.Info("drain stopped", kv...)
	default:
		logger.Error(out.err, "drain ended", kv...)
	}
	if a.drain != nil {
		a.drain.finished = true
		if out.err == nil {
			a.acknowledge(ctx, a.drain.mark)
		}
	}
}

// Ready returns an error until the agent can act: caches synced, its
// cloud known, a first notice value read (each channel acts on its own as
// soon as it is read), and the last reconcile succeeded.
func (a *Agent) Ready() error {
	if !a.nodes.HasSynced() {
		return errors.New("node cache not synced")
	}
	if !a.pods.HasSynced() {
		return errors.New("pod cache not synced")
	}
	a.mu.Lock()
	src, srcErr, lastErr := a.source, a.sourceErr, a.lastErr
	a.mu.Unlock()
	switch {
	case srcErr != nil:
		return srcErr
	case src == nil:
		return errors.New("notice source not started yet")
	}
	if err := src.Ready(); err != nil {
		return err
	}
	return lastErr
}

func markerWith(mk *mark.Marker, e mark.Extras) *mark.Marker {
	mk.SetExtras(e)
	return mk
}
