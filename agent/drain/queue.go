package drain

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/agent/retry"
	"termgate.dev/termgate/nodemark"
)

// action is what the queue does to a pod. Deleting supersedes evicting.
type action int

const (
	actEvict action = iota
	actDelete
)

func (a action) String() string {
	if a == actDelete {
		return "delete"
	}
	return "evict"
}

// outcome classifies the answer to one API call.
type outcome string

// Outcomes double as the result label of the evictions metric.
const (
	outcomeAccepted    outcome = "accepted"     // the API server took it
	outcomeSkipped     outcome = "skipped"      // a delete that would not shorten the pod's end: not sent
	outcomeGone        outcome = "gone"         // 404, or 409 because the pod (this UID) is gone
	outcomeBlocked     outcome = "blocked"      // a PodDisruptionBudget refuses it for now (429, or 403 with its cause)
	outcomeThrottled   outcome = "throttled"    // 429 without a budget's cause: the API server sheds load (priority and fairness)
	outcomeServerError outcome = "server_error" // 5xx: retried
	outcomeError       outcome = "error"        // anything else: retried until the wave escalates
)

// item is one pod (by UID) in the queue.
type item struct {
	pod    *corev1.Pod
	act    action
	wave   nodemark.Wave
	cancel context.CancelFunc
}

// queueStats are the counts a drain reports.
type queueStats struct {
	Evicted    int
	Deleted    int
	Gone       int
	Retried429 int
	Throttled  int
	RetriedErr int
}

// evictionQueue evicts or deletes pods in parallel, at most one item per pod
// UID, each retried with its own exponential backoff. It lives for one Run.
// Repeating a request is harmless: a UID is only acted on once per action,
// and the UID precondition keeps a replacement pod with the same name safe.
type evictionQueue struct {
	client   kubernetes.Interface
	clk      clock.WithTicker
	cfg      Config
	deadline time.Time
	rec      record.EventRecorder
	slots    *fairSlots
	wg       sync.WaitGroup

	mu    sync.Mutex
	items map[types.UID]*item
	stats queueStats
	// throttleReported is set once the node's EvictionsThrottled event is
	// recorded: one per drain is enough to tell the operator.
	throttleReported bool
}

func newEvictionQueue(client kubernetes.Interface, clk clock.WithTicker, cfg Config, deadline time.Time, rec record.EventRecorder) *evictionQueue {
	return &evictionQueue{
		client:   client,
		clk:      clk,
		cfg:      cfg,
		deadline: deadline,
		rec:      rec,
		slots:    newFairSlots(cfg.Concurrency, cfg.Metrics.setEvictionWindow),
		items:    map[types.UID]*item{},
	}
}

// evict asks for pod's eviction unless the pod is already queued or done.
// It reports whether a new item was started; the item stops sending when
// ctx ends.
func (q *evictionQueue) evict(ctx context.Context, pod *corev1.Pod, wave nodemark.Wave) bool {
	return q.add(ctx, pod, actEvict, wave)
}

// delete asks for pod's deletion with a grace period clamped to the
// deadline, superseding a pending eviction. It reports whether a new item
// was started.
func (q *evictionQueue) delete(ctx context.Context, pod *corev1.Pod, wave nodemark.Wave) bool {
	return q.add(ctx, pod, actDelete, wave)
}

func (q *evictionQueue) add(ctx context.Context, pod *corev1.Pod, act action, wave nodemark.Wave) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if ctx.Err() != nil {
		return false
	}
	if old, ok := q.items[pod.UID]; ok {
		if old.act >= act {
			return false
		}
		old.cancel()
	}
	itemCtx, cancel := context.WithCancel(ctx)
	it := &item{pod: pod, act: act, wave: wave, cancel: cancel}
	q.items[pod.UID] = it
	q.wg.Add(1)
	go q.work(itemCtx, it)
	return true
}

// wait blocks until every item has finished or been cancelled. The caller
// ends the items' context first.
func (q *evictionQueue) wait() { q.wg.Wait() }

func (q *evictionQueue) snapshot() queueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stats
}

