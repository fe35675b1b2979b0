package apitest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// evictionLog records when each eviction request left the client.
type evictionLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *evictionLog) add(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.times = append(l.times, t)
}

func (l *evictionLog) snapshot() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times...)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// drainClient is a client sized for the drain's concurrency, as the agent's
// wiring sizes it, that logs eviction requests.
func drainClient(t *testing.T) (kubernetes.Interface, *evictionLog) {
	t.Helper()
	log := &evictionLog{}
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 500, 500
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/eviction") {
				log.add(time.Now())
			}
			return rt.RoundTrip(r)
		})
	})
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client, log
}

// warmSource starts a pod source for node and waits until it holds want pods.
func warmSource(t *testing.T, client kubernetes.Interface, node string, want int) *drain.PodSource {
	t.Helper()
	src := drain.NewPodSource(client, node)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d pods cached for %s", want, node), func(context.Context) (bool, string, error) {
		n := len(src.List())
		return src.HasSynced() && n == want, fmt.Sprintf("%d cached", n), nil
	})
	return src
}

func createPods(t *testing.T, pods ...*corev1.Pod) []*corev1.Pod {
	t.Helper()
	out := make([]*corev1.Pod, len(pods))
	for i, p := range pods {
		created, err := env.Client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s: %v", p.Name, err)
		}
		out[i] = created
	}
	return out
}

func markFor(window time.Duration) nodemark.Mark {
	now := time.Now()
	return nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(window)}
}

// 110 pods on a node: every one is evicted (never escalated to a delete)
// within the regular wave's time. The speed itself is measured by
// `make bench-agent`, not asserted here.
func TestAHundredAndTenPodsAreAllEvictedInTheRegularWave(t *testing.T) {
	const node, others, n = "spot-0", "ondemand-2", 110
	ns := testenv.Namespace(t, env.Client)
	var pods []*corev1.Pod
	for i := range n {
		pods = append(pods, kit.Pod(ns, fmt.Sprintf("web-%03d", i), kit.OnNode(node)))
	}
	bystander := createPods(t, kit.Pod(ns, "bystander", kit.OnNode(others)))[0]
	createPods(t, pods...)

	client, evictions := drainClient(t)
	src := warmSource(t, client, node, n)
	mark := markFor(30 * time.Second)
	d := drain.New(client, src, clock.RealClock{}, drain.Config{NodeName: node}, nil)
	began := time.Now()
	res, err := d.Run(context.Background(), mark)
	if err != nil {
		t.Fatalf("Run: %v (result %+v)", err, res)
	}
	times := evictions.snapshot()
	if len(times) != n || res.Evicted != n {
		t.Fatalf("%d eviction requests, %d accepted; want %d", len(times), res.Evicted, n)
	}
	last := times[len(times)-1].Sub(began)
	t.Logf("%d evictions issued within %s of Run starting; drained in %s", n, last.Round(time.Millisecond), res.Duration.Round(time.Millisecond))
	if cutoff := mark.Deadline.Sub(began) - drain.DefaultSystemGrace; last > cutoff || res.Deleted != 0 {
		t.Errorf("last eviction issued %s after Run started (regular wave ends at %s), %d pods escalated to delete", last, cutoff, res.Deleted)
	}
	if _, err := env.Client.CoreV1().Pods(ns).Get(context.Background(), bystander.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("a pod on another node was touched: %v", err)
	}
}

