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

	"termgate.dev/termgate/nodemark"
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
	_ = inf.SetTransform(trimPod)
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.notify() },
		UpdateFunc: func(any, any) { s.notify() },
		DeleteFunc: func(any) { s.notify() },
	})
	return s
}

// Run watches until ctx is done.
func (s *PodSource) Run(ctx context.Context) { s.informer.RunWithContext(ctx) }

// HasSynced reports whether the first full list has arrived.
func (s *PodSource) HasSynced() bool { return s.informer.HasSynced() }

// WaitForSync blocks until the cache is synced or ctx is done, and reports
// whether it synced.
func (s *PodSource) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced)
}

// Get returns the cached pod namespace/name on the node, or nil.
func (s *PodSource) Get(namespace, name string) *corev1.Pod {
	if name == "" {
		return nil
	}
	obj, ok, err := s.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil
	}
	pod, _ := obj.(*corev1.Pod)
	return pod
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

// trimPod keeps only what the drain reads, before the pod enters the cache.
// Tenants decide how large their pods are (annotations, environment,
// volumes); the agent's memory must not follow: a node's pods could
// otherwise push it past its limit, and a crash-looping agent ignores its
// node's notices. With the client's streaming lists, each pod is trimmed as
// it arrives, so even the initial list never holds whole pods.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a deletion tombstone: the store only needs its key
	}
	trimmed := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            pod.Name,
			Namespace:       pod.Namespace,
			UID:             pod.UID,
			ResourceVersion: pod.ResourceVersion,
			// Services select their backends by label: the wait for load
			// balancers matches them here. Labels are short by rule
			// (63-character values), unlike annotations.
			Labels:                     pod.Labels,
			DeletionTimestamp:          pod.DeletionTimestamp,
			DeletionGracePeriodSeconds: pod.DeletionGracePeriodSeconds,
		},
		Spec: corev1.PodSpec{
			NodeName:                      pod.Spec.NodeName,
			PriorityClassName:             pod.Spec.PriorityClassName,
			Tolerations:                   pod.Spec.Tolerations,
			TerminationGracePeriodSeconds: pod.Spec.TerminationGracePeriodSeconds,
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}
	for _, k := range nodemark.PodAnnotationsRead {
		if v, ok := pod.Annotations[k]; ok {
			if trimmed.Annotations == nil {
				trimmed.Annotations = map[string]string{}
			}
			trimmed.Annotations[k] = v
		}
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			trimmed.OwnerReferences = []metav1.OwnerReference{ref}
		}
	}
	return trimmed, nil
}
