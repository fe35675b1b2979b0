package drain

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/nodemark"
)

// ErrDeadlinePassed is returned (wrapped) when the deadline comes while pods
// the policy evicts are still on the node.
var ErrDeadlinePassed = errors.New("drain deadline passed")

// Drainer drains one node in waves before its deadline.
type Drainer struct {
	client kubernetes.Interface
	pods   *PodSource
	clk    clock.WithTicker
	cfg    Config
	rec    record.EventRecorder

	// exitBy is when the process must be done (after SIGTERM); zero until
	// Hurry. hurried is closed by each Hurry that moves exitBy earlier, to
	// wake running drains once, and replaced by a fresh channel: a closed
	// channel left in place would wake every later wait at once.
	mu      sync.Mutex
	exitBy  time.Time
	hurried chan struct{}
}

// New returns a Drainer. Zero config fields take their defaults; Run reports
// an invalid config. rec may be nil, which records no events.
func New(client kubernetes.Interface, pods *PodSource, clk clock.WithTicker, cfg Config, rec record.EventRecorder) *Drainer {
	return &Drainer{client: client, pods: pods, clk: clk, cfg: cfg.WithDefaults(), rec: rec, hurried: make(chan struct{})}
}

// Hurry tells running and later drains that the process stops at exitAt
// (it was signalled): cut-offs after exitAt minus their margins move
// earlier, so the system wave and the escalated deletes are sent while the
// agent still runs. Escalated deletes keep their grace up to the node's
// deadline, since the pods outlive the agent until the VM stops.
func (d *Drainer) Hurry(exitAt time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.exitBy.IsZero() && !exitAt.Before(d.exitBy) {
		return
	}
	d.exitBy = exitAt
	close(d.hurried)
	d.hurried = make(chan struct{})
}

// exitTime returns the exit time and the channel the next Hurry closes,
// read together so that a Hurry after this read still wakes the caller.
func (d *Drainer) exitTime() (time.Time, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exitBy, d.hurried
}

// Result summarises one Run for logs, metrics and the demo timeline.
type Result struct {
	// Evicted counts evictions the API server accepted.
	Evicted int
	// Deleted counts escalated deletes: pods deleted, or their deletion
	// shortened, with a grace period clamped to the deadline.
	Deleted int
	// Gone counts requests answered 404, or 409 for a pod replaced under
	// the same name: the pod had already left.
	Gone int
	// Retried429 counts refusals by a PodDisruptionBudget (a 429, or a 403
	// carrying the budget's cause); Throttled counts 429s by which the API
	// server shed load; RetriedErr counts other failed requests (5xx,
	// network, refusals by admission). All were retried.
	Retried429 int
	Throttled  int
	RetriedErr int
	// Remaining counts pods the policy evicts that were still on the node
	// (possibly terminating) when Run returned.
	Remaining int
	// Kept counts pods the policy leaves on the node (WaveKeep); Skipped
	// counts mirror and finished pods.
	Kept    int
	Skipped int
	// Started holds, for each step that acted, when it first did, relative
	// to the notice. After a restart the times are those of this Run.
	Started map[Step]time.Duration
	// Duration is how long Run took.
	Duration time.Duration
	// LBWaited lists the node-level load-balancer Services whose backends
	// waited; LBWait is when, after the notice, the wait ended (the node
	// had left them all, or the cap) and LBCapped whether it was the cap.
	LBWaited []string
	LBWait   time.Duration
	LBCapped bool
}

