// Package source turns what termgate's agents write into notifications: the
// marks on Nodes (and their removal) and the agents' events on Nodes and
// pods. It reads only the API server, never the agents, so the agents gain
// no dependency on the notifier. Everything it emits is derived from that
// state with stable ids (package notification), so a restarted or newly
// elected notifier derives the same notifications again and the delivery
// side skips those it had settled.
package source

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
)

// Config says whose events to read and how far back.
type Config struct {
	// Cluster names the cluster in every notification.
	Cluster string
	// AgentComponent is the source.component of the agents' events.
	AgentComponent string
	// Window is how far back events count. The API server keeps events for
	// its --event-ttl (one hour by default); what is older than Window is
	// neither sent nor remembered as sent. Marks still on a Node count
	// whatever their age.
	Window time.Duration
	// WithdrawalHold is how long a mark seen removed waits for the agent's
	// event about it, which says why, before it is sent without it.
	WithdrawalHold time.Duration
	// Resync re-derives every node this often (expired holds, pruning).
	Resync time.Duration
}

// DefaultConfig returns the defaults the notifier's flags start from.
func DefaultConfig() Config {
	return Config{AgentComponent: "termgate-agent", Window: 2 * time.Hour, WithdrawalHold: 2 * time.Second, Resync: time.Minute}
}

// Validate checks the config.
func (c Config) Validate() error {
	var errs []error
	if c.Cluster == "" {
		errs = append(errs, errors.New("cluster name is required"))
	}
	if c.AgentComponent == "" {
		errs = append(errs, errors.New("agent event component is required"))
	}
	if c.Window < time.Minute {
		errs = append(errs, fmt.Errorf("history window %s: want at least 1m", c.Window))
	}
	if c.WithdrawalHold < 0 || c.Resync <= 0 {
		errs = append(errs, errors.New("withdrawal hold must not be negative and resync must be positive"))
	}
	return errors.Join(errs...)
}

// CloudEventsSource is the CloudEvents source of a cluster's notifications.
func CloudEventsSource(cluster string) string { return "/termgate.dev/clusters/" + cluster }

var nodesResource = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// byNode indexes the agents' events by the node they are about.
const byNode = "node"

// Source follows Nodes and the agents' events and emits notifications.
type Source struct {
	cfg    Config
	clk    clock.WithTicker
	nodes  cache.SharedIndexInformer
	events cache.SharedIndexInformer

	dirty  chan struct{}
	mu     sync.Mutex
	queued map[string]bool       // nodes to derive again
	labels map[string]lastLabels // of deleted nodes, for the sinks' filters

	// Owned by Run's goroutine.
	emitted map[string]time.Time // id -> occurred, for ids emitted this term
	known   map[string]nodemark.Mark
	removed map[string]removal
}

type removal struct {
	mark nodemark.Mark
	at   time.Time
}

type lastLabels struct {
	labels map[string]string
	at     time.Time
}

// New returns a source reading Node metadata through meta and the agents'
// events through kube.
func New(meta metadata.Interface, kube kubernetes.Interface, cfg Config, clk clock.WithTicker) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("notification source: %w", err)
	}
	nodes := metadatainformer.NewFilteredMetadataInformer(meta, nodesResource, "", 0, cache.Indexers{}, nil).Informer()
	_ = nodes.SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			m.ManagedFields = nil
		}
		return obj, nil
	})
	selector := fields.OneTermEqualSelector("source", cfg.AgentComponent).String()
	events := coreinformers.NewFilteredEventInformer(kube, metav1.NamespaceAll, 0,
		cache.Indexers{byNode: func(obj any) ([]string, error) {
			if ev, ok := obj.(*corev1.Event); ok && nodeOfEvent(ev) != "" {
				return []string{nodeOfEvent(ev)}, nil
			}
			return nil, nil
		}},
		func(o *metav1.ListOptions) { o.FieldSelector = selector })
	_ = events.SetTransform(func(obj any) (any, error) {
		if ev, ok := obj.(*corev1.Event); ok {
			ev.ManagedFields = nil
		}
		return obj, nil
	})
	s := &Source{
		cfg: cfg, clk: clk, nodes: nodes, events: events,
		dirty: make(chan struct{}, 1), queued: map[string]bool{},
		emitted: map[string]time.Time{}, known: map[string]nodemark.Mark{}, removed: map[string]removal{}, labels: map[string]lastLabels{},
	}
	_, _ = nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.queueObject(obj) },
		UpdateFunc: func(_, obj any) { s.queueObject(obj) },
		DeleteFunc: func(obj any) { s.nodeDeleted(obj) },
	})
	_, _ = events.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.queueEvent(obj) },
		UpdateFunc: func(_, obj any) { s.queueEvent(obj) },
	})
	return s, nil
}

