package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
	"termgate.dev/termgate/webhook/confine"
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
		return wh.pods.Listed(node), "not listed yet", nil
	})
}

// TestTheAgentIsConfinedToItsOwnNode runs the agent's side with the
// identity the shipped DaemonSet has: its RBAC and a token bound to its pod.
// It may evict only pods on its own node, and only while that node is
// marked terminating.
func TestTheAgentIsConfinedToItsOwnNode(t *testing.T) {
	names := nodeNames(t)
	own, other := names[0], names[1]
	agent := agentClient(t, own)
	ns := testenv.Namespace(t, env.Client)
	createPod(t, kit.Pod(ns, "here", kit.OnNode(own)))
	createPod(t, kit.Pod(ns, "there", kit.OnNode(other)))
	createPod(t, kit.Pod(ns, "there-too", kit.OnNode(other)))

	err := evict(agent, t, ns, "here")
	if err == nil || !strings.Contains(err.Error(), "node "+own+" is not marked terminating") {
		t.Fatalf("eviction on its own node before it is marked: got %v, want a refusal", err)
	}
	markNode(t, own, false)
	markNode(t, other, false)
	expectFollowed(t, own)
	err = evict(agent, t, ns, "there")
	if err == nil || !strings.Contains(err.Error(), "may not evict pod "+ns+"/there: it does not run on that node") {
		t.Fatalf("eviction on another node: got %v, want a refusal", err)
	}
	err = agent.CoreV1().Pods(ns).Delete(ctx(t), "there", metav1.DeleteOptions{})
	if err == nil || !strings.Contains(err.Error(), other) {
		t.Fatalf("delete on another node: got %v, want a refusal", err)
	}
	if err := evict(agent, t, ns, "here"); err != nil {
		t.Fatalf("eviction on its own draining node refused: %v", err)
	}
	// An admin is not confined.
	if err := evict(env.Client, t, ns, "there-too"); err != nil {
		t.Fatalf("admin eviction refused: %v", err)
	}
}

// TestAnEvictionWithoutTheUIDPreconditionIsRefused: the confinement's
// answer holds for the pod with the UID it checked; an eviction that does
// not say which pod it means could reach a pod of the same name created on
// another node after the check.
func TestAnEvictionWithoutTheUIDPreconditionIsRefused(t *testing.T) {
	own := nodeNames(t)[0]
	agent := agentClient(t, own)
	ns := testenv.Namespace(t, env.Client)
	createPod(t, kit.Pod(ns, "here", kit.OnNode(own)))
	markNode(t, own, false)
	err := agent.PolicyV1().Evictions(ns).Evict(ctx(t), &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "here"}})
	if err == nil || !strings.Contains(err.Error(), "preconditions.uid") {
		t.Fatalf("eviction without a UID precondition: got %v, want a refusal", err)
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
	markNode(t, own, false)
	node, err := env.Client.CoreV1().Nodes().Get(ctx(t), own, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeBound := agentTokenBoundTo(t, &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: own, UID: node.UID})
	err = evict(nodeBound, t, ns, "here")
	if err == nil || !strings.Contains(err.Error(), "not bound to a pod") {
		t.Fatalf("eviction with a Node-bound token: got %v, want a refusal", err)
	}
	// Deletes are refused by the delete policy, in the API server.
	err = nodeBound.CoreV1().Pods(ns).Delete(ctx(t), "here", metav1.DeleteOptions{})
	if err == nil || !strings.Contains(err.Error(), "must use a token bound to its own pod") {
		t.Fatalf("delete with a Node-bound token: got %v, want a refusal", err)
	}
}

// drainPods is how many pods the measurement evicts; the agent evicts with
// evictionConcurrency calls in flight.
const (
	drainPods           = 100
	evictionConcurrency = 10
)

