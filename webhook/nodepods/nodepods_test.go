package nodepods

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
)

// The field selectors are applied by the API server; webhook/integration
// tests APILister against a real one. These tests cover the index's own
// logic with an API that applies them the same way.

// api holds pods by node and counts the calls made.
type api struct {
	mu    sync.Mutex
	pods  map[string][]Pod // node -> pods
	err   error
	hold  chan struct{} // when set, a list waits for a value
	lists int
	reads int
}

func (a *api) PodsOn(ctx context.Context, node string) ([]Pod, error) {
	a.mu.Lock()
	a.lists++
	hold, err := a.hold, a.err
	pods := append([]Pod(nil), a.pods[node]...)
	a.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return pods, err
}

func (a *api) PodOn(_ context.Context, node, namespace, name string) (Pod, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reads++
	if a.err != nil {
		return Pod{}, false, a.err
	}
	for _, p := range a.pods[node] {
		if p.Namespace == namespace && p.Name == name {
			return p, true, nil
		}
	}
	return Pod{}, false, nil
}

func (a *api) bind(node string, p Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pods[node] = append(a.pods[node], p)
}

func (a *api) counts() (lists, reads int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lists, a.reads
}

func web(i string) Pod {
	return Pod{Namespace: "apps", Name: "web-" + i, UID: types.UID("uid-web-" + i)}
}

func startIndex(t *testing.T, a *api, opts Options) (*Index, *clocktesting.FakeClock) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	x := New(a, a, clk, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = x.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, func() bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.ctx != nil
	})
	return x, clk
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func locate(t *testing.T, x *Index, node string, p Pod) Located {
	t.Helper()
	got, err := x.Locate(context.Background(), node, p.Namespace, p.Name, p.UID)
	if err != nil {
		t.Fatalf("locate %s on %s: %v", p.Name, node, err)
	}
	return got
}

// TestAMarkedNodeIsAnsweredFromMemory: the list that starts when the mark
// is seen answers every eviction of the drain, with no read per pod.
func TestAMarkedNodeIsAnsweredFromMemory(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {web("1"), web("2")}, "node-b": {web("3")}}}
	x, _ := startIndex(t, a, Options{})
	x.SetTerminating("node-a", true)
	waitFor(t, func() bool { return x.Listed("node-a") })
	for _, p := range []Pod{web("1"), web("2")} {
		if got := locate(t, x, "node-a", p); got != (Located{Placement: OnNode}) {
			t.Fatalf("%s: got %+v, want on the node from memory", p.Name, got)
		}
	}
	if got := locate(t, x, "node-a", web("3")); got.Placement != NotOnNode {
		t.Fatalf("a pod of node-b answered %v on node-a", got.Placement)
	}
	if lists, reads := a.counts(); lists != 1 || reads != 1 {
		t.Fatalf("%d lists and %d reads, want 1 list and 1 read (for the pod it did not hold)", lists, reads)
	}
}

// TestAnEvictionArrivingDuringTheListWaitsForIt: the agent's first
// evictions can come before the list answered; they wait for it instead
// of reading each pod.
func TestAnEvictionArrivingDuringTheListWaitsForIt(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {web("1")}}, hold: make(chan struct{})}
	x, _ := startIndex(t, a, Options{})
	x.SetTerminating("node-a", true)
	waitFor(t, func() bool { l, _ := a.counts(); return l == 1 })
	got := make(chan Located, 1)
	go func() { got <- locate(t, x, "node-a", web("1")) }()
	close(a.hold)
	if l := <-got; l != (Located{Placement: OnNode}) {
		t.Fatalf("got %+v, want on the node from the list", l)
	}
	if _, reads := a.counts(); reads != 0 {
		t.Fatalf("%d reads, want none", reads)
	}
}

// TestAPodBoundAfterTheListIsReadOnce: a pod the list did not see is read,
// then held.
func TestAPodBoundAfterTheListIsReadOnce(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {web("1")}}}
	x, _ := startIndex(t, a, Options{})
	x.SetTerminating("node-a", true)
	waitFor(t, func() bool { return x.Listed("node-a") })
	a.bind("node-a", web("late"))
	for range 3 {
		if got := locate(t, x, "node-a", web("late")); got.Placement != OnNode {
			t.Fatalf("got %+v, want on the node", got)
		}
	}
	if _, reads := a.counts(); reads != 1 {
		t.Fatalf("%d reads, want 1", reads)
	}
}

