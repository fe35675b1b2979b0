package scenario

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"termgate.dev/termgate/nodemark"
)

// podTrack is what the watch knows of a pod that ran on the draining node.
type podTrack struct {
	key         string
	owner       types.UID
	daemon      bool
	order       nodemark.DrainOrder
	leftAlone   bool // mirror or finished: the drain skips it
	terminating bool
	gone        bool
}

// evictable reports whether the drain policy takes the pod off the node.
func (p *podTrack) evictable() bool {
	return !p.leftAlone && p.order.Wave != nodemark.WaveKeep
}

// watcher turns watches of one draining node, its pods, every pod and the
// events into timeline events and the figures of a Result.
type watcher struct {
	client  kubernetes.Interface
	node    string
	tl      *Timeline
	budgets []Budget
	effect  corev1.TaintEffect
	// ignoreNamespaces hold pods the figures leave out (see
	// Env.ownNamespaces); empty leaves out none.
	ignoreNamespaces []string

	mu         sync.Mutex
	mark       nodemark.Mark
	markedAt   time.Duration
	marked     bool
	restored   bool
	restoredAt time.Duration
	// withdrawalSeen is when the agent says it read the withdrawal (from
	// its TerminationCancelled event); zero until that event arrives.
	withdrawalSeen time.Time
	onNode         map[types.UID]*podTrack
	ownersOnNode   map[types.UID]bool
	replaced       map[types.UID]int
	readySeen      map[types.UID]bool
	minReady       map[string]int
	drainedAt      time.Duration
	drained        bool
	blocked        map[string]bool
	bindsRefused   int
	admitted       int

	allPods cache.Store
	stop    context.CancelFunc
	done    chan struct{}
}

func newWatcher(client kubernetes.Interface, node string, tl *Timeline, budgets []Budget) *watcher {
	return &watcher{
		client: client, node: node, tl: tl, budgets: budgets, effect: corev1.TaintEffectNoSchedule,
		onNode: map[types.UID]*podTrack{}, ownersOnNode: map[types.UID]bool{}, replaced: map[types.UID]int{},
		readySeen: map[types.UID]bool{}, minReady: map[string]int{}, blocked: map[string]bool{},
	}
}

// start runs the informers and returns once each has listed what exists.
func (w *watcher) start(ctx context.Context) error {
	ctx, w.stop = context.WithCancel(ctx)
	byNode := fields.OneTermEqualSelector("spec.nodeName", w.node).String()
	nodeEvents := fields.Set{"involvedObject.kind": "Node", "involvedObject.name": w.node}.AsSelector().String()
	warnings := fields.OneTermEqualSelector("type", corev1.EventTypeWarning).String()

	factories := []informers.SharedInformerFactory{
		factory(w.client, fields.OneTermEqualSelector("metadata.name", w.node).String()),
		factory(w.client, byNode),
		factory(w.client, ""),
		factory(w.client, nodeEvents),
		factory(w.client, warnings),
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{factories[0].Core().V1().Nodes().Informer(), w.nodeHandler()},
		{factories[1].Core().V1().Pods().Informer(), w.nodePodHandler()},
		{factories[2].Core().V1().Pods().Informer(), w.allPodHandler()},
		{factories[3].Core().V1().Events().Informer(), w.eventHandler(w.onNodeEvent)},
		{factories[4].Core().V1().Events().Informer(), w.eventHandler(w.onWarning)},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			w.stop()
			return fmt.Errorf("watch: %w", err)
		}
	}
	w.allPods = handlers[2].inf.GetStore()
	w.done = make(chan struct{})
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	go func() {
		<-ctx.Done()
		for _, f := range factories {
			f.Shutdown()
		}
		close(w.done)
	}()
	for _, f := range factories {
		for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				w.stop()
				return fmt.Errorf("watch %v on %s: cache never synced", typ, w.node)
			}
		}
	}
	return nil
}

// close stops every informer and waits for them.
func (w *watcher) close() {
	if w.stop == nil {
		return
	}
	w.stop()
	<-w.done
}

func factory(c kubernetes.Interface, fieldSelector string) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fieldSelector
	}))
}

// armBudgets takes the current Ready counts as the starting minimum. Call
// it right after the notice.
func (w *watcher) armBudgets() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.budgets {
		w.minReady[b.App] = w.readyCount(b)
	}
}

func (w *watcher) nodeHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.onNodeUpdate(obj) },
		UpdateFunc: func(_, obj any) { w.onNodeUpdate(obj) },
	}
}

func (w *watcher) onNodeUpdate(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tl.Notice().IsZero() {
		return
	}
	m, hasMark, _ := nodemark.Read(n.Annotations)
	switch {
	case !w.marked && hasMark && m.Terminating() && hasTaint(n):
		w.marked, w.mark, w.markedAt = true, m, w.tl.Since()
		w.tl.Add(KindMarked, n.Name, fmt.Sprintf("%s: taint %s:%s, deadline +%s",
			m.Reason, nodemark.TaintKey, w.effect, fmtDur(m.Deadline.Sub(w.tl.Notice()))))
	case w.marked && !w.restored && unmarked(n):
		w.restored, w.restoredAt = true, w.tl.Since()
		w.tl.Add(KindRestored, n.Name, "taint, annotations, LB-exclusion label and condition removed")
	}
}

