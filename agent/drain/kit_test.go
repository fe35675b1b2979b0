package drain

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/nodemark"
)

// This file is the test kit: a fake API server that behaves like the real
// one for evictions and deletes, a fake kubelet, pod builders, and a driver
// that steps the fake clock while a drain runs.

const (
	testNode = "node-a"
	// tick is how far the driver moves the fake clock per step.
	tick = 50 * time.Millisecond
)

var (
	notice   = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	podsGVR  = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	testMark = nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: notice, Deadline: notice.Add(30 * time.Second)}
)

// call is one mutating request the fake API server received.
type call struct {
	verb  string // "evict" or "delete"
	ns    string
	name  string
	uid   types.UID // of the precondition
	grace *int64
	// end is when the pod's deletion is due to end after this request,
	// computed as the API server does; zero if it did not delete.
	end    time.Time
	dryRun bool
	at     time.Time
	err    error
}

// hook runs inside the fake API server before a request to a pod is
// handled; a non-nil error is returned instead of handling it.
type hook func(pod *corev1.Pod) error

type kit struct {
	t      *testing.T
	client *fake.Clientset
	clk    *clocktesting.FakeClock
	source *PodSource
	rec    *record.FakeRecorder

	mu    sync.Mutex
	calls []call
	// hooks are consumed one per request, by pod name.
	hooks map[string][]hook
	// blocked pods answer every eviction with 429, like a PDB at zero.
	blocked map[string]bool
	// graceful pods stay terminating until their deletionTimestamp, like a
	// kubelet honouring the grace period; stuck pods never go (a finalizer).
	// Other pods disappear as soon as they are deleted.
	graceful map[string]bool
	stuck    map[string]bool
}

func newKit(t *testing.T, pods ...*corev1.Pod) *kit {
	t.Helper()
	objs := make([]runtime.Object, len(pods))
	for i, p := range pods {
		objs[i] = p
	}
	k := &kit{
		t:        t,
		client:   fake.NewClientset(objs...),
		clk:      clocktesting.NewFakeClock(notice),
		rec:      record.NewFakeRecorder(1000),
		hooks:    map[string][]hook{},
		blocked:  map[string]bool{},
		graceful: map[string]bool{},
		stuck:    map[string]bool{},
	}
	k.client.PrependReactor("create", "pods", k.evictReactor)
	k.client.PrependReactor("delete", "pods", k.deleteReactor)
	k.source = NewPodSource(k.client, testNode)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); k.source.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	syncCtx, syncCancel := context.WithTimeout(ctx, 10*time.Second)
	defer syncCancel()
	if !k.source.WaitForSync(syncCtx) {
		t.Fatal("pod cache did not sync")
	}
	return k
}

func (k *kit) drainer(cfg Config) *Drainer {
	cfg.NodeName = testNode
	return New(k.client, k.source, k.clk, cfg, k.rec)
}

func (k *kit) evictReactor(a clienttesting.Action) (bool, runtime.Object, error) {
	ca, ok := a.(clienttesting.CreateAction)
	if !ok || a.GetSubresource() != "eviction" {
		return false, nil, nil
	}
	ev, ok := ca.GetObject().(*policyv1.Eviction)
	if !ok {
		return true, nil, fmt.Errorf("eviction body is %T", ca.GetObject())
	}
	opts := metav1.DeleteOptions{}
	if ev.DeleteOptions != nil {
		opts = *ev.DeleteOptions
	}
	return true, nil, k.handle("evict", a.GetNamespace(), ev.Name, opts)
}

func (k *kit) deleteReactor(a clienttesting.Action) (bool, runtime.Object, error) {
	da, ok := a.(clienttesting.DeleteAction)
	if !ok || a.GetSubresource() != "" {
		return false, nil, nil
	}
	return true, nil, k.handle("delete", a.GetNamespace(), da.GetName(), da.GetDeleteOptions())
}

// handle does what the API server does for an eviction or a delete.
func (k *kit) handle(verb, ns, name string, opts metav1.DeleteOptions) (err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := call{verb: verb, ns: ns, name: name, grace: opts.GracePeriodSeconds, at: k.clk.Now(),
		dryRun: len(opts.DryRun) == 1 && opts.DryRun[0] == metav1.DryRunAll}
	if opts.Preconditions != nil && opts.Preconditions.UID != nil {
		c.uid = *opts.Preconditions.UID
	}
	defer func() { c.err = err; k.calls = append(k.calls, c) }()

	pod, err := k.getLocked(ns, name)
	if pod != nil && len(k.hooks[name]) > 0 {
		h := k.hooks[name][0]
		k.hooks[name] = k.hooks[name][1:]
		if err := h(pod); err != nil {
			return err
		}
		pod, err = k.getLocked(ns, name)
	}
	if err != nil {
		return err
	}
	if c.uid != "" && c.uid != pod.UID {
		return apierrors.NewConflict(podsGVR.GroupResource(), name,
			fmt.Errorf("precondition failed: UID in precondition: %s, UID in object meta: %s", c.uid, pod.UID))
	}
	if verb == "evict" && k.blocked[name] && !terminating(pod) {
		return pdbRefusal()
	}
	if c.dryRun {
		return nil
	}
	c.end = deletionEnd(pod, opts.GracePeriodSeconds, c.at)
	return k.deleteLocked(pod, opts.GracePeriodSeconds)
}

