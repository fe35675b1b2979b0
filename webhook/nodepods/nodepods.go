// Package nodepods tells which pods run on the nodes termgate has marked,
// so the agent-confinement gate can answer an eviction without reading the
// pod through the API.
//
// Design, and why it stays small on big clusters: the agent evicts only on
// a node it has marked terminating, so the answer is needed only for those
// nodes. For each of them the cache runs one metadata-only informer on pods
// with the field selector spec.nodeName=<node>; it is started when the node
// cache sees the mark and stopped when the mark goes. Memory is therefore
// proportional to the pods of draining nodes (at most max-pods a node, 110 by
// default, times the nodes draining at once), and each entry is trimmed to
// namespace, name, UID and resource version: about 200 bytes a pod. The
// alternative, one cluster-wide pod informer trimmed to name -> node, would
// hold every pod of the cluster (150,000 on the largest clusters, tens of
// MiB) and decode every pod change in the cluster, to serve the few nodes
// that drain. Each started informer costs one LIST and one WATCH of the
// API server, issued on the confinement's own client budget.
package nodepods

import (
	"context"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

var podsResource = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// maxSyncWait bounds a lookup's wait for a node's first list (which takes
// a few milliseconds), and the wait never takes more than half the caller's
// remaining time: a list that is slow or refused must leave room for the
// caller's own read.
const maxSyncWait = 500 * time.Millisecond

// Cache holds the pods of the nodes it follows. The zero value is not
// usable; build it with New.
type Cache struct {
	client metadata.Interface

	mu      sync.RWMutex
	ctx     context.Context // nil until Start
	nodes   map[string]*nodePods
	pending map[string]bool // followed before Start
}

// nodePods is one node's informer.
type nodePods struct {
	informer cache.SharedIndexInformer
	cancel   context.CancelFunc
	done     chan struct{}
}

// New returns a cache whose informers list and watch through client; give
// it a client of its own so its requests never queue behind other callers'.
func New(client metadata.Interface) *Cache {
	return &Cache{client: client, nodes: map[string]*nodePods{}, pending: map[string]bool{}}
}

// Start lets the cache run informers until ctx ends, then stops them all.
// It blocks until ctx ends.
func (c *Cache) Start(ctx context.Context) error {
	c.mu.Lock()
	c.ctx = ctx
	for node := range c.pending {
		c.startLocked(node)
	}
	c.pending = nil
	c.mu.Unlock()
	<-ctx.Done()
	c.mu.Lock()
	stopping := c.nodes
	c.nodes = map[string]*nodePods{}
	c.mu.Unlock()
	for _, np := range stopping {
		np.cancel()
		<-np.done
	}
	return nil
}

// follow starts watching the pods of node (idempotent).
func (c *Cache) follow(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		if c.pending != nil {
			c.pending[node] = true
		}
		return
	}
	if c.ctx.Err() == nil {
		c.startLocked(node)
	}
}

// forget stops watching the pods of node (idempotent).
func (c *Cache) forget(node string) {
	c.mu.Lock()
	np := c.nodes[node]
	delete(c.nodes, node)
	if c.pending != nil {
		delete(c.pending, node)
	}
	c.mu.Unlock()
	if np != nil {
		np.cancel()
	}
}

// SetFollowed is the node cache's callback: follow a node while it is
// terminating (marked for a drain).
func (c *Cache) SetFollowed(node string, terminating bool) {
	if terminating {
		c.follow(node)
		return
	}
	c.forget(node)
}

func (c *Cache) startLocked(node string) {
	if _, ok := c.nodes[node]; ok {
		return
	}
	selector := fields.OneTermEqualSelector("spec.nodeName", node).String()
	inf := metadatainformer.NewFilteredMetadataInformer(c.client, podsResource, metav1.NamespaceAll, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.FieldSelector = selector }).Informer()
	_ = inf.SetTransform(trim) // fails only once the informer runs
	ctx, cancel := context.WithCancel(c.ctx)
	np := &nodePods{informer: inf, cancel: cancel, done: make(chan struct{})}
	c.nodes[node] = np
	go func() {
		defer close(np.done)
		inf.RunWithContext(ctx)
	}()
}

// Followed returns the nodes followed now (metrics, tests).
func (c *Cache) Followed() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.nodes))
	for n := range c.nodes {
		out = append(out, n)
	}
	return out
}

// Synced reports whether node is followed and its pods listed.
func (c *Cache) Synced(node string) bool {
	c.mu.RLock()
	np := c.nodes[node]
	c.mu.RUnlock()
	return np != nil && np.informer.HasSynced()
}

// Locate says where pod namespace/name runs, if a followed node holds it.
// It looks at node first (the caller's best guess: the agent's own node),
// waiting a little for that node's first list, then at every other
// followed node that has listed its pods. found is false when no followed
// node holds the pod: it may run on a node not followed, be gone, or be
// too new for the watch; the caller then reads it through the API.
func (c *Cache) Locate(ctx context.Context, namespace, name, node string) (where string, found bool) {
	key := namespace + "/" + name
	c.mu.RLock()
	own := c.nodes[node]
	c.mu.RUnlock()
	if own != nil && waitSynced(ctx, own.informer) && has(own.informer, key) {
		return node, true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for n, np := range c.nodes {
		if n != node && np.informer.HasSynced() && has(np.informer, key) {
			return n, true
		}
	}
	return "", false
}

func has(inf cache.SharedIndexInformer, key string) bool {
	_, ok, err := inf.GetStore().GetByKey(key)
	return err == nil && ok
}

// waitSynced waits for inf's first list, for maxSyncWait or half the time
// left in ctx at most.
func waitSynced(ctx context.Context, inf cache.SharedIndexInformer) bool {
	if inf.HasSynced() {
		return true
	}
	wait := maxSyncWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	capped := time.NewTimer(wait)
	defer capped.Stop()
	select {
	case <-inf.HasSyncedChecker().Done():
		return true
	case <-ctx.Done():
	case <-capped.C:
	}
	return inf.HasSynced()
}

// trim keeps what the key and the watch need: namespace, name, UID and
// resource version. Labels, annotations, owner references and
// managedFields, often most of a pod's metadata, are dropped.
func trim(obj any) (any, error) {
	meta, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		// Tombstones pass through untouched.
		return obj, nil
	}
	out := &metav1.PartialObjectMetadata{TypeMeta: meta.TypeMeta}
	out.Namespace = meta.Namespace
	out.Name = meta.Name
	out.UID = meta.UID
	out.ResourceVersion = meta.ResourceVersion
	return out, nil
}
