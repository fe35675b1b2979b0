// Package nodepods tells which pods run on a node, for the agent
// confinement: an agent may evict a pod only if that pod runs on the
// agent's own node.
//
// Design. A pod's node never changes once it is bound, and a UID is never
// reused, so "pod UID u runs on node n", once learnt, stays true for as long
// as that pod exists, and means nothing once it is gone. The index therefore
// needs no watch and never goes stale in the way that matters: it only
// lacks pods bound to the node after it last listed them. It holds, for each
// node, the UIDs of the pods seen there:
//   - warm: when the node cache sees a node become terminating, the index
//     lists that node's pods once (one metadata LIST by spec.nodeName, on a
//     client budget of its own), so the agent's first evictions, which
//     follow its mark within milliseconds, are answered from memory;
//   - on demand: an eviction of a pod the index does not hold on that node
//     waits for a list already under way, or reads that one pod (a LIST by
//     name and node), on a small budget per node, so one node's agent
//     cannot use up the reads of the others; a call over the budget is
//     refused at once rather than held;
//   - kept: a node's entry stays for a while after its mark goes, so a node
//     that flips its own mark causes no churn, and is dropped after that.
//
// Memory is a map of pod keys to UIDs per node that drained recently:
// about 150 bytes a pod, nothing for nodes that never drain, and no
// goroutine or watch per node.
package nodepods

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"k8s.io/utils/clock"
)

// Placement is what the index says about a pod and a node.
type Placement int

const (
	// OnNode: the pod with that UID runs on the node.
	OnNode Placement = iota
	// NotOnNode: no pod of that name runs on the node (it runs elsewhere,
	// or does not exist).
	NotOnNode
	// OtherUID: a pod of that name runs on the node, with another UID: the
	// one asked about is gone or elsewhere.
	OtherUID
)

func (p Placement) String() string {
	switch p {
	case OnNode:
		return "on-node"
	case NotOnNode:
		return "not-on-node"
	}
	return "other-uid"
}

// Located is the index's answer about one pod.
type Located struct {
	Placement Placement
	// Read is set when the answer needed a read of the pod through the
	// API; otherwise it came from memory (a list of the node).
	Read bool
}

// Pod is one pod's identity as the index keeps it.
type Pod struct {
	Namespace, Name string
	UID             types.UID
}

// Lister reads pods by node from the API server. Both calls go by field
// selector, which the API server answers from its watch cache's index on
// spec.nodeName.
type Lister interface {
	// PodsOn lists every pod bound to node.
	PodsOn(ctx context.Context, node string) ([]Pod, error)
	// PodOn returns the pod namespace/name if it is bound to node; found
	// is false if no such pod runs there.
	PodOn(ctx context.Context, node, namespace, name string) (pod Pod, found bool, err error)
}

// ErrBudget is returned when a node's read budget does not allow another
// read in the caller's time.
var ErrBudget = errors.New("read budget of the node exhausted")

// Options tune the index; zero fields take the defaults.
type Options struct {
	// Linger is how long a node's entry is kept after its mark goes.
	Linger time.Duration
	// Relist bounds how often a node that becomes terminating again is
	// listed again.
	Relist time.Duration
	// NodeReadQPS and NodeReadBurst are each node's budget for reads of
	// single pods.
	NodeReadQPS   float64
	NodeReadBurst int
}

// Defaults of Options.
const (
	DefaultLinger        = 10 * time.Minute
	DefaultRelist        = 5 * time.Second
	DefaultNodeReadQPS   = 10
	DefaultNodeReadBurst = 20
)

func (o Options) withDefaults() Options {
	if o.Linger <= 0 {
		o.Linger = DefaultLinger
	}
	if o.Relist <= 0 {
		o.Relist = DefaultRelist
	}
	if o.NodeReadQPS <= 0 {
		o.NodeReadQPS = DefaultNodeReadQPS
	}
	if o.NodeReadBurst <= 0 {
		o.NodeReadBurst = DefaultNodeReadBurst
	}
	return o
}

// Index holds which pods run on which nodes, for nodes that drain.
type Index struct {
	lists Lister // warm lists, on their own budget
	reads Lister // single-pod reads, on another
	clock clock.WithTicker
	opts  Options

	mu    sync.Mutex
	ctx   context.Context // nil until Start
	nodes map[string]*node
}