// work runs one item until it is done or cancelled.
func (q *evictionQueue) work(ctx context.Context, it *item) {
	defer q.wg.Done()
	defer it.cancel()
	logger := log.FromContext(ctx).WithValues("pod", klog.KObj(it.pod), "action", it.act.String())
	for attempt := 0; ; attempt++ {
		ans := q.attempt(ctx, it)
		// An answer that arrived is counted even if the item was cancelled
		// meanwhile; a call cut short by the cancellation is not.
		if ctx.Err() != nil && !ans.final() {
			return
		}
		q.record(it, ans, attempt)
		switch ans.out {
		case outcomeAccepted, outcomeGone, outcomeSkipped:
			logger.V(1).Info("done", "outcome", ans.out, "attempts", attempt+1)
			return
		case outcomeBlocked:
			logger.V(1).Info("blocked by a disruption budget, will retry", "attempt", attempt+1)
		case outcomeThrottled:
			logger.V(1).Info("throttled by the API server, will retry", "attempt", attempt+1, "retryAfter", ans.retryAfter)
		default:
			logger.Info("request failed, will retry", "attempt", attempt+1, "error", ans.err.Error())
		}
		if !retry.Sleep(ctx, q.clk, q.retryDelay(ans, attempt)) {
			return
		}
	}
}

// answer is what one API call came back with.
type answer struct {
	out outcome
	err error
	// retryAfter is the wait the API server asked for (Retry-After), zero
	// if none.
	retryAfter time.Duration
}

// final reports whether the item is done after this answer.
func (a answer) final() bool {
	return a.out == outcomeAccepted || a.out == outcomeGone || a.out == outcomeSkipped
}

// retryDelay is the wait before the next try. A budget's refusal is
// retried on the queue's own backoff: the API server's suggestion for it
// (10 s when the budget is being recomputed) would waste a third of a
// Spot notice. Throttling is the API server protecting itself: the agent
// waits at least what it asked for, jittered upwards so that hundreds of
// agents throttled together do not come back together.
func (q *evictionQueue) retryDelay(a answer, attempt int) time.Duration {
	d := retry.Delay(q.cfg.BackoffBase, q.cfg.BackoffCap, attempt)
	if a.out == outcomeThrottled && a.retryAfter > 0 {
		d = max(d, retry.Delay(a.retryAfter*2, a.retryAfter*2, 0))
	}
	return d
}

// callTimeout bounds one API call. The API server may hold an eviction for
// up to 10 s while a disruption budget is being recomputed; client-go no
// longer waits out a Retry-After inside the call (WithoutHiddenRetries).
const callTimeout = 15 * time.Second

// attempt makes one API call while holding a concurrency slot of the
// pod's namespace.
func (q *evictionQueue) attempt(ctx context.Context, it *item) answer {
	ns := it.pod.Namespace
	epoch, err := q.slots.acquire(ctx, ns)
	if err != nil {
		return answer{out: outcomeError, err: err}
	}
	defer q.slots.release(ns)
	ans := q.call(ctx, it)
	switch {
	case ans.out == outcomeAccepted:
		q.slots.acked()
	case ans.out == outcomeThrottled, ans.out == outcomeServerError,
		// A call that outlasted callTimeout waited in the server's queues.
		ans.out == outcomeError && errors.Is(ans.err, context.DeadlineExceeded) && ctx.Err() == nil:
		q.slots.congested(epoch)
	}
	return ans
}

// call sends the item's request once; the caller holds a slot.
func (q *evictionQueue) call(ctx context.Context, it *item) answer {
	// A slot can be granted just as the item is cancelled: a drain stopped
	// because its notice was withdrawn must send nothing more.
	if err := ctx.Err(); err != nil {
		return answer{out: outcomeError, err: err}
	}
	// A call under way is never cut short, even when the item is cancelled
	// (superseded by a delete, drain stopped): the API server records an
	// eviction in the PodDisruptionBudget before it deletes the pod, and a
	// request abandoned between the two leaves the budget counting a running
	// pod as disrupted for minutes. Each call gets its own bounded context.
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	callCtx, asked := withRetryAfterNote(callCtx)
	var err error
	if it.act == actDelete {
		var sent bool
		if sent, err = q.callDelete(callCtx, it.pod); !sent {
			return answer{out: outcomeSkipped}
		}
	} else {
		err = q.callEvict(callCtx, it.pod)
	}
	if err == nil {
		return answer{out: outcomeAccepted}
	}
	retryAfter := asked.get()
	if secs, ok := apierrors.SuggestsClientDelay(err); ok && retryAfter == 0 {
		retryAfter = time.Duration(secs) * time.Second
	}
	return answer{out: q.classify(ctx, it.pod, err), err: err, retryAfter: retryAfter}
}