// HasSynced reports whether both caches hold a full list.
func (s *Source) HasSynced() bool { return s.nodes.HasSynced() && s.events.HasSynced() }

func (s *Source) queueObject(obj any) {
	if m, err := meta(obj); err == nil {
		s.queue(m.GetName())
	}
}

func (s *Source) queueEvent(obj any) {
	if ev, ok := obj.(*corev1.Event); ok && nodeOfEvent(ev) != "" {
		s.queue(nodeOfEvent(ev))
	}
}

// nodeDeleted keeps the deleted node's labels for the notifications still
// to come about it (a drain-end event can follow the Node's deletion).
func (s *Source) nodeDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, err := meta(obj)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.labels[m.GetName()] = lastLabels{labels: m.GetLabels(), at: s.clk.Now()}
	s.mu.Unlock()
	s.queue(m.GetName())
}

func meta(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("not an object: %T", obj)
	}
	return m, nil
}

func (s *Source) queue(node string) {
	s.mu.Lock()
	s.queued[node] = true
	s.mu.Unlock()
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

func (s *Source) takeQueued() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queued
	s.queued = map[string]bool{}
	return q
}

// Run follows the API server until ctx ends. Once both caches are synced it
// derives every node's notifications, then each node's again whenever the
// node or one of its events changes, and calls emit with each notification
// not emitted before in this Run, in order of occurrence per node. emit must
// not block for long.
func (s *Source) Run(ctx context.Context, emit func(notification.Notification)) error {
	logger := log.FromContext(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() { s.nodes.RunWithContext(ctx) })
	wg.Go(func() { s.events.RunWithContext(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), s.HasSynced) {
		return nil
	}
	logger.Info("notification source synced", "nodes", len(s.nodes.GetStore().ListKeys()), "agentEvents", len(s.events.GetStore().ListKeys()))
	s.resync(ctx, emit)
	resync := s.clk.NewTicker(s.cfg.Resync)
	defer resync.Stop()
	hold := s.clk.NewTimer(time.Hour)
	hold.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.dirty:
			for node := range s.takeQueued() {
				s.deriveNode(ctx, node, emit)
			}
		case <-hold.C():
			s.resync(ctx, emit)
		case <-resync.C():
			s.resync(ctx, emit)
			s.prune()
		}
		if next := s.nextHoldEnd(); !next.IsZero() {
			hold.Reset(max(next.Sub(s.clk.Now()), time.Millisecond))
		}
	}
}

// resync derives every node the caches know of.
func (s *Source) resync(ctx context.Context, emit func(notification.Notification)) {
	nodes := map[string]bool{}
	for _, k := range s.nodes.GetStore().ListKeys() {
		nodes[k] = true
	}
	for _, k := range s.events.GetIndexer().ListIndexFuncValues(byNode) {
		nodes[k] = true
	}
	for n := range s.removed {
		nodes[n] = true
	}
	for n := range nodes {
		s.deriveNode(ctx, n, emit)
	}
}