// TestADrainIsConfinedWithoutReadingEachPod: 100 evictions by a pod-bound
// agent token through the API server and the webhook, right after the
// node's mark, are answered from the node's list alone: no pod read through
// the API, none turned away. How long such a drain takes against its floor
// (an admin's, whom the webhook is not called for) is a benchmark's figure
// (`make bench-agent`, drain110_deployed_to_floor_ratio), not this test's.
func TestADrainIsConfinedWithoutReadingEachPod(t *testing.T) {
	names := nodeNames(t)
	node := names[2]
	ns := testenv.Namespace(t, env.Client)
	for i := range drainPods {
		createPod(t, kit.Pod(ns, fmt.Sprintf("agent-%d", i), kit.OnNode(node)))
	}
	agent := agentForDrain(t, node)
	readsBefore := agentPodReads(t, wh.registry)
	cachedBefore := counterSum(t, wh.registry, "termgate_webhook_pod_cache_answers_total", map[string]string{"gate": confine.Name})
	// The agent evicts right after its mark: the webhook's list of the
	// node may still be under way, and the evictions wait for it.
	markNode(t, node, false)
	drain(t, agent, ns, "agent-")
	reads := agentPodReads(t, wh.registry) - readsBefore
	cached := counterSum(t, wh.registry, "termgate_webhook_pod_cache_answers_total", map[string]string{"gate": confine.Name}) - cachedBefore
	// Every call carried its length and fitted the limits: none was turned
	// away.
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

// drain evicts the pods prefix0, prefix1, ... of ns (drainPods of them, or
// as many as exist) with the agent's concurrency and returns how long it
// took; every eviction must be allowed.
func drain(t *testing.T, agent kubernetes.Interface, ns, prefix string) time.Duration {
	t.Helper()
	n := drainPods
	if list, err := env.Client.CoreV1().Pods(ns).List(ctx(t), metav1.ListOptions{}); err == nil {
		have := 0
		for _, p := range list.Items {
			if strings.HasPrefix(p.Name, prefix) {
				have++
			}
		}
		n = min(n, have)
	}
	work := make(chan string, n)
	for i := range n {
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
		t.Fatalf("%d of %d evictions failed, first: %s", len(errs), n, errs[0])
	}
	return took
}

// TestAStolenAgentTokenCannotEvictOnAnotherNode: the holder of a node's
// agent token (root on that node) floods the webhook with dry-run
// evictions of made-up pod names, which need a read each, and flips its own
// node's mark, which used to start and stop a pod informer each time. None
// of it lets it evict a pod on another node, and the agent of a node that
// really drains meanwhile has every eviction of its own pods allowed.
func TestAStolenAgentTokenCannotEvictOnAnotherNode(t *testing.T) {
	names := nodeNames(t)
	stolenOn, drainingOn := names[0], names[1]
	ns := testenv.Namespace(t, env.Client)
	const victims = 20
	for i := range victims {
		createPod(t, kit.Pod(ns, fmt.Sprintf("victim-%d", i), kit.OnNode(drainingOn)))
	}
	thief, owner := agentForDrain(t, stolenOn), agentForDrain(t, drainingOn)
	markNode(t, stolenOn, false)
	markNode(t, drainingOn, false)
	expectFollowed(t, drainingOn)

	flood, stop := context.WithCancel(ctx(t))
	var wg sync.WaitGroup
	var floods, stolen atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			for i := 0; flood.Err() == nil; i++ {
				ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("made-up-%d-%d", w, i)},
					DeleteOptions: &metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}, Preconditions: &metav1.Preconditions{UID: ptr.To(types.UID("x"))}}}
				_ = thief.PolicyV1().Evictions(ns).Evict(flood, ev)
				floods.Add(1)
			}
		})
	}
	wg.Go(func() {
		// The thief flips its own node's mark as fast as it can.
		for i := 0; flood.Err() == nil; i++ {
			state := `"terminating"`
			if i%2 == 1 {
				state = "null"
			}
			body := []byte(`{"metadata":{"annotations":{"` + nodemark.AnnotationState + `":` + state + `}}}`)
			_, _ = thief.CoreV1().Nodes().Patch(flood, stolenOn, types.MergePatchType, body, metav1.PatchOptions{})
		}
	})
	wg.Go(func() {
		for flood.Err() == nil {
			for i := range victims {
				if evict(thief, t, ns, fmt.Sprintf("victim-%d", i)) == nil {
					stolen.Add(1)
				}
			}
		}
	})
	// Let the flood use up the thief's node's read budget before the
	// draining node's agent evicts.
	testenv.Eventually(t, 10*time.Second, "the flood under way", func(context.Context) (bool, string, error) {
		return floods.Load() >= 200, fmt.Sprintf("%d sent", floods.Load()), nil
	})
	took := drain(t, owner, ns, "victim-")
	stop()
	wg.Wait()
	t.Logf("during %d dry-run evictions of made-up names and the thief's mark flips, the draining node's %d evictions took %v",
		floods.Load(), victims, took.Round(time.Millisecond))
	if n := stolen.Load(); n > 0 {
		t.Fatalf("the token of %s evicted %d pods on %s", stolenOn, n, drainingOn)
	}
	if floods.Load() == 0 {
		t.Fatal("the flood sent nothing: the test checked nothing")
	}
}
