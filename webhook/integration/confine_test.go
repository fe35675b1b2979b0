package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/review"
)

// counterSum adds up the samples of counter name whose labels include want.
func counterSum(t *testing.T, registry *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	families, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				if !found {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func agentPodReads(t *testing.T, registry *prometheus.Registry) float64 {
	return counterSum(t, registry, "termgate_webhook_pod_reads_total", map[string]string{"gate": confine.Name})
}

// expectFollowed waits until the webhook holds the pods of node in memory.
func expectFollowed(t *testing.T, node string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "the webhook holds the pods of "+node, func(context.Context) (bool, string, error) {
		return wh.pods.Synced(node), "not listed yet", nil
	})
}

// TestTheAgentIsConfinedToItsOwnNode runs the agent's side with the
// identity the shipped DaemonSet has: its RBAC and a token bound to its pod.
// The pod's node comes from the API (node not marked) or from memory (node
// marked, the drain case); the answers must be the same.
func TestTheAgentIsConfinedToItsOwnNode(t *testing.T) {
	names := nodeNames(t)
	own, other := names[0], names[1]
	agent := agentClient(t, own)
	for _, marked := range []bool{false, true} {
		t.Run(fmt.Sprintf("node marked %v", marked), func(t *testing.T) {
			ns := testenv.Namespace(t, env.Client)
			createPod(t, kit.Pod(ns, "here", kit.OnNode(own)))
			createPod(t, kit.Pod(ns, "there", kit.OnNode(other)))
			createPod(t, kit.Pod(ns, "there-too", kit.OnNode(other)))
			if marked {
				markNode(t, own, false)
				markNode(t, other, false)
				expectFollowed(t, own)
				expectFollowed(t, other)
			}
			err := evict(agent, t, ns, "there")
			if err == nil || !strings.Contains(err.Error(), "may not evict or delete pod "+ns+"/there on node "+other) {
				t.Fatalf("eviction on another node: got %v, want a refusal", err)
			}
			err = agent.CoreV1().Pods(ns).Delete(ctx(t), "there", metav1.DeleteOptions{})
			if err == nil || !strings.Contains(err.Error(), "on node "+other) {
				t.Fatalf("delete on another node: got %v, want a refusal", err)
			}
			if err := evict(agent, t, ns, "here"); err != nil {
				t.Fatalf("eviction on its own node refused: %v", err)
			}
			// An admin is not confined.
			if err := evict(env.Client, t, ns, "there-too"); err != nil {
				t.Fatalf("admin eviction refused: %v", err)
			}
		})
	}
}

// TestATokenBoundToTheNodeObjectMayNotEvict: such a token carries the
// node-name extra but no pod-name; it is not what the DaemonSet's pods get,
// so the confinement refuses it even on its own node.
func TestATokenBoundToTheNodeObjectMayNotEvict(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	own := nodeNames(t)[0]
	agentIdentity(t, own) // installs the shipped RBAC of the agent's account
	createPod(t, kit.Pod(ns, "here", kit.OnNode(own)))
	node, err := env.Client.CoreV1().Nodes().Get(ctx(t), own, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeBound := agentTokenBoundTo(t, &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: own, UID: node.UID})
	err = evict(nodeBound, t, ns, "here")
	if err == nil || !strings.Contains(err.Error(), "not bound to a pod") {
		t.Fatalf("eviction with a Node-bound token: got %v, want a refusal", err)
	}
	err = nodeBound.CoreV1().Pods(ns).Delete(ctx(t), "here", metav1.DeleteOptions{})
	if err == nil || !strings.Contains(err.Error(), "not bound to a pod") {
		t.Fatalf("delete with a Node-bound token: got %v, want a refusal", err)
	}
}

// drainPods is how many pods the measurement evicts; the agent evicts with
// evictionConcurrency calls in flight.
const (
	drainPods           = 100
	evictionConcurrency = 10
)

// TestADrainIsConfinedWithoutReadingEachPod measures 100 evictions by a
// pod-bound agent token through the API server and the webhook, first with
// the confinement wired as it was (a GET of each pod on the webhook's
// shared client, 20 QPS, burst 40), then as it is (the pods of the marked
// node held in memory). The second must not read pods through the API.
func TestADrainIsConfinedWithoutReadingEachPod(t *testing.T) {
	names := nodeNames(t)
	oldNode, newNode := names[1], names[2]
	ns := testenv.Namespace(t, env.Client)
	for i := range drainPods {
		createPod(t, kit.Pod(ns, fmt.Sprintf("old-%d", i), kit.OnNode(oldNode)))
		createPod(t, kit.Pod(ns, fmt.Sprintf("new-%d", i), kit.OnNode(newNode)))
		createPod(t, kit.Pod(ns, fmt.Sprintf("floor-%d", i), kit.OnNode(oldNode)))
	}

	// Before: the old wiring, swapped in for the first drain.
	oldRegistry := prometheus.NewRegistry()
	oldMetrics, err := review.NewMetrics(oldRegistry)
	if err != nil {
		t.Fatal(err)
	}
	sharedCfg := rest.CopyConfig(env.Config)
	sharedCfg.QPS, sharedCfg.Burst = 20, 40
	shared, err := kubernetes.NewForConfig(sharedCfg)
	if err != nil {
		t.Fatal(err)
	}
	oldWiring := webhook.Handler(webhook.Config{
		Nodes: wh.nodes, Pods: webhook.APIPods{Client: shared}, TaintEffect: corev1.TaintEffectNoSchedule,
		Agent: confine.Options{Username: agentUser}, Metrics: oldMetrics, Log: logr.Discard(), Clock: clock.RealClock{},
	})
	current := wh.handler.swap(oldWiring)
	restored := false
	restore := func() {
		if !restored {
			wh.handler.swap(current)
			restored = true
		}
	}
	t.Cleanup(restore)
	before := drain(t, agentForDrain(t, oldNode), ns, "old-")
	restore()
	if reads := agentPodReads(t, oldRegistry); reads != drainPods {
		t.Fatalf("the old wiring read %v pods, want one per eviction (%d): the measurement does not see reads", reads, drainPods)
	}

	// The floor: the same drain by an admin, whom the webhook is not called
	// for.
	adminCfg := rest.CopyConfig(env.Config)
	adminCfg.QPS, adminCfg.Burst = 1000, 1000
	admin, err := kubernetes.NewForConfig(adminCfg)
	if err != nil {
		t.Fatal(err)
	}
	floor := drain(t, admin, ns, "floor-")

	// After: the node is marked, as the agent marks it before draining.
	markNode(t, newNode, false)
	expectFollowed(t, newNode)
	readsBefore := agentPodReads(t, wh.registry)
	cachedBefore := counterSum(t, wh.registry, "termgate_webhook_pod_cache_answers_total", map[string]string{"gate": confine.Name})
	after := drain(t, agentForDrain(t, newNode), ns, "new-")
	reads := agentPodReads(t, wh.registry) - readsBefore
	cached := counterSum(t, wh.registry, "termgate_webhook_pod_cache_answers_total", map[string]string{"gate": confine.Name}) - cachedBefore
	t.Logf("%d evictions by a pod-bound agent token: %v with a pod read per eviction (before), %v from memory (after), %v by an admin without the webhook (floor); API reads after: %v, answers from memory: %v",
		drainPods, before.Round(time.Millisecond), after.Round(time.Millisecond), floor.Round(time.Millisecond), reads, cached)
	// Every call carried its length and fitted the limits: none was turned
	// away (which failurePolicy Ignore would have hidden as an allow).
	if refused := counterSum(t, wh.registry, "termgate_webhook_requests_refused_total", nil); refused > 0 {
		t.Fatalf("%v calls refused by the server's limits during a drain", refused)
	}
	if reads > 0 || cached != drainPods {
		t.Fatalf("confinement read %v pods through the API and answered %v from memory during a drain of %d pods, want 0 and %d", reads, cached, drainPods, drainPods)
	}
}

// agentForDrain is the agent's client on node, without client-side
// throttling, so the measurement shows the server side.
func agentForDrain(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(agentIdentity(t, node).Config)
	cfg.QPS, cfg.Burst = 1000, 1000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drain evicts pods prefix0..prefix99 with the agent's concurrency and
// returns how long it took; every eviction must be allowed.
func drain(t *testing.T, agent kubernetes.Interface, ns, prefix string) time.Duration {
	t.Helper()
	work := make(chan string, drainPods)
	for i := range drainPods {
		work <- fmt.Sprintf("%s%d", prefix, i)
	}
	close(work)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []string
	)
	start := time.Now()
	for range evictionConcurrency {
		wg.Go(func() {
			for name := range work {
				if err := evict(agent, t, ns, name); err != nil {
					mu.Lock()
					errs = append(errs, name+": "+err.Error())
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if len(errs) > 0 {
		t.Fatalf("%d of %d evictions failed, first: %s", len(errs), drainPods, errs[0])
	}
	return took
}