// Run drains until every pod the policy evicts is gone, the deadline comes
// (ErrDeadlinePassed) or ctx is cancelled (the notice was withdrawn). It
// derives everything from mark and the pods it sees, so calling it again
// after a crash, with the same mark, resumes the drain.
func (d *Drainer) Run(ctx context.Context, mark nodemark.Mark) (Result, error) {
	if d.client == nil || d.pods == nil || d.clk == nil {
		return Result{}, errors.New("drain: New needs a client, a pod source and a clock")
	}
	began := d.clk.Now()
	if err := d.cfg.Validate(); err != nil {
		return Result{}, fmt.Errorf("drain config: %w", err)
	}
	if mark.NoticeTime.IsZero() || mark.Deadline.IsZero() || mark.Deadline.Before(mark.NoticeTime) {
		return Result{}, fmt.Errorf("drain mark: notice %s and deadline %s do not form a window", mark.NoticeTime, mark.Deadline)
	}
	// The caller's logger names the node already (the agent's carries it
	// on every line); adding it here wrote it twice on drain lines.
	changes, unsubscribe := d.pods.Subscribe()
	defer unsubscribe()

	r := &run{
		d:         d,
		mark:      mark,
		sched:     newSchedule(mark, d.cfg),
		queue:     newEvictionQueue(d.client, d.clk, d.cfg, mark.Deadline, d.rec),
		started:   map[Step]time.Duration{},
		overrides: newOverrideNotes(),
	}
	// The queue's items and the load-balancer watches live in the loop's
	// context: when the loop ends, for whatever reason, nothing more is
	// sent and nothing more is watched.
	loopCtx, stopLoop := context.WithCancel(ctx)
	if d.cfg.LoadBalancers != nil {
		c := capFor(d.cfg.LBWaitCaps, mark.Reason)
		r.lb = &lbWait{
			view:   d.cfg.LoadBalancers.Follow(loopCtx, mark),
			capAt:  lbCapAt(mark, c, r.sched.regularCutoff),
			cap:    c,
			margin: d.cfg.LBMargin,
			waited: map[string]bool{},
		}
	}
	r.steps = r.plan()
	outcome, last, err := r.loop(loopCtx, changes)
	stopLoop()
	r.queue.wait()

	res := r.result(last)
	res.Duration = d.clk.Since(began)
	d.cfg.Metrics.setLBPending(0)
	d.cfg.Metrics.setProgress(0, time.Time{})
	d.cfg.Metrics.observeDuration(outcome, res.Duration)
	r.finish(ctx, outcome, res)
	return res, err
}

// run is the state of one Run.
type run struct {
	d         *Drainer
	mark      nodemark.Mark
	sched     schedule
	queue     *evictionQueue
	steps     []step
	started   map[Step]time.Duration
	overrides *overrideNotes
	lb        *lbWait // nil: the drain does not wait for load balancers
}

// loop runs the steps on each change of the node's pods and at each instant
// a step waits for, until the drain ends.
func (r *run) loop(ctx context.Context, changes <-chan struct{}) (string, *pass, error) {
	if err := r.awaitSync(ctx); err != nil {
		return r.stopReason(ctx), &pass{}, err
	}
	for {
		now := r.d.clk.Now()
		exitBy, hurried := r.d.exitTime()
		r.sched = r.sched.within(exitBy, r.d.cfg)
		pods := r.d.pods.List()
		r.overrides.note(r.d, pods)
		p := classify(pods, now, r.sched, r.d.cfg.TaintEffect)
		r.d.cfg.Metrics.setProgress(p.remaining(), r.sched.deadline)
		if p.remaining() == 0 {
			return outcomeComplete, p, nil
		}
		if !now.Before(r.sched.deadline) {
			return outcomeDeadline, p, fmt.Errorf("%w: %d pods still on node %s", ErrDeadlinePassed, p.remaining(), r.d.cfg.NodeName)
		}
		wake := r.runSteps(ctx, p)
		if !r.sleep(ctx, changes, hurried, wake.Sub(now)) {
			return outcomeCancelled, p, fmt.Errorf("drain of node %s stopped: %w", r.d.cfg.NodeName, context.Cause(ctx))
		}
	}
}