// TestAReplacedPodIsToldApartByItsUID: a pod of the same name with another
// UID is not the pod asked about.
func TestAReplacedPodIsToldApartByItsUID(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {web("1")}}}
	x, _ := startIndex(t, a, Options{})
	x.SetTerminating("node-a", true)
	waitFor(t, func() bool { return x.Listed("node-a") })
	old := web("1")
	old.UID = "uid-of-an-older-pod"
	if got := locate(t, x, "node-a", old); got.Placement != OtherUID {
		t.Fatalf("got %+v, want another UID", got)
	}
}

// TestOneNodesReadsCannotSpendAnothersBudget: made-up names by the agent of
// one node exhaust that node's reads only (ErrBudget there, fail closed);
// another node's agent still gets its reads.
func TestOneNodesReadsCannotSpendAnothersBudget(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {}, "node-b": {web("b")}}}
	x, _ := startIndex(t, a, Options{NodeReadQPS: 0.001, NodeReadBurst: 5})
	refused := 0
	for i := range 50 {
		_, err := x.Locate(context.Background(), "node-a", "apps", "made-up-"+string(rune('a'+i%26)), "uid")
		if errors.Is(err, ErrBudget) {
			refused++
		}
	}
	if _, reads := a.counts(); reads != 5 || refused != 45 {
		t.Fatalf("%d reads and %d refusals for node-a's 50 made-up names, want 5 and 45", reads, refused)
	}
	if got := locate(t, x, "node-b", web("b")); got.Placement != OnNode {
		t.Fatalf("node-b's agent got %+v, want its pod on its node", got)
	}
}

// TestANodeFlippingItsMarkCausesNoChurn: unmark and mark again within the
// relist interval costs no new list; the entry outlives the mark for
// Linger, then goes.
func TestANodeFlippingItsMarkCausesNoChurn(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {web("1")}}}
	x, clk := startIndex(t, a, Options{Linger: time.Minute, Relist: 5 * time.Second})
	x.SetTerminating("node-a", true)
	waitFor(t, func() bool { return x.Listed("node-a") })
	for range 20 {
		x.SetTerminating("node-a", false)
		x.SetTerminating("node-a", true)
	}
	if lists, _ := a.counts(); lists != 1 {
		t.Fatalf("%d lists for a node flipping its mark 20 times within the relist interval, want 1", lists)
	}
	x.SetTerminating("node-a", false)
	clk.Step(30 * time.Second)
	if got := locate(t, x, "node-a", web("1")); got != (Located{Placement: OnNode}) {
		t.Fatalf("got %+v 30s after the mark went, want the kept entry", got)
	}
	// The index's ticker runs on the fake clock: step it until it has
	// swept the entry.
	waitFor(t, func() bool { clk.Step(15 * time.Second); return x.Stats().Nodes == 0 })
}

// TestAMarkFoundBeforeTheCacheWarmsTheNode: the confinement's re-read of
// an agent's node finds the mark first; the list starts then, and the
// entry expires unless the cache reports the mark.
func TestAMarkFoundBeforeTheCacheWarmsTheNode(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {web("1")}}}
	x, clk := startIndex(t, a, Options{Linger: time.Minute})
	x.Warm("node-a")
	waitFor(t, func() bool { return x.Listed("node-a") })
	if got := locate(t, x, "node-a", web("1")); got != (Located{Placement: OnNode}) {
		t.Fatalf("got %+v, want on the node from the warm list", got)
	}
	if s := x.Stats(); s.Marked != 0 {
		t.Fatalf("a warmed node counts as followed: %+v", s)
	}
	waitFor(t, func() bool { clk.Step(15 * time.Second); return x.Stats().Nodes == 0 })
}

// TestWarmingAFollowedNodeListsNothingMore: the confinement warms the
// agent's node on every eviction; once the cache's callback follows the
// node, that costs no list however long the drain lasts.
func TestWarmingAFollowedNodeListsNothingMore(t *testing.T) {
	a := &api{pods: map[string][]Pod{"node-a": {web("1")}}}
	x, clk := startIndex(t, a, Options{Linger: time.Minute, Relist: 5 * time.Second})
	x.SetTerminating("node-a", true)
	waitFor(t, func() bool { return x.Listed("node-a") })
	for range 20 {
		clk.Step(10 * time.Second) // past Relist each time
		x.Warm("node-a")
		waitFor(t, func() bool { return x.Listed("node-a") }) // a list it started has ended
	}
	if lists, _ := a.counts(); lists != 1 {
		t.Fatalf("%d lists for 20 evictions of a followed node over 200 s, want the callback's 1", lists)
	}
}