func hasTaint(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == nodemark.TaintKey {
			return true
		}
	}
	return false
}

// unmarked reports whether nothing of termgate's is left on the node.
func unmarked(n *corev1.Node) bool {
	if _, marked, _ := nodemark.Read(n.Annotations); marked || hasTaint(n) {
		return false
	}
	if _, ok := n.Labels[nodemark.LabelExcludeFromLB]; ok {
		return false
	}
	if _, ok := n.Annotations[nodemark.AnnotationLBLabelAdded]; ok {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == nodemark.ConditionType {
			return false
		}
	}
	return true
}

func (w *watcher) nodePodHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc:    func(obj any, initial bool) { w.onNodePod(obj, initial, false) },
		UpdateFunc: func(_, obj any) { w.onNodePod(obj, false, false) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			w.onNodePod(obj, false, true)
		},
	}
}

func (w *watcher) onNodePod(obj any, initial, deleted bool) {
	p, ok := obj.(*corev1.Pod)
	if !ok || slices.Contains(w.ignoreNamespaces, p.Namespace) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	t, known := w.onNode[p.UID]
	if !known {
		if !initial && p.DeletionTimestamp == nil {
			w.landed(p)
		}
		t = w.track(p)
	}
	started := !w.tl.Notice().IsZero()
	if p.DeletionTimestamp != nil && !t.terminating {
		t.terminating = true
		if started {
			w.tl.Add(KindEvicted, t.key, "wave "+t.order.String())
		}
	}
	if deleted && !t.gone {
		t.gone = true
		if started {
			w.tl.Add(KindGone, t.key, "")
		}
	}
	if nodemark.IsFinished(p) {
		t.leftAlone = true
	}
	w.checkDrained()
}

// landed notes a pod that arrived on the node while it was marked: the
// webhook and the taint exist to make that impossible.
func (w *watcher) landed(p *corev1.Pod) {
	if !w.marked || w.restored {
		return
	}
	if o := nodemark.DrainOrderFor(p, w.effect); o.Wave == nodemark.WaveKeep || o.Wave == nodemark.WaveDelayed {
		return // it tolerates the taint: it may run there
	}
	w.admitted++
	w.tl.Add(KindAdmitted, p.Namespace+"/"+p.Name, "landed on the marked node")
}

func (w *watcher) track(p *corev1.Pod) *podTrack {
	t := &podTrack{
		key:       p.Namespace + "/" + p.Name,
		order:     nodemark.DrainOrderFor(p, w.effect),
		leftAlone: nodemark.IsMirrorPod(p) || nodemark.IsFinished(p),
	}
	if ref := metav1.GetControllerOf(p); ref != nil {
		t.owner, t.daemon = ref.UID, ref.Kind == "DaemonSet"
		w.ownersOnNode[ref.UID] = true
	}
	w.onNode[p.UID] = t
	return t
}

// checkDrained notes the moment every pod the policy evicts has left.
func (w *watcher) checkDrained() {
	if w.drained || !w.marked || w.restored {
		return
	}
	for _, t := range w.onNode {
		if t.evictable() && !t.gone {
			return
		}
	}
	w.drained, w.drainedAt = true, w.tl.Since()
}

func (w *watcher) allPodHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc:    func(obj any, initial bool) { w.onAnyPod(obj, initial) },
		UpdateFunc: func(_, obj any) { w.onAnyPod(obj, false) },
		DeleteFunc: func(any) { w.updateBudgets() },
	}
}

// onAnyPod watches for pods that become Ready on other nodes after the
// notice (or on the node itself once restored): replacements when their
// controller had pods on the draining node, new placements otherwise.
func (w *watcher) onAnyPod(obj any, initial bool) {
	defer w.updateBudgets()
	p, ok := obj.(*corev1.Pod)
	if !ok || initial {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	notice := w.tl.Notice()
	if notice.IsZero() || p.CreationTimestamp.Time.Before(notice.Truncate(time.Second)) ||
		p.Spec.NodeName == "" || (p.Spec.NodeName == w.node && !w.restored) || w.readySeen[p.UID] || !ready(p) {
		return
	}
	w.readySeen[p.UID] = true
	key := p.Namespace + "/" + p.Name
	if ref := metav1.GetControllerOf(p); ref != nil && w.ownersOnNode[ref.UID] {
		w.replaced[ref.UID]++
		w.tl.Add(KindReplacement, key, "Ready on "+p.Spec.NodeName)
		return
	}
	w.tl.Add(KindPlaced, key, "Ready on "+p.Spec.NodeName)
}

func ready(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// updateBudgets lowers each budget's minimum to the current Ready count.
func (w *watcher) updateBudgets() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.budgets {
		m, armed := w.minReady[b.App]
		if n := w.readyCount(b); armed && n < m {
			w.minReady[b.App] = n
		}
	}
}

// readyCount counts Ready, not terminating pods of a budget's app: what
// the disruption controller counts as healthy. Call with w.mu held.
func (w *watcher) readyCount(b Budget) int {
	if w.allPods == nil {
		return 0
	}
	n := 0
	for _, obj := range w.allPods.List() {
		if p, ok := obj.(*corev1.Pod); ok && p.Namespace == b.Namespace && p.Labels["app"] == b.App && ready(p) {
			n++
		}
	}
	return n
}

func (w *watcher) eventHandler(on func(*corev1.Event)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if e, ok := obj.(*corev1.Event); ok && !initial {
				on(e)
			}
		},
		// A repeated event is the same object with a higher count.
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Event)
			e, ok2 := obj.(*corev1.Event)
			if ok1 && ok2 && e.Count > o.Count {
				on(e)
			}
		},
	}
}