// awaitSync waits for the pod cache, at most until the deadline: an
// unsynced cache looks empty, and an empty node looks drained.
func (r *run) awaitSync(ctx context.Context) error {
	if r.d.pods.HasSynced() {
		return nil
	}
	syncCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := r.d.clk.NewTimer(r.sched.deadline.Sub(r.d.clk.Now()))
	defer timer.Stop()
	go func() {
		select {
		case <-timer.C():
			cancel()
		case <-syncCtx.Done():
		}
	}()
	if r.d.pods.WaitForSync(syncCtx) {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("drain of node %s stopped before the pod cache synced: %w", r.d.cfg.NodeName, context.Cause(ctx))
	}
	return fmt.Errorf("%w: pod cache of node %s never synced", ErrDeadlinePassed, r.d.cfg.NodeName)
}

func (r *run) stopReason(ctx context.Context) string {
	if ctx.Err() != nil {
		return outcomeCancelled
	}
	return outcomeDeadline
}

// sleep waits for a pod change, a change of the load balancers, for d, for a
// Hurry, or for cancellation;
// false means cancelled.
func (r *run) sleep(ctx context.Context, changes, hurried <-chan struct{}, d time.Duration) bool {
	timer := r.d.clk.NewTimer(max(d, 0))
	defer timer.Stop()
	var lbChanged <-chan struct{}
	if r.lb != nil {
		lbChanged = r.lb.view.Changed()
	}
	select {
	case <-ctx.Done():
		return false
	case <-changes:
	case <-lbChanged:
	case <-timer.C():
	case <-hurried:
	}
	return true
}

func (r *run) result(last *pass) Result {
	s := r.queue.snapshot()
	res := Result{
		Evicted:    s.Evicted,
		Deleted:    s.Deleted,
		Gone:       s.Gone,
		Retried429: s.Retried429,
		Throttled:  s.Throttled,
		RetriedErr: s.RetriedErr,
		Remaining:  last.remaining(),
		Kept:       last.kept,
		Skipped:    last.skipped,
		Started:    r.started,
	}
	if r.lb != nil {
		res.LBWaited = sortedKeys(r.lb.waited)
		res.LBWait, res.LBCapped = r.lb.ended, r.lb.capped
	}
	return res
}

// finish logs the end of the drain and records it on the Node, with the
// mark's annotations and the figures (nodemark.DrainSummary) for readers
// of the event such as the notifier.
func (r *run) finish(ctx context.Context, outcome string, res Result) {
	logger := log.FromContext(ctx)
	logger.Info("drain ended", "outcome", outcome, "evicted", res.Evicted, "deleted", res.Deleted,
		"gone", res.Gone, "retried429", res.Retried429, "throttled", res.Throttled, "retriedErr", res.RetriedErr,
		"remaining", res.Remaining, "kept", res.Kept, "skipped", res.Skipped, "duration", res.Duration)
	if r.d.rec == nil {
		return
	}
	ref := nodemark.NodeEventRef(r.d.cfg.NodeName)
	at := r.mark.Annotations()
	at[nodemark.EventAnnotationDrainSummary] = nodemark.DrainSummary{
		EndedAt: r.d.clk.Now(), DurationMillis: res.Duration.Milliseconds(),
		Evicted: res.Evicted, Deleted: res.Deleted, Gone: res.Gone, Remaining: res.Remaining, Kept: res.Kept,
	}.Encode()
	switch outcome {
	case outcomeComplete:
		r.d.rec.AnnotatedEventf(ref, at, corev1.EventTypeNormal, nodemark.EventDrainCompleted,
			"Drained in %s: %d evicted, %d deleted at a cut-off, %d kept", res.Duration.Round(time.Millisecond), res.Evicted, res.Deleted, res.Kept)
	case outcomeDeadline:
		r.d.rec.AnnotatedEventf(ref, at, corev1.EventTypeWarning, nodemark.EventDrainDeadlinePassed,
			"Deadline passed with %d pods still on the node", res.Remaining)
	}
}
