// Package agent is termgate's per-node agent: it follows the GCE metadata
// server's termination notices (package watch), marks its Node (package
// mark), drains it in waves before the deadline (package drain) and removes
// the marks when the notice is withdrawn or the VM comes back.
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
	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/nodemark"
)

// Agent ties the watch, the marker and the drainer together. All decisions
// happen on one goroutine (Run's loop); drains run beside it and report back.
type Agent struct {
	cfg     Config
	client  kubernetes.Interface
	clock   clock.WithTicker
	watcher *watch.Watcher
	marker  *mark.Marker
	drainer *drain.Drainer
	pods    *drain.PodSource
	nodes   cache.SharedIndexInformer
	events  record.EventRecorder
	metrics *Metrics

	signals signals
	drain   *drainRun

	mu      sync.Mutex
	lastErr error // last reconcile error, for readiness
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

// Parts are the collaborators New wires together; cmd/termgate/app builds them.
type Parts struct {
	Client  kubernetes.Interface
	Clock   clock.WithTicker
	Watcher *watch.Watcher
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
		cfg: cfg, client: p.Client, clock: p.Clock, watcher: p.Watcher,
		marker:  mark.New(p.Client, p.Clock, cfg.NodeName, cfg.DryRun),
		drainer: p.Drainer, pods: p.Pods, nodes: nodes, events: p.Events, metrics: p.Metrics,
		signals: signals{},
	}, nil
}

// Run works until ctx ends. A drain in progress is abandoned on shutdown; the
// marks stay on the Node, so the next agent resumes it.
func (a *Agent) Run(ctx context.Context) error {
	logger := log.FromContext(ctx).WithValues("node", a.cfg.NodeName)
	ctx = log.IntoContext(ctx, logger)

	nodeChanged := make(chan struct{}, 1)
	_, _ = a.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke(nodeChanged) },
		UpdateFunc: func(any, any) { poke(nodeChanged) },
	})
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	observations := make(chan watch.Observation, 8)
	wg.Go(func() { a.watcher.Run(ctx, observations) })
	wg.Go(func() { a.nodes.RunWithContext(ctx) })
	wg.Go(func() { a.pods.Run(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), a.nodes.HasSynced) {
		return ctx.Err()
	}
	logger.Info("agent started", "dryRun", a.cfg.DryRun, "taintEffect", a.cfg.TaintEffect)

	wake := a.clock.NewTimer(time.Hour)
	wake.Stop()
	for {
		var drainDone chan drainOutcome
		if a.drain != nil && !a.drain.finished {
			drainDone = a.drain.done
		}
		select {
		case <-ctx.Done():
			a.stopDrain()
			return nil
		case o := <-observations:
			a.observe(ctx, o)
		case <-nodeChanged:
		case <-wake.C():
		case out := <-drainDone:
			a.drainFinished(ctx, out)
			continue
		}
		next := a.reconcile(ctx)
		wake.Stop()
		if !next.IsZero() {
			wake.Reset(max(next.Sub(a.clock.Now()), 0))
		}
	}
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// observe records a parsed metadata value.
func (a *Agent) observe(ctx context.Context, o watch.Observation) {
	prev, seen := a.signals[o.Key]
	a.signals[o.Key] = o
	if seen && prev.Kind == o.Kind {
		return
	}
	log.FromContext(ctx).Info("metadata changed", "key", o.Key, "value", o.Raw, "kind", o.Kind)
	if o.Kind == watch.KindMigrate {
		a.event(corev1.EventTypeNormal, ReasonLiveMigration, "GCE is live-migrating this VM (%s); nothing to drain", o.Raw)
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
		return a.clock.Now().Add(time.Second)
	}
	return wake
}

// reconcileOnce applies the decision and returns when it changes by itself.
func (a *Agent) reconcileOnce(ctx context.Context) (time.Time, error) {
	node := a.currentNode()
	if node == nil {
		return time.Time{}, fmt.Errorf("node %s not found", a.cfg.NodeName)
	}
	if !a.signals.known() {
		return time.Time{}, nil
	}
	cur, marked, err := nodemark.Read(node.Annotations)
	if err != nil {
		log.FromContext(ctx).Error(err, "node carries a malformed mark; it will be rewritten or removed")
		marked = true
	}
	d := decide(a.cfg, a.signals, node, a.clock.Now())
	want := d.mark
	switch {
	case want == nil && marked:
		a.stopDrain()
		return d.wake, a.unmark(ctx, node, cur)
	case want == nil:
		a.stopDrain()
		return d.wake, nil
	case !marked || err != nil || !sameMark(cur, *want):
		if err := a.markNode(ctx, node, *want); err != nil {
			return d.wake, err
		}
	}
	a.ensureDrain(ctx, *want)
	return d.wake, nil
}

func (a *Agent) currentNode() *corev1.Node {
	obj, ok, err := a.nodes.GetStore().GetByKey(a.cfg.NodeName)
	if err != nil || !ok {
		return nil
	}
	return obj.(*corev1.Node)
}

func (a *Agent) markNode(ctx context.Context, node *corev1.Node, m nodemark.Mark) error {
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
	logger.Info("node marked", "noticeToMark", latency)
	if err := a.marker.SetCondition(ctx, m); err != nil {
		return err
	}
	left := m.Deadline.Sub(a.clock.Now()).Round(time.Millisecond)
	if m.Terminating() {
		a.event(corev1.EventTypeWarning, ReasonTerminationNotice, "%s: draining before %s (%s left)", m.Reason, m.Deadline.UTC().Format(time.RFC3339), left)
	} else {
		a.event(corev1.EventTypeNormal, ReasonMaintenanceScheduled, "maintenance window starts %s; drain starts %s before it", m.Deadline.UTC().Format(time.RFC3339), a.cfg.UpcomingLead)
	}
	return nil
}

func (a *Agent) unmark(ctx context.Context, node *corev1.Node, was nodemark.Mark) error {
	why := "the notice was withdrawn"
	if was.BootID != "" && was.BootID != node.Status.NodeInfo.BootID {
		why = "the node came back with a new boot ID"
	}
	if a.cfg.DryRun {
		log.FromContext(ctx).Info("dry run: would unmark node", "why", why)
		return nil
	}
	if err := a.marker.Unmark(ctx, node); err != nil {
		return err
	}
	a.metrics.restored.Inc()
	log.FromContext(ctx).Info("node restored", "why", why, "reason", was.Reason)
	a.event(corev1.EventTypeNormal, ReasonRestored, "termination marks removed: %s", why)
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

func (a *Agent) stopDrain() {
	if a.drain == nil {
		return
	}
	a.drain.cancel()
	if !a.drain.finished {
		<-a.drain.done
	}
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
	a.drain.finished = true
}

// Ready returns an error until the agent can act: node cache synced, every
// metadata key read, and the last reconcile succeeded.
func (a *Agent) Ready() error {
	if !a.nodes.HasSynced() {
		return errors.New("node cache not synced")
	}
	if !a.pods.HasSynced() {
		return errors.New("pod cache not synced")
	}
	if !a.watcher.Synced() {
		return errors.New("metadata not read yet")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastErr
}
