// Package nodecache keeps the termination marks of every Node in memory, fed
// by a metadata-only informer: the mark lives in annotations, so the webhook
// never needs node specs or statuses. Lookups are map reads under a read
// lock; the bind gate's fast path makes no API call. A Confirmer in front of
// the cache re-reads the few nodes a mark may reach at any moment (Spot
// VMs), because an informer can be a second behind when it matters most.
package nodecache

import (
	"context"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"termgate.dev/termgate/nodemark"
)

// NodesResource is the resource the cache and the Confirmer read.
var NodesResource = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// Node is what a gate learns about a node.
type Node struct {
	// Mark is the parsed mark; its zero value means "not marked". A
	// malformed mark still carries its state, and a node said to be
	// terminating is treated as terminating (the agent rewrites or removes
	// a malformed mark on its own node, and logs it).
	Mark nodemark.Mark
	// Labels holds only the labels the cache was asked to keep (those a
	// Confirmer's selectors read); nil otherwise.
	Labels map[string]string
	// Unconfirmed is set when the node needed a fresh read and the read
	// failed: the answer is the cache's and may be behind.
	Unconfirmed bool
}

// Terminating reports whether binds onto the node must be checked.
func (n Node) Terminating() bool { return n.Mark.Terminating() }

// Lookup is what a gate needs of the node state; tests pass their own.
// ctx bounds any API read behind the answer.
type Lookup interface {
	Lookup(ctx context.Context, name string) (Node, bool)
}

var _ Lookup = (*Cache)(nil)

// Cache answers lookups from an informer store.
type Cache struct {
	store    cache.Store
	informer cache.SharedIndexInformer
}

// New builds a cache fed by a metadata informer on Nodes. It keeps the
// labels named in keepLabels, for a Confirmer's selectors. Run it with
// Start.
func New(client metadata.Interface, keepLabels []string) *Cache {
	inf := metadatainformer.NewFilteredMetadataInformer(client, NodesResource, "", 0, cache.Indexers{}, nil).Informer()
	// Keep only what a lookup reads: the name, termgate's annotations and
	// the labels asked for. With thousands of nodes this keeps the cache to
	// a few hundred bytes a node instead of the full metadata with
	// managedFields.
	_ = inf.SetTransform(trimmer(slices.Clone(keepLabels)))
	return &Cache{store: inf.GetStore(), informer: inf}
}

// NewFromStore wraps a store the caller fills (tests and the load
// generator). Objects must be *metav1.PartialObjectMetadata keyed by name.
func NewFromStore(store cache.Store) *Cache { return &Cache{store: store} }

// NewStore returns an empty store suitable for NewFromStore.
func NewStore() cache.Store { return cache.NewStore(cache.MetaNamespaceKeyFunc) }

// Start runs the informer until ctx ends and waits for the first list.
func (c *Cache) Start(ctx context.Context) error {
	if c.informer == nil {
		return nil
	}
	go c.informer.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return fmt.Errorf("node cache: not synced before shutdown")
	}
	return nil
}

// HasSynced reports whether the first list has been stored (readiness).
func (c *Cache) HasSynced() bool { return c.informer == nil || c.informer.HasSynced() }

// OnTerminatingChange calls fn(node, terminating) whenever the cache learns
// that a node became terminating (marked for a drain, even with a malformed
// mark) or stopped being so, including nodes listed at start and deleted
// nodes (false). A node only in the advance state does not count: it is not
// drained, and such marks may stay for days before a maintenance window.
// fn runs on the informer's goroutine and must not block. A cache built
// with NewFromStore never calls it. Call before Start.
func (c *Cache) OnTerminatingChange(fn func(node string, terminating bool)) {
	if c.informer == nil {
		return
	}
	report := func(obj any, deleted bool) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj, deleted = d.Obj, true
		}
		meta, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return
		}
		fn(meta.Name, nodeFrom(meta).Terminating() && !deleted)
	}
	_, _ = c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { report(obj, false) },
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*metav1.PartialObjectMetadata)
			n, _ := obj.(*metav1.PartialObjectMetadata)
			if o != nil && n != nil {
				// Whether a node is terminating follows from its state
				// annotation alone; resyncs and unrelated changes, most
				// updates, keep it as it was and skip parsing the mark.
				key := nodemark.AnnotationState
				if o.Annotations[key] == n.Annotations[key] || nodeFrom(o).Terminating() == nodeFrom(n).Terminating() {
					return
				}
			}
			report(obj, false)
		},
		DeleteFunc: func(obj any) { report(obj, true) },
	})
}