func TestADisruptionBudgetHoldsEvictionsUntilTheCutoff(t *testing.T) {
	const node = "spot-1"
	ns := testenv.Namespace(t, env.Client)
	budget := kit.PDB(ns, "db", 0)
	if _, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Create(context.Background(), budget, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	db := createPods(t, kit.Pod(ns, "db", kit.OnNode(node)))[0]
	testenv.ExpectPodsRunning(t, env.Client, ns, map[string]string{"app": "db"}, 1, 30*time.Second)
	// The disruption controller must have computed the budget, or the API
	// server refuses every eviction for another reason.
	testenv.Eventually(t, 30*time.Second, "budget observed", func(ctx context.Context) (bool, string, error) {
		b, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "db", metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return b.Status.ObservedGeneration == b.Generation && b.Status.CurrentHealthy == 1,
			fmt.Sprintf("observed %d/%d healthy %d", b.Status.ObservedGeneration, b.Generation, b.Status.CurrentHealthy), nil
	})

	client, _ := drainClient(t)
	src := warmSource(t, client, node, 1)
	mark := markFor(6 * time.Second)
	cfg := drain.Config{NodeName: node, SystemGrace: 3 * time.Second, SystemEscalateBefore: 2 * time.Second}
	res, err := drain.New(client, src, clock.RealClock{}, cfg, nil).Run(context.Background(), mark)
	if err != nil {
		t.Fatalf("Run: %v (result %+v)", err, res)
	}
	if res.Retried429 == 0 || res.Deleted != 1 {
		t.Errorf("result %+v, want refusals by the budget, then one delete at the cut-off", res)
	}
	if at := res.Started[drain.StepEscalateRegular]; at < 3*time.Second {
		t.Errorf("escalated %s after the notice, before the cut-off at 3s", at)
	}
	if time.Now().After(mark.Deadline) {
		t.Errorf("drain ended %s after the deadline", time.Since(mark.Deadline))
	}
	testenv.ExpectPodGone(t, env.Client, db, time.Second)
}

func TestAPodWithAHugeGracePeriodIsShortenedToEndByTheDeadline(t *testing.T) {
	const node = "spot-1"
	ns := testenv.Namespace(t, env.Client)
	hog := kit.Pod(ns, "hog", kit.OnNode(node))
	hog.Finalizers = []string{"termgate.dev/test-hold"}
	hog = createPods(t, hog)[0]
	t.Cleanup(func() {
		patch := []byte(`{"metadata":{"finalizers":null}}`)
		_, _ = env.Client.CoreV1().Pods(ns).Patch(context.Background(), hog.Name, "application/merge-patch+json", patch, metav1.PatchOptions{})
	})
	if err := env.Client.CoreV1().Pods(ns).Delete(context.Background(), hog.Name,
		metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](3600)}); err != nil {
		t.Fatal(err)
	}

	client, evictions := drainClient(t)
	src := warmSource(t, client, node, 1)
	mark := markFor(5 * time.Second)
	cfg := drain.Config{NodeName: node, SystemGrace: 3 * time.Second, SystemEscalateBefore: 2 * time.Second}
	res, err := drain.New(client, src, clock.RealClock{}, cfg, nil).Run(context.Background(), mark)
	if err == nil {
		t.Fatalf("Run succeeded (%+v) though a finalizer holds the pod", res)
	}
	if over := time.Since(mark.Deadline); over > 500*time.Millisecond {
		t.Errorf("Run returned %s after the deadline", over)
	}
	if len(evictions.snapshot()) != 0 {
		t.Error("a pod already being deleted was evicted")
	}
	got, err := env.Client.CoreV1().Pods(ns).Get(context.Background(), hog.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.DeletionTimestamp.After(mark.Deadline) || *got.DeletionGracePeriodSeconds >= 3600 {
		t.Errorf("deletion ends at %s with grace %ds; want by the deadline %s",
			got.DeletionTimestamp.Format(time.RFC3339), *got.DeletionGracePeriodSeconds, mark.Deadline.Format(time.RFC3339))
	}
}

func TestADryRunLeavesEveryPodInPlace(t *testing.T) {
	const node = "ondemand-2"
	ns := testenv.Namespace(t, env.Client)
	pods := createPods(t, kit.Pod(ns, "web", kit.OnNode(node)), kit.Pod(ns, "dns", kit.OnNode(node), func(p *corev1.Pod) {
		p.Spec.PriorityClassName = nodemark.PriorityClassClusterCritical
	}))

	client, evictions := drainClient(t)
	src := warmSource(t, client, node, 2)
	mark := markFor(4 * time.Second)
	cfg := drain.Config{NodeName: node, SystemGrace: 2 * time.Second, SystemEscalateBefore: time.Second, DryRun: true}
	res, err := drain.New(client, src, clock.RealClock{}, cfg, nil).Run(context.Background(), mark)
	if err == nil {
		t.Fatalf("a dry run reported the node drained: %+v", res)
	}
	if len(evictions.snapshot()) != 2 || res.Evicted != 2 || res.Deleted != 2 {
		t.Errorf("result %+v with %d eviction requests; want both pods evicted then deleted, in dry-run", res, len(evictions.snapshot()))
	}
	for _, p := range pods {
		got, err := env.Client.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && got.DeletionTimestamp != nil) {
			t.Errorf("pod %s was deleted by a dry run", p.Name)
		}
	}
}