// onNodeEvent turns the agent's drain events into timeline events.
func (w *watcher) onNodeEvent(e *corev1.Event) {
	kinds := map[string]Kind{
		nodemark.EventDrainWaveStarted:    KindWave,
		nodemark.EventDrainEscalated:      KindEscalated,
		nodemark.EventDrainCompleted:      KindDrained,
		nodemark.EventDrainDeadlinePassed: KindDeadline,
	}
	if k, ok := kinds[e.Reason]; ok {
		w.tl.AddAt(stepTime(e), k, w.node, e.Message)
	}
	if e.Reason == nodemark.EventTerminationCancelled {
		if at, err := time.Parse(time.RFC3339Nano, e.Annotations[nodemark.EventAnnotationWithdrawalSeen]); err == nil {
			w.mu.Lock()
			w.withdrawalSeen = at
			w.mu.Unlock()
		}
	}
}

// stepTime is when a drain step began by the agent's own clock, from the
// event's annotation: events arrive batched, tens of milliseconds late, and
// their own timestamps keep only seconds. Zero (now) when it is missing.
func stepTime(e *corev1.Event) time.Time {
	at, err := time.Parse(time.RFC3339Nano, e.Annotations[nodemark.EventAnnotationStepTime])
	if err != nil {
		return time.Time{}
	}
	return at
}

// onWarning counts budget refusals on the node's pods and binds the webhook
// refused to the scheduler.
func (w *watcher) onWarning(e *corev1.Event) {
	key := e.InvolvedObject.Namespace + "/" + e.InvolvedObject.Name
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case e.Reason == nodemark.EventEvictionBlocked && w.onNode[e.InvolvedObject.UID] != nil:
		w.blocked[key] = true
		w.tl.Add(KindBlocked, key, e.Message)
	case e.Reason == "FailedScheduling" && strings.Contains(e.Message, "denied the request"):
		w.bindsRefused++
		w.tl.Add(KindBindRefused, key, "scheduler's bind refused: "+e.Message)
	}
}

// departures lists the pods whose work stopped: every pod that left, and,
// when the deadline passed, the evictable pods still on the node.
func (w *watcher) departures(deadlinePassed bool) []departure {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []departure
	for _, t := range w.onNode {
		if t.daemon || t.leftAlone {
			continue
		}
		if t.terminating || t.gone || (deadlinePassed && t.evictable()) {
			out = append(out, departure{pod: t.key, owner: t.owner})
		}
	}
	return out
}

// counts is a snapshot of the watch's figures.
type counts struct {
	marked, restored, drained       bool
	markedAt, restoredAt, drainedAt time.Duration
	withdrawalSeen                  time.Time
	mark                            nodemark.Mark
	evicted, left, onNode           int
	blocked, bindsRefused, admitted int
	replacements                    int
	budgets                         []BudgetFigure
	replaced                        map[types.UID]int
	blockedPods                     []string
}

// blockedWithPrefix reports whether a pod whose key starts with prefix had
// an eviction refused.
func (c counts) blockedWithPrefix(prefix string) bool {
	for _, k := range c.blockedPods {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

func (w *watcher) snapshot() counts {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := counts{
		marked: w.marked, restored: w.restored, drained: w.drained,
		markedAt: w.markedAt, restoredAt: w.restoredAt, drainedAt: w.drainedAt, mark: w.mark, withdrawalSeen: w.withdrawalSeen,
		blocked: len(w.blocked), bindsRefused: w.bindsRefused, admitted: w.admitted,
		replaced: map[types.UID]int{},
	}
	for _, t := range w.onNode {
		if t.terminating {
			c.evicted++
		}
		if t.evictable() && !t.gone {
			c.onNode++
		}
	}
	for k := range w.blocked {
		c.blockedPods = append(c.blockedPods, k)
	}
	for uid, n := range w.replaced {
		c.replaced[uid] = n
		c.replacements += n
	}
	for _, b := range w.budgets {
		c.budgets = append(c.budgets, BudgetFigure{App: b.App, Guarantee: b.Guarantee, MinReady: w.minReady[b.App]})
	}
	return c
}

// fmtDur renders a duration as seconds with milliseconds: "+30.000s".
func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.3fs", d.Seconds())
}
