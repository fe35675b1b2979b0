package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

// observer follows the nodes' taints and the run's pods' evictions, each
// time taken when the watch event arrives.
type observer struct {
	mu      sync.Mutex
	onTaint func(node string)    // called once per node, when first seen tainted
	tainted map[string]time.Time // node -> first seen with the termination taint
	evicted map[string]time.Time // pod -> first seen being deleted (or gone)
	stop    context.CancelFunc
	done    sync.WaitGroup
}

// observe starts the watches; onTaint, if not nil, is called (on the
// watch's goroutine: it must not block) when a node is first seen tainted.
func (e *env) observe(ctx context.Context, onTaint func(node string)) (*observer, error) {
	ctx, cancel := context.WithCancel(ctx)
	obs := &observer{onTaint: onTaint, tainted: map[string]time.Time{}, evicted: map[string]time.Time{}, stop: cancel}
	client := e.c.Client
	nodes, err := asdeployed.ResumingWatch(ctx,
		func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := client.CoreV1().Nodes().List(ctx, o)
			if err != nil {
				return "", err
			}
			return l.ResourceVersion, nil
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Nodes().Watch(ctx, o)
		},
		metav1.ListOptions{})
	if err != nil {
		cancel()
		return nil, err
	}
	pods, err := asdeployed.ResumingWatch(ctx,
		func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := client.CoreV1().Pods("").List(ctx, o)
			if err != nil {
				return "", err
			}
			return l.ResourceVersion, nil
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Pods("").Watch(ctx, o)
		},
		metav1.ListOptions{LabelSelector: podLabel})
	if err != nil {
		cancel()
		nodes.Stop()
		return nil, err
	}
	obs.done.Go(func() {
		defer nodes.Stop()
		for ev := range nodes.ResultChan() {
			if n, ok := ev.Object.(*corev1.Node); ok && slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == nodemark.TaintKey }) {
				if obs.first(obs.tainted, n.Name) && obs.onTaint != nil {
					obs.onTaint(n.Name)
				}
			}
		}
	})
	obs.done.Go(func() {
		defer pods.Stop()
		for ev := range pods.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok && (ev.Type == watch.Deleted || p.DeletionTimestamp != nil) {
				obs.first(obs.evicted, p.Name)
			}
		}
	})
	return obs, nil
}

// first records key's time unless it has one, and says whether it was
// new.
func (o *observer) first(m map[string]time.Time, key string) bool {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := m[key]; ok {
		return false
	}
	m[key] = now
	return true
}

func (o *observer) snapshot() (tainted, evicted map[string]time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return clone(o.tainted), clone(o.evicted)
}

