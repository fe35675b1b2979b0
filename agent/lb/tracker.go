package lb

import (
	"context"
	"errors"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/nodemark"
)

// Config says how the agent reads load balancers.
type Config struct {
	// NodeName is the agent's node.
	NodeName string
	// Selectors force Services into a class.
	Selectors Selectors
	// SerialNodeSync: the service controller's node sync makes one cloud
	// call at a time (--concurrent-service-syncs=1, the default), which lets
	// an update of one Service vouch for the next one's call.
	SerialNodeSync bool
	// QuietWindow is how long before the mark a host update or another
	// node leaving the load balancers means a sync may have been under way
	// (DefaultQuietWindow if zero): its calls may end after the mark with
	// the old host set.
	QuietWindow time.Duration
}

// DefaultQuietWindow is longer than the GCE operations of one load
// balancer's update take in practice (seconds to about fifteen).
const DefaultQuietWindow = 30 * time.Second

// byNamespace indexes the Services that front pods the drain treats apart
// (class node or neg) by namespace; the others are never looked at.
const byNamespace = "lb-namespace"

// Tracker keeps a cache of the cluster's Services, trimmed, from the
// agent's start, so that a drain classifies its pods at once; each drain
// then follows the service controller's events through its own session.
// One Tracker per agent; it implements drain.LoadBalancers.
type Tracker struct {
	client   kubernetes.Interface
	clk      clock.Clock
	cfg      Config
	services cache.SharedIndexInformer

	mu   sync.Mutex
	subs map[chan struct{}]struct{}
	gen  uint64 // bumped on every Service change
}

// NewTracker returns a Tracker; Run starts its watch.
func NewTracker(client kubernetes.Interface, clk clock.Clock, cfg Config) *Tracker {
	if cfg.QuietWindow == 0 {
		cfg.QuietWindow = DefaultQuietWindow
	}
	t := &Tracker{client: client, clk: clk, cfg: cfg, subs: map[chan struct{}]struct{}{}}
	t.services = coreinformers.NewServiceInformer(client, metav1.NamespaceAll, 0, cache.Indexers{
		byNamespace: func(obj any) ([]string, error) {
			svc, ok := obj.(*corev1.Service)
			if !ok || cfg.Selectors.ClassOf(svc) == ClassNone || len(svc.Spec.Selector) == 0 {
				return nil, nil
			}
			return []string{svc.Namespace}, nil
		},
	})
	// Both calls fail only on an informer already started.
	_ = t.services.SetTransform(trimService)
	_, _ = t.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { t.serviceChanged() },
		UpdateFunc: func(any, any) { t.serviceChanged() },
		DeleteFunc: func(any) { t.serviceChanged() },
	})
	return t
}

// Run watches Services until ctx ends.
func (t *Tracker) Run(ctx context.Context) { t.services.RunWithContext(ctx) }

// HasSynced reports whether the first list of Services has arrived.
func (t *Tracker) HasSynced() bool { return t.services.HasSynced() }

// Ready returns an error until the Services are read.
func (t *Tracker) Ready() error {
	if !t.HasSynced() {
		return errors.New("service cache not synced")
	}
	return nil
}

func (t *Tracker) serviceChanged() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	for ch := range t.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (t *Tracker) subscribe(ch chan struct{}) func() {
	t.mu.Lock()
	t.subs[ch] = struct{}{}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.subs, ch)
		t.mu.Unlock()
	}
}

// anyFronting reports whether the cache holds a Service of class node or
// neg with a selector.
func (t *Tracker) anyFronting() bool {
	return len(t.services.GetIndexer().ListIndexFuncValues(byNamespace)) > 0
}

func (t *Tracker) generation() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gen
}

// fronting classifies pod against the cached Services of its namespace.
func (t *Tracker) fronting(pod *corev1.Pod) (drain.Fronting, map[string]*corev1.Service) {
	var f drain.Fronting
	objs, err := t.services.GetIndexer().ByIndex(byNamespace, pod.Namespace)
	if err != nil || len(objs) == 0 {
		return f, nil
	}
	var node map[string]*corev1.Service
	for _, o := range objs {
		svc, ok := o.(*corev1.Service)
		if !ok || !selects(svc, pod) {
			continue
		}
		switch t.cfg.Selectors.ClassOf(svc) {
		case ClassNode:
			if node == nil {
				node = map[string]*corev1.Service{}
			}
			key := svc.Namespace + "/" + svc.Name
			node[key] = svc
			f.Node = append(f.Node, key)
		case ClassNEG:
			f.NEG = true
		}
	}
	return f, node
}

// service returns the cached Service namespace/name, or nil.
func (t *Tracker) service(key string) *corev1.Service {
	obj, ok, err := t.services.GetStore().GetByKey(key)
	if err != nil || !ok {
		return nil
	}
	svc, _ := obj.(*corev1.Service)
	return svc
}

// Follow starts a session for the drain of mark.
func (t *Tracker) Follow(ctx context.Context, mark nodemark.Mark) drain.LoadBalancerView {
	return startSession(ctx, t, mark)
}