func (q *evictionQueue) callEvict(ctx context.Context, pod *corev1.Pod) error {
	uid := pod.UID
	ev := &policyv1.Eviction{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		DeleteOptions: &metav1.DeleteOptions{
			Preconditions:      &metav1.Preconditions{UID: &uid},
			GracePeriodSeconds: evictionGrace(pod, q.clk.Now(), q.deadline, q.cfg.MinDeleteGrace),
			DryRun:             q.dryRun(),
		},
	}
	if err := q.client.CoreV1().Pods(pod.Namespace).EvictV1(ctx, ev); err != nil {
		return fmt.Errorf("evict pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// callDelete deletes pod with a grace clamped to the deadline; sent is
// false when such a delete would not end the pod sooner than it already
// ends, and nothing was sent.
func (q *evictionQueue) callDelete(ctx context.Context, pod *corev1.Pod) (sent bool, err error) {
	grace, useful := deleteGrace(pod, q.clk.Now(), q.deadline, q.cfg.MinDeleteGrace)
	if !useful {
		return false, nil
	}
	uid := pod.UID
	opts := metav1.DeleteOptions{
		GracePeriodSeconds: &grace,
		Preconditions:      &metav1.Preconditions{UID: &uid},
		DryRun:             q.dryRun(),
	}
	if err := q.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts); err != nil {
		return true, fmt.Errorf("delete pod %s/%s with grace %ds: %w", pod.Namespace, pod.Name, grace, err)
	}
	log.FromContext(ctx).V(1).Info("deleted", "pod", klog.KObj(pod), "grace", grace)
	return true, nil
}

func (q *evictionQueue) dryRun() []string {
	if q.cfg.DryRun {
		return []string{metav1.DryRunAll}
	}
	return nil
}

// classify sorts a failed call. A 409 is ambiguous for an eviction (the API
// server also returns it when its own disruption-budget update keeps
// conflicting), so the pod is read back: only a missing pod or another UID
// means this pod is gone.
func (q *evictionQueue) classify(ctx context.Context, pod *corev1.Pod, err error) outcome {
	switch {
	case apierrors.IsNotFound(err):
		return outcomeGone
	case apierrors.IsConflict(err):
		cur, getErr := q.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(getErr) || (getErr == nil && cur.UID != pod.UID) {
			return outcomeGone
		}
		return outcomeError
	case budgetRefusal(err):
		return outcomeBlocked
	case apierrors.IsTooManyRequests(err):
		return outcomeThrottled
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Code >= http.StatusInternalServerError {
		return outcomeServerError
	}
	return outcomeError
}

// budgetRefusal reports whether err is a PodDisruptionBudget refusing the
// eviction: the API server says so with a cause of type DisruptionBudget,
// on a 429 (no disruption allowed now, or the budget is being recomputed)
// and on a 403 (the budget is broken, or too many of its evictions are
// not confirmed yet). API priority and fairness also answers 429, with no
// cause: that is throttling, not a budget, and is retried differently.
func budgetRefusal(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return false
	}
	s := status.Status()
	if s.Details == nil || (s.Code != http.StatusTooManyRequests && s.Code != http.StatusForbidden) {
		return false
	}
	for _, c := range s.Details.Causes {
		if c.Type == policyv1.DisruptionBudgetCause {
			return true
		}
	}
	return false
}

func (q *evictionQueue) record(it *item, ans answer, attempt int) {
	out := ans.out
	q.mu.Lock()
	reportThrottle := false
	switch out {
	case outcomeSkipped:
	case outcomeAccepted:
		if it.act == actDelete {
			q.stats.Deleted++
		} else {
			q.stats.Evicted++
		}
	case outcomeGone:
		q.stats.Gone++
	case outcomeBlocked:
		q.stats.Retried429++
	case outcomeThrottled:
		q.stats.Throttled++
		reportThrottle, q.throttleReported = !q.throttleReported, true
	default:
		q.stats.RetriedErr++
	}
	q.mu.Unlock()

	if it.act == actEvict {
		q.cfg.Metrics.observeEviction(out)
	} else if out == outcomeAccepted {
		q.cfg.Metrics.observeEscalation(it.wave)
	}
	// One event per pod, on the first refusal: enough for its owner to see
	// that a budget held it up, without flooding the event stream.
	if q.rec == nil {
		return
	}
	if out == outcomeBlocked && attempt == 0 {
		q.rec.Eventf(it.pod, corev1.EventTypeWarning, nodemark.EventEvictionBlocked,
			"Eviction from terminating node %s refused by a PodDisruptionBudget; retrying until the drain escalates", q.cfg.NodeName)
	}
	// Throttling is about the API server, not the pod: one event on the
	// node per drain, never one on each pod as if its budget held it.
	if reportThrottle {
		q.rec.Eventf(nodemark.NodeEventRef(q.cfg.NodeName), corev1.EventTypeWarning, nodemark.EventEvictionsThrottled,
			"The API server is throttling evictions (429 without a disruption budget, Retry-After %s); retrying after the wait it asks for",
			ans.retryAfter)
	}
}