// Lookup returns the node named name from memory; known is false on a
// cache miss. It never calls the API, so ctx is unused.
func (c *Cache) Lookup(_ context.Context, name string) (n Node, known bool) {
	obj, known, err := c.store.GetByKey(name)
	if err != nil || !known {
		return Node{}, false
	}
	meta, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return Node{}, false
	}
	return nodeFrom(meta), true
}

// nodeFrom reads a node's mark and labels from its metadata.
func nodeFrom(meta *metav1.PartialObjectMetadata) Node {
	// An unmarked node reads as the zero Mark; a malformed one keeps its
	// state (see Node.Mark).
	m, _, _ := nodemark.Read(meta.Annotations)
	return Node{Mark: m, Labels: meta.Labels}
}

const annotationPrefix = "termgate.dev/"

// trimmer returns a transform that drops all metadata but the name, UID,
// resource version, termgate's annotations and the labels in keepLabels.
func trimmer(keepLabels []string) cache.TransformFunc {
	return func(obj any) (any, error) {
		meta, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			// Tombstones and other wrappers pass through untouched.
			return obj, nil
		}
		out := &metav1.PartialObjectMetadata{TypeMeta: meta.TypeMeta}
		out.Name = meta.Name
		out.UID = meta.UID
		out.ResourceVersion = meta.ResourceVersion
		for k, v := range meta.Annotations {
			if strings.HasPrefix(k, annotationPrefix) {
				if out.Annotations == nil {
					out.Annotations = make(map[string]string, len(nodemark.AnnotationKeys))
				}
				out.Annotations[k] = v
			}
		}
		for _, k := range keepLabels {
			if v, ok := meta.Labels[k]; ok {
				if out.Labels == nil {
					out.Labels = make(map[string]string, len(keepLabels))
				}
				out.Labels[k] = v
			}
		}
		return out, nil
	}
}

// NodeMeta returns a node object for NewFromStore with the given annotations.
func NodeMeta(name string, annotations map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
	}
}

// Placement is what a gate that admits a pod onto a node learns of the
// node before looking at the pod.
type Placement int

const (
	// PlaceUnknown: the cache does not hold the node (just created, or
	// the cache is behind); the gates fail open, as their registrations do.
	PlaceUnknown Placement = iota
	// PlaceUnconfirmed: the node needed a fresh read and it failed; the
	// cache says it is not terminating but may be behind.
	PlaceUnconfirmed
	// PlaceFree: the node is not terminating.
	PlaceFree
	// PlaceTerminating: the node is marked terminating; the pod must
	// tolerate the termination taint.
	PlaceTerminating
)

// Place looks node name up for a gate placing a pod there. A dry-run
// request is answered from the cache alone: it changes nothing, so it must
// not spend the re-reads that real binds need.
func Place(ctx context.Context, nodes Lookup, name string, dryRun bool) (Node, Placement) {
	if dryRun {
		ctx = WithoutReread(ctx)
	}
	n, known := nodes.Lookup(ctx, name)
	switch {
	case !known:
		return n, PlaceUnknown
	case n.Terminating():
		return n, PlaceTerminating
	case n.Unconfirmed:
		return n, PlaceUnconfirmed
	}
	return n, PlaceFree
}