// deletionEnd is when a delete with grace, sent at, makes pod go: a pod
// already being deleted keeps its start and may only end sooner.
func deletionEnd(pod *corev1.Pod, grace *int64, at time.Time) time.Time {
	g := ownGrace(pod)
	if grace != nil {
		g = *grace
	}
	if !terminating(pod) {
		return at.Add(time.Duration(g) * time.Second)
	}
	old := *pod.DeletionGracePeriodSeconds
	if g >= old {
		return pod.DeletionTimestamp.Time
	}
	return pod.DeletionTimestamp.Add(time.Duration(g-old) * time.Second)
}

func (k *kit) getLocked(ns, name string) (*corev1.Pod, error) {
	obj, err := k.client.Tracker().Get(podsGVR, ns, name)
	if err != nil {
		return nil, err
	}
	return obj.(*corev1.Pod).DeepCopy(), nil
}

// deleteLocked applies a graceful delete the way the API server does:
// it sets deletionTimestamp, and a later delete may only shorten it,
// measured from the original deletion.
func (k *kit) deleteLocked(pod *corev1.Pod, grace *int64) error {
	g := ownGrace(pod)
	if grace != nil {
		g = *grace
	}
	now := k.clk.Now()
	if terminating(pod) {
		old := *pod.DeletionGracePeriodSeconds
		if g >= old {
			return nil
		}
		start := pod.DeletionTimestamp.Add(-time.Duration(old) * time.Second)
		pod.DeletionTimestamp = &metav1.Time{Time: start.Add(time.Duration(g) * time.Second)}
		pod.DeletionGracePeriodSeconds = &g
		return k.client.Tracker().Update(podsGVR, pod, pod.Namespace)
	}
	if g == 0 || !(k.graceful[pod.Name] || k.stuck[pod.Name]) {
		return k.client.Tracker().Delete(podsGVR, pod.Namespace, pod.Name)
	}
	pod.DeletionTimestamp = &metav1.Time{Time: now.Add(time.Duration(g) * time.Second)}
	pod.DeletionGracePeriodSeconds = &g
	return k.client.Tracker().Update(podsGVR, pod, pod.Namespace)
}

// reap is the fake kubelet: it removes graceful pods whose grace is over.
func (k *kit) reap() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, pod := range k.podsLocked() {
		if terminating(pod) && !k.stuck[pod.Name] && !pod.DeletionTimestamp.After(k.clk.Now()) {
			if err := k.client.Tracker().Delete(podsGVR, pod.Namespace, pod.Name); err != nil && !apierrors.IsNotFound(err) {
				k.t.Errorf("fake kubelet: delete %s: %v", pod.Name, err)
			}
		}
	}
}

func (k *kit) podsLocked() []*corev1.Pod {
	obj, err := k.client.Tracker().List(podsGVR, corev1.SchemeGroupVersion.WithKind("Pod"), "")
	if err != nil {
		k.t.Fatalf("list pods: %v", err)
	}
	list := obj.(*corev1.PodList)
	pods := make([]*corev1.Pod, len(list.Items))
	for i := range list.Items {
		pods[i] = &list.Items[i]
	}
	return pods
}

// pods returns the pods on the fake API server by name.
func (k *kit) pods() map[string]*corev1.Pod {
	k.mu.Lock()
	defer k.mu.Unlock()
	m := map[string]*corev1.Pod{}
	for _, p := range k.podsLocked() {
		m[p.Name] = p
	}
	return m
}

func (k *kit) hook(name string, hs ...hook) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.hooks[name] = append(k.hooks[name], hs...)
}

// callsFor returns the requests for one pod name, oldest first.
func (k *kit) callsFor(name string) []call {
	var out []call
	for _, c := range k.allCalls() {
		if c.name == name {
			out = append(out, c)
		}
	}
	return out
}

func (k *kit) allCalls() []call {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]call(nil), k.calls...)
}

// runOpts tunes a driven Run.
type runOpts struct {
	// stopAt cancels the run's context once the fake clock reaches it.
	stopAt time.Time
	// onStep runs after each step of the fake clock.
	onStep func()
}

