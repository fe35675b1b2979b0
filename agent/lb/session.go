package lb

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/nodemark"
)

// resumedAfter: a session that starts this long after the node was
// labelled belongs to a drain resumed by a restarted agent.
const resumedAfter = 5 * time.Second

// maxMessage bounds the failure message kept per Service.
const maxMessage = 300

// session is one drain's view of the load balancers. It follows the events
// recorded on Services for as long as the drain runs.
type session struct {
	t       *Tracker
	mark    nodemark.Mark
	changed chan struct{}

	mu       sync.Mutex
	ev       *evidence      // nil until the first list of events is in
	early    []occurrence   // seen before ev existed, replayed into it
	counts   map[string]int // per event object: occurrences known
	baseline []listedEvent  // what the first list held
	deleted  map[string]time.Time
	front    map[types.UID]cachedFronting
}

type listedEvent struct {
	service types.UID
	reason  string
	last    time.Time
}

type cachedFronting struct {
	rv  string
	gen uint64
	f   drain.Fronting
}

func startSession(ctx context.Context, t *Tracker, mark nodemark.Mark) *session {
	s := &session{t: t, mark: mark, changed: make(chan struct{}, 1),
		counts: map[string]int{}, deleted: map[string]time.Time{}, front: map[types.UID]cachedFronting{}}
	unsubscribe := t.subscribe(s.changed)
	go func() {
		defer unsubscribe()
		s.follow(ctx)
	}()
	return s
}

// follow lists the nodes that left the load balancers, then lists and
// watches the events on Services until ctx ends.
func (s *session) follow(ctx context.Context) {
	logger := log.FromContext(ctx).WithName("lb")
	// A cluster without a single load-balancer or NEG Service has nothing
	// to follow: the drain pays nothing until one appears.
	if s.t.HasSynced() && !s.t.anyFronting() {
		changed := make(chan struct{}, 1)
		unsubscribe := s.t.subscribe(changed)
		for !s.t.anyFronting() {
			select {
			case <-ctx.Done():
				unsubscribe()
				return
			case <-changed:
			}
		}
		unsubscribe()
	}
	labelledAt, others := s.exclusions(ctx)
	selector := fields.OneTermEqualSelector("involvedObject.kind", "Service").String()
	inf := coreinformers.NewFilteredEventInformer(s.t.client, metav1.NamespaceAll, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.FieldSelector = selector })
	_ = inf.SetTransform(trimEvent)
	reg, _ := inf.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc:    func(obj any, initial bool) { s.onEvent(obj, initial) },
		UpdateFunc: func(_, obj any) { s.onEvent(obj, false) },
	})
	done := make(chan struct{})
	go func() { defer close(done); inf.RunWithContext(ctx) }()
	defer func() { <-done }()
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return
	}
	markAt := s.mark.NoticeTime
	if labelledAt.After(markAt) {
		markAt = labelledAt
	}
	s.mu.Lock()
	recent := append([]time.Time(nil), others...)
	for _, b := range s.baseline {
		if nodeSync(b.reason) {
			recent = append(recent, b.last)
		}
	}
	idle := idleAt(markAt, s.t.cfg.QuietWindow, recent)
	s.ev = newEvidence(idle, s.t.cfg.SerialNodeSync, busySince(markAt, s.t.cfg.QuietWindow, recent))
	resumed := s.t.clk.Since(markAt) > resumedAfter
	if resumed {
		for _, b := range s.baseline {
			s.ev.adopt(b.service, b.reason, b.last, markAt)
		}
	}
	for _, o := range s.early {
		s.ev.observe(o)
	}
	s.early, s.baseline = nil, nil
	s.mu.Unlock()
	logger.Info("following the service controller", "idleAtMark", idle, "resumed", resumed, "labelledAt", labelledAt)
	s.poke()
	tick := time.NewTicker(settleEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		settled := s.ev.settle(s.t.clk.Now())
		s.mu.Unlock()
		if settled {
			logger.Info("the service controller is quiet: its updates after the mark count")
			s.poke()
		}
	}
}

// settleEvery is how often a session looks whether the controller is quiet.
const settleEvery = 250 * time.Millisecond

// busySince is the earliest moment a call still under way at mark can have
// begun: the latest sign of activity before it, within the quiet window.
func busySince(mark time.Time, quiet time.Duration, recent []time.Time) time.Time {
	b := mark.Add(-quiet)
	for _, t := range recent {
		if t.After(b) && !t.After(mark) {
			b = t
		}
	}
	return b
}

