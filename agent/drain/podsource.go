package drain

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// PodSource caches the pods bound to one node. It lists and watches with the
// field selector spec.nodeName=<node>, never every pod of the cluster, so its
// cost does not grow with the cluster. The agent starts it once at start-up,
// so a drain begins with a warm cache instead of a LIST on the critical path.
type PodSource struct {
	nodeName string
	informer cache.SharedIndexInformer

	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// NewPodSource creates the source; Start or Run begins the watch.
func NewPodSource(client kubernetes.Interface, nodeName string) *PodSource {
	selector := fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
	inf := coreinformers.NewFilteredPodInformer(client, metav1.NamespaceAll, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.FieldSelector = selector })
	s := &PodSource{nodeName: nodeName, informer: inf, subs: map[chan struct{}]struct{}{}}
	// Both calls fail only on an informer that was already started or
	// stopped, which a new one is not.
	_ = inf.SetTransform(stripManagedFields)
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.notify() },
		UpdateFunc: func(any, any) { s.notify() },
		DeleteFunc: func(any) { s.notify() },
	})
	return s
}

// Run watches until ctx is done.
func (s *PodSource) Run(ctx context.Context) { s.informer.RunWithContext(ctx) }

// Start runs the watch in the background until ctx is done.
func (s *PodSource) Start(ctx context.Context) { go s.Run(ctx) }

// HasSynced reports whether the first full list has arrived.
func (s *PodSource) HasSynced() bool { return s.informer.HasSynced() }

// WaitForSync blocks until the cache is synced or ctx is done, and reports
// whether it synced.
func (s *PodSource) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced)
}

// List returns the cached pods of the node. The pods are shared with the
// cache and must not be modified.
func (s *PodSource) List() []*corev1.Pod {
	objs := s.informer.GetStore().List()
	pods := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		// The server filters by node already; checking again costs nothing
		// and keeps the drain correct behind a server or fake that does not.
		if pod, ok := o.(*corev1.Pod); ok && pod.Spec.NodeName == s.nodeName {
			pods = append(pods, pod)
		}
	}
	return pods
}

// Subscribe returns a channel that receives a value after any change to the
// node's pods. Changes coalesce: one pending value stands for any number of
// them, so a slow reader never blocks the watch. Call cancel when done.
func (s *PodSource) Subscribe() (changes <-chan struct{}, cancel func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

func (s *PodSource) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// stripManagedFields drops what the drain never reads, which is most of a
// pod's size, before it enters the cache.
func stripManagedFields(obj any) (any, error) {
	if acc, ok := obj.(metav1.ObjectMetaAccessor); ok {
		acc.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}