// drive runs d and steps the fake clock by tick until Run returns, with the
// fake kubelet reaping pods after each step. The real-time limit only
// catches a hung drain.
func (k *kit) drive(d *Drainer, mark nodemark.Mark, o runOpts) (Result, error) {
	k.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type out struct {
		res Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := d.Run(ctx, mark)
		done <- out{res, err}
	}()
	limit := time.NewTimer(30 * time.Second)
	defer limit.Stop()
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case o := <-done:
			return o.res, o.err
		case <-limit.C:
			k.t.Fatalf("Run still running at fake time %s", k.clk.Now().Sub(notice))
		case <-poll.C:
			if !o.stopAt.IsZero() && !k.clk.Now().Before(o.stopAt) {
				cancel()
				continue
			}
			k.clk.Step(tick)
			k.reap()
			if o.onStep != nil {
				o.onStep()
			}
		}
	}
}

// clockSkew is how far the fake clock may move between the drainer
// computing a grace period and the fake API server stamping the request: the
// driver steps every real millisecond, so a loaded machine (seen in CI-like
// runs: two steps) may step a few times while a request is in flight. A
// grace that is not clamped at all overshoots by seconds, far beyond it.
const clockSkew = 4 * tick

// expectWithinDeadline checks what every drain owes the user: no request
// after the deadline, and no deletion asked to end after it (within
// clockSkew).
func (k *kit) expectWithinDeadline(mark nodemark.Mark) {
	k.t.Helper()
	for _, c := range k.allCalls() {
		if c.at.After(mark.Deadline) {
			k.t.Errorf("%s %s sent at %s, after the deadline", c.verb, c.name, c.at.Sub(notice))
		}
		if c.end.After(mark.Deadline.Add(clockSkew)) {
			k.t.Errorf("%s %s at %s with grace %v makes the pod go at %s, after the deadline",
				c.verb, c.name, c.at.Sub(notice), deref(c.grace), c.end.Sub(notice))
		}
	}
}

// events drains the recorded events.
func (k *kit) events() []string {
	var out []string
	for {
		select {
		case e := <-k.rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func hasEvent(events []string, reason string) bool {
	for _, e := range events {
		if strings.Contains(e, " "+reason+" ") {
			return true
		}
	}
	return false
}

// pdbRefusal is the API server's answer when a PodDisruptionBudget allows
// no disruption: a 429 whose status names the budget as its cause.
func pdbRefusal() error {
	err := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
	err.ErrStatus.Details.Causes = append(err.ErrStatus.Details.Causes,
		metav1.StatusCause{Type: policyv1.DisruptionBudgetCause, Message: "The disruption budget web needs 1 healthy pods and has 1 currently"})
	return err
}

// throttled is API priority and fairness turning a request away: a 429 in
// plain text, which client-go turns into a status with no cause.
func throttled() error {
	return apierrors.NewGenericServerResponse(http.StatusTooManyRequests, "POST", podsGVR.GroupResource(), "", "Too many requests, please try again later.", 0, true)
}

func fail(err error) hook { return func(*corev1.Pod) error { return err } }

// pod builds a running pod on the test node; options adjust it.
func pod(name string, opts ...func(*corev1.Pod)) *corev1.Pod {
	grace := int64(30)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name + "-uid")},
		Spec: corev1.PodSpec{NodeName: testNode, TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func inNamespace(ns string) func(*corev1.Pod) { return func(p *corev1.Pod) { p.Namespace = ns } }

func onNode(n string) func(*corev1.Pod) { return func(p *corev1.Pod) { p.Spec.NodeName = n } }

func withGrace(s int64) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.TerminationGracePeriodSeconds = &s }
}

func fromDaemonSet(p *corev1.Pod) {
	yes := true
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "agent", UID: "ds", Controller: &yes}}
}

func mirror(p *corev1.Pod) {
	p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "hash"}
}

func finished(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }

func withOrder(v string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[nodemark.AnnotationDrainOrder] = v
	}
}

// tolerating makes the pod tolerate the termination taint (NoSchedule), for
// seconds if given, forever otherwise.
func tolerating(seconds ...int64) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		t := corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
		if len(seconds) > 0 {
			t.TolerationSeconds = &seconds[0]
		}
		p.Spec.Tolerations = append(p.Spec.Tolerations, t)
	}
}

// beingDeleted makes the pod terminating since at, with grace g.
func beingDeleted(at time.Time, g int64) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.DeletionTimestamp = &metav1.Time{Time: at.Add(time.Duration(g) * time.Second)}
		p.DeletionGracePeriodSeconds = &g
		p.Finalizers = []string{"example.com/hold"}
	}
}

func names(calls []call) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = c.name
	}
	sort.Strings(out)
	return out
}

func firstCall(calls []call, verb string) (call, bool) {
	for _, c := range calls {
		if c.verb == verb {
			return c, true
		}
	}
	return call{}, false
}

func expectNoError(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func expectDeadlinePassed(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrDeadlinePassed) {
		t.Fatalf("error %v, want ErrDeadlinePassed", err)
	}
}