// exclusions returns when this node got the exclusion label and when the
// other excluded nodes got theirs, from the managed fields of the writes
// that own the label (whole seconds). A failed list counts as a recent
// exclusion: the session then trusts fewer events, never more.
func (s *session) exclusions(ctx context.Context) (self time.Time, others []time.Time) {
	now := s.t.clk.Now()
	listCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nodes, err := s.t.client.CoreV1().Nodes().List(listCtx, metav1.ListOptions{LabelSelector: nodemark.LabelExcludeFromLB, ResourceVersion: "0"})
	if err != nil {
		log.FromContext(ctx).Error(err, "list nodes excluded from load balancers; assuming another left them just now")
		return now, []time.Time{now}
	}
	self = now
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if v, err := strconv.ParseBool(n.Labels[nodemark.LabelExcludeFromLB]); err == nil && !v {
			continue // "false" keeps the node in
		}
		at := labelTime(n)
		if n.Name == s.t.cfg.NodeName {
			if !at.IsZero() {
				self = at
			}
			continue
		}
		if !at.IsZero() {
			others = append(others, at)
		}
	}
	return self, others
}

var labelField = []byte(`"f:` + nodemark.LabelExcludeFromLB + `"`)

// labelTime is the latest time a manager wrote the exclusion label.
func labelTime(n *corev1.Node) time.Time {
	var at time.Time
	for _, mf := range n.ManagedFields {
		if mf.FieldsV1 != nil && mf.Time != nil && bytes.Contains(mf.FieldsV1.Raw, labelField) && mf.Time.After(at) {
			at = mf.Time.Time
		}
	}
	return at
}

// onEvent turns a new or updated event into an occurrence when its count
// grew; the first list only sets the baseline.
func (s *session) onEvent(obj any, initial bool) {
	e, ok := obj.(*corev1.Event)
	if !ok || !followed(e.Reason) {
		return
	}
	n := eventCount(e)
	key := e.Namespace + "/" + e.Name
	s.mu.Lock()
	prev, known := s.counts[key]
	s.counts[key] = max(n, prev)
	if initial {
		s.baseline = append(s.baseline, listedEvent{service: e.InvolvedObject.UID, reason: e.Reason, last: lastTime(e)})
		s.mu.Unlock()
		return
	}
	if known && n <= prev {
		s.mu.Unlock()
		return
	}
	o := occurrence{service: e.InvolvedObject.UID, reason: e.Reason, at: s.t.clk.Now(), message: e.Message}
	changed := false
	if s.ev == nil {
		s.early = append(s.early, o)
	} else {
		changed = s.ev.observe(o)
	}
	s.mu.Unlock()
	log.Log.WithName("lb").V(1).Info("service controller event", "service", e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name, "reason", e.Reason, "count", n, "changed", changed)
	if changed {
		s.poke()
	}
}

func eventCount(e *corev1.Event) int {
	n := int(e.Count)
	if e.Series != nil && int(e.Series.Count) > n {
		n = int(e.Series.Count)
	}
	return max(n, 1)
}

func lastTime(e *corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	}
	return e.EventTime.Time
}

// trimEvent keeps what onEvent reads.
func trimEvent(obj any) (any, error) {
	e, ok := obj.(*corev1.Event)
	if !ok {
		return obj, nil
	}
	t := &corev1.Event{Reason: e.Reason, Count: e.Count, LastTimestamp: e.LastTimestamp, EventTime: e.EventTime, Series: e.Series}
	t.Name, t.Namespace, t.ResourceVersion = e.Name, e.Namespace, e.ResourceVersion
	t.InvolvedObject = corev1.ObjectReference{Kind: e.InvolvedObject.Kind, Namespace: e.InvolvedObject.Namespace, Name: e.InvolvedObject.Name, UID: e.InvolvedObject.UID}
	if followed(e.Reason) && e.Type == corev1.EventTypeWarning {
		t.Message = e.Message
		if len(t.Message) > maxMessage {
			t.Message = t.Message[:maxMessage] + "..."
		}
	}
	return t, nil
}

func (s *session) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Classifies reports whether the Services have been read.
func (s *session) Classifies() bool { return s.t.HasSynced() }

// Fronting classifies pod, remembering the answer until the pod or any
// Service changes.
func (s *session) Fronting(pod *corev1.Pod) drain.Fronting {
	gen := s.t.generation()
	s.mu.Lock()
	c, ok := s.front[pod.UID]
	s.mu.Unlock()
	if ok && c.gen == gen && c.rv == pod.ResourceVersion {
		return c.f
	}
	f, _ := s.t.fronting(pod)
	s.mu.Lock()
	s.front[pod.UID] = cachedFronting{rv: pod.ResourceVersion, gen: gen, f: f}
	s.mu.Unlock()
	return f
}

// Left returns when the node was seen leaving the load balancer of the
// Service namespace/name. A Service deleted meanwhile has no load balancer
// left to leave: it counts from when the session noticed.
func (s *session) Left(key string) (time.Time, string) {
	svc := s.t.service(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if svc == nil {
		if _, ok := s.deleted[key]; !ok {
			s.deleted[key] = s.t.clk.Now()
		}
		return s.deleted[key], ""
	}
	if s.ev == nil {
		return time.Time{}, ""
	}
	return s.ev.left[svc.UID], s.ev.failure[svc.UID]
}

// Changed receives a value after a Service changed or an event moved a
// Service's state.
func (s *session) Changed() <-chan struct{} { return s.changed }