// node is one node's entry.
type node struct {
	pods map[string]types.UID // namespace/name -> UID
	// listing is closed when the list under way ends; nil if none runs.
	listing  chan struct{}
	listedAt time.Time // when the last list started that succeeded
	marked   bool
	// unmarkedAt is when the mark went; the entry expires Linger later.
	unmarkedAt time.Time
	reads      *rate.Limiter
}

// New returns an index. lists serves the warm list of each node that
// becomes terminating, reads the single-pod reads an eviction may need;
// give each a client with a rate limiter of its own, so that reads can
// never starve the lists that answer a drain from memory.
func New(lists, reads Lister, clk clock.WithTicker, opts Options) *Index {
	return &Index{lists: lists, reads: reads, clock: clk, opts: opts.withDefaults(), nodes: map[string]*node{}}
}

// Start lets the index list nodes until ctx ends (lists asked for before
// run then), and expires entries. It blocks until ctx ends.
func (x *Index) Start(ctx context.Context) error {
	x.mu.Lock()
	x.ctx = ctx
	for name, n := range x.nodes {
		if n.marked && n.listing == nil {
			x.listLocked(name, n)
		}
	}
	x.mu.Unlock()
	tick := x.clock.NewTicker(x.opts.Linger / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
			x.expire()
		}
	}
}

// SetTerminating is the node cache's callback: a node that becomes
// terminating is listed (unless it was listed within Relist); a node that
// stops being so is kept for Linger.
func (x *Index) SetTerminating(name string, terminating bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := x.nodes[name]
	if !terminating {
		if n != nil && n.marked {
			n.marked, n.unmarkedAt = false, x.clock.Now()
		}
		return
	}
	if n == nil {
		n = x.newNodeLocked(name)
	}
	n.marked = true
	if n.listing == nil && (n.listedAt.IsZero() || x.clock.Since(n.listedAt) >= x.opts.Relist) {
		x.listLocked(name, n)
	}
}

// Warm lists node's pods now (unless listed within Relist), for a mark
// found before the node cache's change callback delivered it: the agent's
// evictions follow its mark within milliseconds. The confinement calls it
// on every eviction, so a node the callback already followed costs a map
// lookup: its list started then. The entry expires like an unmarked
// node's unless the cache then reports the mark.
func (x *Index) Warm(name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := x.nodes[name]
	if n != nil && n.marked {
		return
	}
	if n == nil {
		n = x.newNodeLocked(name)
	}
	n.unmarkedAt = x.clock.Now()
	if n.listing == nil && (n.listedAt.IsZero() || x.clock.Since(n.listedAt) >= x.opts.Relist) {
		x.listLocked(name, n)
	}
}

func (x *Index) newNodeLocked(name string) *node {
	n := &node{pods: map[string]types.UID{}, reads: rate.NewLimiter(rate.Limit(x.opts.NodeReadQPS), x.opts.NodeReadBurst)}
	x.nodes[name] = n
	return n
}

// listLocked starts the list of node's pods, once the index runs.
func (x *Index) listLocked(name string, n *node) {
	if x.ctx == nil || x.ctx.Err() != nil {
		return
	}
	done := make(chan struct{})
	n.listing = done
	started := x.clock.Now()
	go func() {
		defer close(done)
		pods, err := x.lists.PodsOn(x.ctx, name)
		x.mu.Lock()
		defer x.mu.Unlock()
		n.listing = nil
		if err != nil {
			return // the next eviction reads its pod; a later mark lists again
		}
		n.listedAt = started
		for _, p := range pods {
			n.pods[key(p.Namespace, p.Name)] = p.UID
		}
	}()
}