func clone(m map[string]time.Time) map[string]time.Time {
	out := make(map[string]time.Time, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (o *observer) close() { o.stop(); o.done.Wait() }

// result is what the agents' run gave.
type result struct {
	marksProcess, marksInProcess []float64 // ms
	allMarked                    time.Duration
	doneByDeadline               float64
	span                         time.Duration // first to last eviction seen
	peakPerSecond                float64
	results                      map[string]float64 // agents' eviction results, summed
	webhookRise, apiRise         map[string]float64
	webhookRSS                   float64
	// callsPerProcess is the API calls each agent process made from the
	// first notice to the end of the drains, by its client's own count.
	callsPerProcess float64
}

// reclaim preempts every Spot node over the spread and waits until every
// pod is evicted or the deadlines pass.
func (e *env) reclaim(ctx context.Context, o options) (*result, error) {
	obs, err := e.observe(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer obs.close()
	webhookBefore, err := asdeployed.Counters(ctx, e.metrics, e.webhook.MetricsAddr, "termgate_webhook_decisions_total", "termgate_webhook_pod_reads_total")
	if err != nil {
		return nil, err
	}
	apiBefore, err := e.apiCounters(ctx)
	if err != nil {
		return nil, err
	}
	callsBefore, err := e.processCalls(ctx)
	if err != nil {
		return nil, err
	}
	noticed := map[string]time.Time{}
	tick := time.NewTicker(o.spread / time.Duration(len(e.spot)))
	first := time.Now()
	for _, node := range e.spot {
		<-tick.C
		noticed[node] = time.Now()
		e.servers[node].SetPreempted(true)
	}
	tick.Stop()
	say("%d nodes preempted within %s", len(e.spot), since(first))
	total := len(e.spot) * o.podsPerNode
	deadline := noticed[e.spot[len(e.spot)-1]].Add(o.notice)
	err = kit.Poll(ctx, time.Until(deadline), func(context.Context) (bool, string, error) {
		tainted, evicted := obs.snapshot()
		n := 0
		for name := range evicted {
			if isSpotPod(e, name) {
				n++
			}
		}
		return n == total && len(tainted) >= len(e.spot), fmt.Sprintf("%d of %d nodes tainted, %d of %d pods evicted", len(tainted), len(e.spot), n, total), nil
	})
	if err != nil {
		say("not every pod evicted by the last deadline: %v", err)
	}
	tainted, evicted := obs.snapshot()
	r := e.marks(tainted, noticed, first, o.notice)
	done := 0
	for _, node := range e.spot {
		ok := true
		for i := range o.podsPerNode {
			at, seen := evicted[fmt.Sprintf("%s-%d", node, i)]
			ok = ok && seen && at.Before(noticed[node].Add(o.notice))
		}
		if ok {
			done++
		}
	}
	r.doneByDeadline = float64(done) / float64(len(e.spot))
	r.span, r.peakPerSecond = rate(evicted, func(name string) bool { return isSpotPod(e, name) })
	if r.results, err = e.evictionResults(ctx); err != nil {
		return nil, err
	}
	after, err := asdeployed.Counters(ctx, e.metrics, e.webhook.MetricsAddr, "termgate_webhook_decisions_total", "termgate_webhook_pod_reads_total")
	if err != nil {
		return nil, err
	}
	r.webhookRise = localrun.Rise(webhookBefore, after)
	apiAfter, err := e.apiCounters(ctx)
	if err != nil {
		return nil, err
	}
	r.apiRise = localrun.Rise(apiBefore, apiAfter)
	callsAfter, err := e.processCalls(ctx)
	if err != nil {
		return nil, err
	}
	if len(e.processes) > 0 {
		r.callsPerProcess = (callsAfter - callsBefore) / float64(len(e.processes))
	}
	if m, err := asdeployed.ReadMemory(e.webhook.PID()); err == nil {
		r.webhookRSS = m.RSS
	}
	say("agents: %d pods evicted over %s, peak %.0f/s; eviction results %v; webhook %v; API server %v", len(evicted), r.span.Round(time.Millisecond), r.peakPerSecond, r.results, r.webhookRise, r.apiRise)
	return r, nil
}

// marks are each preempted node's notice-to-taint times, by group (a node
// never seen tainted counts as its whole notice), and the time from the
// first notice to the last taint.
func (e *env) marks(tainted, noticed map[string]time.Time, first time.Time, notice time.Duration) *result {
	r := &result{}
	var lastTaint time.Time
	for _, node := range e.spot {
		at, ok := tainted[node]
		if !ok {
			at = noticed[node].Add(notice)
		}
		ms := float64(at.Sub(noticed[node]).Microseconds()) / 1000
		if e.isProcess[node] {
			r.marksProcess = append(r.marksProcess, ms)
		} else {
			r.marksInProcess = append(r.marksInProcess, ms)
		}
		lastTaint = maxTime(lastTaint, at)
	}
	r.allMarked = lastTaint.Sub(first)
	return r
}

// evictionResults sums the agents' eviction results, by result, from their
// own counters.
func (e *env) evictionResults(ctx context.Context) (map[string]float64, error) {
	results := map[string]float64{}
	for _, a := range e.inProcess {
		for _, res := range []string{"accepted", "gone", "blocked", "throttled", "server_error", "error"} {
			v, err := a.Counter("termgate_drain_evictions_total", map[string]string{"result": res})
			if err != nil {
				return nil, err
			}
			results[res] += v
		}
	}
	for _, a := range e.processes {
		c, err := asdeployed.Counters(ctx, e.metrics, a.MetricsAddr, "termgate_drain_evictions_total")
		if err != nil {
			return nil, err
		}
		for k, v := range c {
			if _, res, ok := strings.Cut(k, `result="`); ok {
				results[strings.TrimSuffix(res, `"}`)] += v
			}
		}
	}
	return results, nil
}

// processCalls sums the agent processes' API requests (client-go's own
// count, every verb and answer). The in-process agents share one
// process's client-go counters, so only the processes can say what one
// node's agent costs.
func (e *env) processCalls(ctx context.Context) (float64, error) {
	n := 0.0
	for _, a := range e.processes {
		c, err := asdeployed.Counters(ctx, e.metrics, a.MetricsAddr, "rest_client_requests_total{")
		if err != nil {
			return 0, err
		}
		for _, v := range c {
			n += v
		}
	}
	return n, nil
}

// isSpotPod tells the agents' pods (on Spot nodes) from the floor's.
func isSpotPod(e *env, pod string) bool {
	i := strings.LastIndexByte(pod, '-')
	return i > 0 && e.isSpot[pod[:i]]
}

// rate is the span from the first to the last eviction of the pods keep
// selects, and the most evictions seen within one second.
func rate(evicted map[string]time.Time, keep func(string) bool) (time.Duration, float64) {
	var ts []time.Time
	for name, at := range evicted {
		if keep(name) {
			ts = append(ts, at)
		}
	}
	if len(ts) == 0 {
		return 0, 0
	}
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	peak, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= time.Second {
			j++
		}
		peak = max(peak, i-j+1)
	}
	return ts[len(ts)-1].Sub(ts[0]), float64(peak)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// apiCounters reads the API server's fail-open and APF rejection counters.
func (e *env) apiCounters(ctx context.Context) (map[string]float64, error) {
	body, err := e.c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("API server metrics: %w", err)
	}
	return localrun.Samples(string(body), "apiserver_admission_webhook_fail_open_count", "apiserver_flowcontrol_rejected_requests_total"), nil
}

// floorResult is the minimal client's run.
type floorResult struct {
	span          time.Duration
	peakPerSecond float64
	refused       map[string]int // refusals by reason, each asked again
}

// floor evicts as many pods on the idle nodes, per node all at once, the
// nodes' groups started at the notices' offsets, with admin credentials
// and no rate limit.
func (e *env) floor(ctx context.Context, o options) (*floorResult, error) {
	nodes := e.idle[:len(e.spot)]
	began := time.Now()
	if err := e.placePods(ctx, nodes, o.podsPerNode, "floor"); err != nil {
		return nil, err
	}
	say("floor: %d pods running on %d idle nodes (%s)", len(nodes)*o.podsPerNode, len(nodes), since(began))
	obs, err := e.observe(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer obs.close()
	cfg := rest.CopyConfig(e.c.Config)
	cfg.QPS, cfg.Burst = -1, 0 // no client-side limit
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	refused := map[string]int{}
	var wg sync.WaitGroup
	step := o.spread / time.Duration(len(nodes))
	tick := time.NewTicker(step)
	for _, node := range nodes {
		<-tick.C
		for i := range o.podsPerNode {
			name := fmt.Sprintf("%s-%d", node, i)
			ns := e.namespaceOf(i)
			wg.Go(func() {
				// As any client does: a refused eviction is asked again,
				// after the delay the API server suggests.
				for ctx.Err() == nil {
					ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
					err := client.CoreV1().Pods(ns).EvictV1(ctx, ev)
					if err == nil || apierrors.IsNotFound(err) {
						return
					}
					mu.Lock()
					refused[string(apierrors.ReasonForError(err))]++
					mu.Unlock()
					delay := 100 * time.Millisecond
					if s, ok := apierrors.SuggestsClientDelay(err); ok {
						delay = time.Duration(s) * time.Second
					}
					select {
					case <-ctx.Done():
					case <-time.After(delay):
					}
				}
			})
		}
	}
	tick.Stop()
	wg.Wait()
	total := len(nodes) * o.podsPerNode
	isFloor := func(name string) bool { return !isSpotPod(e, name) }
	err = kit.Poll(ctx, o.notice, func(context.Context) (bool, string, error) {
		_, evicted := obs.snapshot()
		n := 0
		for name := range evicted {
			if isFloor(name) {
				n++
			}
		}
		return n == total, fmt.Sprintf("%d of %d floor pods seen evicted", n, total), nil
	})
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	_, evicted := obs.snapshot()
	f := &floorResult{refused: refused}
	f.span, f.peakPerSecond = rate(evicted, isFloor)
	say("floor: %d pods evicted over %s, peak %.0f/s, refusals asked again %v", total, f.span.Round(time.Millisecond), f.peakPerSecond, refused)
	return f, nil
}