// deriveNode derives one node's notifications and emits the new ones.
func (s *Source) deriveNode(ctx context.Context, node string, emit func(notification.Notification)) {
	now := s.clk.Now()
	st := s.state(node, now)
	base := notification.Notification{Cluster: s.cfg.Cluster, Source: CloudEventsSource(s.cfg.Cluster)}
	for _, d := range derive(st, base, s.cfg.Window, now) {
		if _, done := s.emitted[d.ID]; done {
			continue
		}
		if d.Kind == notification.KindNoticeWithdrawn && !d.fromEvent && now.Sub(st.removedAt) < s.cfg.WithdrawalHold {
			continue // the agent's event, with the cause, is likely on its way
		}
		s.emitted[d.ID] = d.OccurredAt
		log.FromContext(ctx).V(1).Info("notification", "id", d.ID, "kind", d.Kind, "node", node, "occurredAt", d.OccurredAt)
		emit(d.Notification)
	}
	if r, ok := s.removed[node]; ok {
		if _, done := s.emitted[notification.ID(notification.KindNoticeWithdrawn, node, r.mark)]; done {
			delete(s.removed, node)
		}
	}
}

// state gathers the node's state and updates what the source remembers of
// its mark: a mark seen and then gone is a removal.
func (s *Source) state(node string, now time.Time) nodeState {
	st := nodeState{name: node}
	if obj, ok, _ := s.nodes.GetStore().GetByKey(node); ok {
		if m, err := meta(obj); err == nil {
			st.exists, st.annotations, st.labels = true, m.GetAnnotations(), m.GetLabels()
		}
	} else {
		s.mu.Lock()
		st.labels = s.labels[node].labels
		s.mu.Unlock()
	}
	cur, marked, err := nodemark.Read(st.annotations)
	switch {
	case !st.exists:
		delete(s.known, node) // a deleted node's marks were not withdrawn
	case marked && err == nil:
		if prev, ok := s.known[node]; ok && !sameMark(prev, cur) {
			delete(s.removed, node) // replaced by a newer notice, not withdrawn
		}
		s.known[node] = cur
	case !marked:
		if prev, ok := s.known[node]; ok {
			s.removed[node] = removal{mark: prev, at: now}
			delete(s.known, node)
		}
	}
	if r, ok := s.removed[node]; ok {
		st.removed, st.removedAt = &r.mark, r.at
	}
	objs, _ := s.events.GetIndexer().ByIndex(byNode, node)
	for _, o := range objs {
		if ev, ok := o.(*corev1.Event); ok {
			st.events = append(st.events, ev)
		}
	}
	return st
}

// nextHoldEnd is when the earliest held withdrawal is due.
func (s *Source) nextHoldEnd() time.Time {
	var next time.Time
	for _, r := range s.removed {
		if end := r.at.Add(s.cfg.WithdrawalHold); next.IsZero() || end.Before(next) {
			next = end
		}
	}
	return next
}

// prune forgets what can no longer be derived again: ids older than the
// window that no mark on a Node backs, and the labels of nodes deleted
// longer ago than the window.
func (s *Source) prune() {
	live := s.Live()
	cutoff := s.clk.Now().Add(-s.cfg.Window)
	for id, at := range s.emitted {
		if at.Before(cutoff) && !live[id] {
			delete(s.emitted, id)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, l := range s.labels {
		if l.at.Before(cutoff) {
			delete(s.labels, n)
		}
	}
}

// Live returns the ids of the notifications that the marks on Nodes back:
// they are derived again whatever their age, so whoever remembers what was
// sent must keep them. Safe to call from any goroutine once synced.
func (s *Source) Live() map[string]bool {
	live := map[string]bool{}
	for _, obj := range s.nodes.GetStore().List() {
		m, err := meta(obj)
		if err != nil {
			continue
		}
		cur, ok, err := nodemark.Read(m.GetAnnotations())
		if !ok || err != nil {
			continue
		}
		for _, k := range notification.Kinds {
			live[notification.ID(k, m.GetName(), cur)] = true
		}
	}
	return live
}

func sameMark(a, b nodemark.Mark) bool {
	return a.State == b.State && a.Reason == b.Reason && a.NoticeTime.Equal(b.NoticeTime) && a.Deadline.Equal(b.Deadline)
}