// Locate says whether the pod namespace/name with uid runs on node name.
// It answers from memory when it can, waits for a list of the node under
// way, and otherwise reads the pod on the node's own budget (ErrBudget at
// once when it is spent).
func (x *Index) Locate(ctx context.Context, name, namespace, pod string, uid types.UID) (Located, error) {
	k := key(namespace, pod)
	x.mu.Lock()
	n := x.nodes[name]
	if n == nil {
		n = x.newNodeLocked(name)
		n.unmarkedAt = x.clock.Now() // not followed: expires like an unmarked node
	}
	known, listing := n.pods[k], n.listing
	x.mu.Unlock()
	if known == uid {
		return Located{Placement: OnNode}, nil
	}
	if listing != nil {
		select {
		case <-listing:
		case <-ctx.Done():
			return Located{Placement: NotOnNode}, fmt.Errorf("wait for the pods of node %s: %w", name, ctx.Err())
		}
		x.mu.Lock()
		known = n.pods[k]
		x.mu.Unlock()
		if known == uid {
			return Located{Placement: OnNode}, nil
		}
	}
	// No waiting for the budget: a call waiting here would hold one of the
	// webhook's in-flight slots, and a node's agent token flooding made-up
	// names could then fill them all.
	if !n.reads.Allow() {
		return Located{Placement: NotOnNode}, fmt.Errorf("%w (node %s)", ErrBudget, name)
	}
	p, found, err := x.reads.PodOn(ctx, name, namespace, pod)
	if err != nil {
		return Located{Placement: NotOnNode, Read: true}, fmt.Errorf("read pod %s on node %s: %w", k, name, err)
	}
	if !found {
		return Located{Placement: NotOnNode, Read: true}, nil
	}
	x.mu.Lock()
	n.pods[k] = p.UID
	x.mu.Unlock()
	if p.UID != uid {
		return Located{Placement: OtherUID, Read: true}, nil
	}
	return Located{Placement: OnNode, Read: true}, nil
}

// expire drops the entries of nodes unmarked more than Linger ago.
func (x *Index) expire() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for name, n := range x.nodes {
		if !n.marked && n.listing == nil && x.clock.Since(n.unmarkedAt) >= x.opts.Linger {
			delete(x.nodes, name)
		}
	}
}

// Followed returns the nodes marked terminating now (metrics, tests).
func (x *Index) Followed() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for name, n := range x.nodes {
		if n.marked {
			out = append(out, name)
		}
	}
	return out
}

// Stats are the index's sizes, for metrics.
type Stats struct {
	Nodes, Marked, Pods int
}

// Stats counts the entries held now.
func (x *Index) Stats() Stats {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := Stats{Nodes: len(x.nodes)}
	for _, n := range x.nodes {
		s.Pods += len(n.pods)
		if n.marked {
			s.Marked++
		}
	}
	return s
}

// Listed reports whether node has been listed since it was last marked
// (tests).
func (x *Index) Listed(name string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := x.nodes[name]
	return n != nil && !n.listedAt.IsZero() && n.listing == nil
}

func key(namespace, name string) string { return namespace + "/" + name }

var podsResource = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// APILister lists pods through a metadata client: names and UIDs are all
// the index keeps, and metadata is what a list cannot avoid sending.
type APILister struct {
	Client metadata.Interface
	// PageSize bounds one page of a node's list (the API server's own
	// default applies when zero).
	PageSize int64
}

var _ Lister = APILister{}

// PodsOn implements Lister. The list is served from the API server's watch
// cache (resourceVersion 0), through its index of pods by node, not read
// from etcd: a consistent list pages through every pod of the cluster to
// find one node's, which in a reclaim of hundreds of nodes at once took the
// lists past the agents' first evictions (make bench-scale: 897 of 2,897
// evictions failed closed, "wait for the pods of node"). A cache a moment
// behind only lacks pods bound in that moment, which the index's design
// already allows: such a pod is read on its own.
func (l APILister) PodsOn(ctx context.Context, node string) ([]Pod, error) {
	opts := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(), Limit: l.PageSize, ResourceVersion: "0"}
	var out []Pod
	for {
		list, err := l.Client.Resource(podsResource).Namespace(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list pods on node %s: %w", node, err)
		}
		for i := range list.Items {
			m := &list.Items[i]
			out = append(out, Pod{Namespace: m.Namespace, Name: m.Name, UID: m.UID})
		}
		if list.Continue == "" {
			return out, nil
		}
		opts.Continue = list.Continue
	}
}

// PodOn implements Lister.
func (l APILister) PodOn(ctx context.Context, node, namespace, name string) (Pod, bool, error) {
	sel := fields.AndSelectors(fields.OneTermEqualSelector("metadata.name", name), fields.OneTermEqualSelector("spec.nodeName", node))
	list, err := l.Client.Resource(podsResource).Namespace(namespace).List(ctx, metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		return Pod{}, false, fmt.Errorf("list pod %s/%s on node %s: %w", namespace, name, node, err)
	}
	if len(list.Items) == 0 {
		return Pod{}, false, nil
	}
	m := &list.Items[0]
	return Pod{Namespace: m.Namespace, Name: m.Name, UID: m.UID}, true, nil
}
