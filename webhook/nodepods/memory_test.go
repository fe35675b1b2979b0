package nodepods

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/test/kit"
)

// Sizes of the memory benchmark: the scale target.
const (
	memFollowedNodes = 500
	memPodsPerNode   = 20
	memNamespaces    = 10
)

// BenchmarkMemoryPerFollowedNode reports the heap the index keeps per node
// it follows (kib/followed-node): 500 nodes made terminating through the
// node cache's callback, each listed once through the index's own path,
// with 20 ReplicaSet pods a node in 10 namespaces.
func BenchmarkMemoryPerFollowedNode(b *testing.B) {
	// A first index pays for what is set up once and then reused: the
	// runtime keeps the descriptors of the list goroutines for new ones.
	followed(b, memFollowedNodes)
	var perNode float64
	for range b.N {
		perNode = followed(b, memFollowedNodes)
	}
	b.ReportMetric(perNode, "kib/followed-node")
}

// followed builds an index following nodes nodes and returns the heap it
// keeps per node, in KiB.
func followed(b *testing.B, nodes int) float64 {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lister := &decodingLister{nodes: int64(nodes), done: make(chan struct{})}
	before := kit.LiveHeap()
	x := New(lister, lister, clocktesting.NewFakeClock(time.Date(2026, 12, 3, 16, 0, 0, 0, time.UTC)), Options{})
	for i := range nodes {
		x.SetTerminating(memNodeName(i), true)
	}
	go func() { _ = x.Start(ctx) }()
	select {
	case <-lister.done:
	case <-b.Context().Done():
		b.Fatalf("%d of %d nodes listed", lister.lists.Load(), nodes)
	}
	// The lister has answered every node; each list's result is stored
	// under the index's lock right after.
	for !allListed(x, nodes) {
		runtime.Gosched()
	}
	after := kit.LiveHeap()
	if s := x.Stats(); s.Marked != nodes || s.Pods != nodes*memPodsPerNode {
		b.Fatalf("index holds %+v, want %d followed nodes and %d pods", s, nodes, nodes*memPodsPerNode)
	}
	runtime.KeepAlive(x)
	return float64(after-before) / float64(nodes) / 1024
}

func allListed(x *Index, nodes int) bool {
	for i := range nodes {
		if !x.Listed(memNodeName(i)) {
			return false
		}
	}
	return true
}

func memNodeName(i int) string { return fmt.Sprintf("gke-prod-spot-pool-%d-4f8a2c1e-%04d", i%4, i) }

// decodingLister answers each node's list with memPodsPerNode pods whose
// strings are fresh, as a decoded API answer's are: nothing the index keeps
// is shared with the benchmark.
type decodingLister struct {
	nodes int64 // how many nodes are listed
	lists atomic.Int64
	done  chan struct{} // closed after the last node's list
}

var memApps = []string{"checkout", "cart", "catalog", "payments", "search", "frontend", "recommendations", "shipping", "inventory", "notifications"}

func (l *decodingLister) PodsOn(_ context.Context, node string) ([]Pod, error) {
	var n int
	if _, err := fmt.Sscanf(node[strings.LastIndexByte(node, '-')+1:], "%d", &n); err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	pods := make([]Pod, memPodsPerNode)
	for j := range pods {
		app := memApps[j%memNamespaces]
		p := n*memPodsPerNode + j
		pods[j] = Pod{
			Namespace: strings.Clone("shop-" + app),
			Name:      fmt.Sprintf("%s-%010x-%05x", app, 0x7d9f8b6c5d+p%7, 0x1a2b3+p),
			UID:       types.UID(fmt.Sprintf("9c2e4b1a-%04x-4d3f-8a6b-%012x", j, p)),
		}
	}
	if l.lists.Add(1) == l.nodes {
		close(l.done)
	}
	return pods, nil
}

func (l *decodingLister) PodOn(context.Context, string, string, string) (Pod, bool, error) {
	return Pod{}, false, nil
}
