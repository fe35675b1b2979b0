package lb

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
)

func service(ns, name string, opts ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name)},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Selector: map[string]string{"app": name}},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func loadBalancer(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer }
func local(s *corev1.Service) {
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
}
func annotated(k, v string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Annotations = map[string]string{k: v} }
}
func labelled(k, v string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Labels = map[string]string{k: v} }
}

func TestClassOfFollowsTheServiceControllerAndTheSelectors(t *testing.T) {
	sel, err := ParseSelectors("lb.example/ignore", "lb.example/wait=yes", "lb.example/first")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		want Class
	}{
		{"LoadBalancer, Local", service("a", "web", loadBalancer, local), ClassNode},
		{"LoadBalancer, Cluster", service("a", "web", loadBalancer), ClassNode},
		{"LoadBalancer handed to another controller", service("a", "web", loadBalancer, func(s *corev1.Service) {
			s.Spec.LoadBalancerClass = ptr.To("example.com/lb")
		}), ClassNone},
		{"ClusterIP", service("a", "web"), ClassNone},
		{"NEG for ingress", service("a", "web", annotated(AnnotationNEG, `{"ingress": true}`)), ClassNEG},
		{"NEG on exposed ports", service("a", "web", annotated(AnnotationNEG, `{"exposed_ports": {"80": {}}}`)), ClassNEG},
		{"NEG turned off", service("a", "web", annotated(AnnotationNEG, `{"ingress": false}`)), ClassNone},
		{"NEG value that does not parse", service("a", "web", annotated(AnnotationNEG, `yes`)), ClassNone},
		{"ignored LoadBalancer", service("a", "web", loadBalancer, labelled("lb.example/ignore", "")), ClassNone},
		{"ClusterIP forced to wait", service("a", "web", labelled("lb.example/wait", "yes")), ClassNode},
		{"LoadBalancer forced first", service("a", "web", loadBalancer, labelled("lb.example/first", "x")), ClassNEG},
	} {
		if got := sel.ClassOf(tc.svc); got != tc.want {
			t.Errorf("%s: class %s, want %s", tc.name, got, tc.want)
		}
	}
	if _, err := ParseSelectors("", "a in (", ""); err == nil {
		t.Error("a broken selector parsed")
	}
}

const (
	svcA = types.UID("a")
	svcB = types.UID("b")
)

func occ(svc types.UID, reason string, at int) occurrence {
	return occurrence{service: svc, reason: reason, at: time.Unix(int64(at), 0)}
}

func TestEvidenceTrustsOnlyCallsThatBeganAfterTheMark(t *testing.T) {
	t.Run("idle controller: the first update counts", func(t *testing.T) {
		e := newEvidence(true, true, time.Time{})
		e.observe(occ(svcA, ReasonUpdated, 5))
		if e.left[svcA] != time.Unix(5, 0) {
			t.Errorf("left %v, want 5", e.left)
		}
	})
	t.Run("a sync under way: the call that was in flight does not count", func(t *testing.T) {
		// Another node was preempted just before: the controller's call
		// for A listed the hosts before this node's label.
		e := newEvidence(false, true, time.Unix(1, 0))
		e.observe(occ(svcA, ReasonUpdated, 3))
		if _, ok := e.left[svcA]; ok {
			t.Fatal("the update in flight at the mark was taken as evidence")
		}
		// B's call began after A's ended, so after the mark.
		e.observe(occ(svcB, ReasonUpdated, 6))
		if e.left[svcB] != time.Unix(6, 0) {
			t.Errorf("B's update after another's did not count: %v", e.left)
		}
		// The controller's next pass updates A again: that one counts.
		e.observe(occ(svcA, ReasonUpdated, 9))
		if e.left[svcA] != time.Unix(9, 0) {
			t.Errorf("A's second update did not count: %v", e.left)
		}
	})
	t.Run("parallel syncs: only a Service's own second update vouches", func(t *testing.T) {
		e := newEvidence(false, false, time.Unix(1, 0))
		e.observe(occ(svcA, ReasonUpdated, 3))
		e.observe(occ(svcB, ReasonUpdated, 4))
		if len(e.left) != 0 {
			t.Fatalf("with parallel calls an update vouched for another: %v", e.left)
		}
		e.observe(occ(svcB, ReasonUpdated, 8))
		if e.left[svcB] != time.Unix(8, 0) {
			t.Errorf("B's second update did not count: %v", e.left)
		}
	})
	t.Run("an update that may have been in flight counts once the controller is quiet", func(t *testing.T) {
		// A node joined 2 s before the mark (busy since 1); the one update
		// after it took 2 s. A pass under way would make its next call
		// within about as long: past that and a second, nothing was.
		e := newEvidence(false, true, time.Unix(1, 0))
		e.observe(occ(svcA, ReasonUpdated, 3))
		if e.settle(time.Unix(5, 0)) || len(e.left) != 0 {
			t.Fatalf("settled while a pass may still be under way: %v", e.left)
		}
		if !e.settle(time.Unix(6, 500e6)) || e.left[svcA] != time.Unix(3, 0) {
			t.Errorf("not settled once quiet: %v", e.left)
		}
	})
	t.Run("a further update resets the quiet", func(t *testing.T) {
		e := newEvidence(false, false, time.Unix(1, 0))
		e.observe(occ(svcA, ReasonUpdated, 3))
		e.observe(occ(svcB, ReasonUpdated, 6)) // the controller is still busy
		if e.settle(time.Unix(8, 0)) {
			t.Fatal("settled 2 s after an update, with 3 s calls")
		}
		if !e.settle(time.Unix(10, 100e6)) || len(e.left) != 2 {
			t.Errorf("left %v after the quiet, want both", e.left)
		}
	})
	t.Run("service sync counts only when it started after the mark", func(t *testing.T) {
		e := newEvidence(true, true, time.Time{})
		e.observe(occ(svcA, ReasonEnsured, 2))
		if len(e.left) != 0 {
			t.Fatal("an ensure that began before the mark counted")
		}
		e.observe(occ(svcA, ReasonEnsuring, 3))
		e.observe(occ(svcA, ReasonEnsured, 7))
		if e.left[svcA] != time.Unix(7, 0) {
			t.Errorf("left %v, want A at 7", e.left)
		}
	})
	t.Run("a failure is kept until a success", func(t *testing.T) {
		e := newEvidence(true, true, time.Time{})
		e.observe(occurrence{service: svcA, reason: ReasonUpdateFailed, at: time.Unix(2, 0), message: "quota"})
		if e.failure[svcA] != "quota" {
			t.Fatalf("failure %v", e.failure)
		}
		e.observe(occ(svcA, ReasonUpdated, 6))
		if _, ok := e.failure[svcA]; ok || e.left[svcA].IsZero() {
			t.Errorf("after the success: left %v, failure %v", e.left, e.failure)
		}
	})
	t.Run("a resumed drain adopts what happened in a later second", func(t *testing.T) {
		mark := time.Unix(100, 400e6)
		e := newEvidence(false, true, time.Unix(1, 0))
		e.adopt(svcA, ReasonUpdated, time.Unix(100, 0), mark) // same second: maybe before
		e.adopt(svcB, ReasonUpdated, time.Unix(101, 0), mark)
		if _, ok := e.left[svcA]; ok || e.left[svcB].IsZero() {
			t.Errorf("adopted %v, want B only", e.left)
		}
	})
}

func TestIdleAtLooksAtTheQuietWindowInWholeSeconds(t *testing.T) {
	mark := time.Unix(1000, 500e6)
	for _, tc := range []struct {
		recent []time.Time
		want   bool
	}{
		{nil, true},
		{[]time.Time{time.Unix(900, 0)}, true},
		{[]time.Time{time.Unix(940, 0)}, false}, // 60 s window starts at 940
		{[]time.Time{time.Unix(1000, 0)}, false},
		{[]time.Time{time.Unix(1001, 0)}, false}, // between the mark and the list
	} {
		if got := idleAt(mark, time.Minute, tc.recent); got != tc.want {
			t.Errorf("idleAt with %v: %v, want %v", tc.recent, got, tc.want)
		}
	}
}

// The session against a fake API server: pods classified from the cached
// Services, evidence from events recorded after the session started.
func TestSessionClassifiesPodsAndConfirmsFromEventsAfterTheMark(t *testing.T) {
	web := service("shop", "web", loadBalancer, local)
	neg := service("shop", "front", annotated(AnnotationNEG, `{"ingress":true}`))
	other := service("shop", "db")
	// An update recorded before the mark must not count.
	old := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web.1"}, Reason: ReasonUpdated, Count: 3,
		InvolvedObject: corev1.ObjectReference{Kind: "Service", Namespace: "shop", Name: "web", UID: web.UID},
		LastTimestamp:  metav1.NewTime(time.Now().Add(-10 * time.Minute))}
	self := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{nodemark.LabelExcludeFromLB: "true"}}}
	client := fake.NewClientset(web, neg, other, old, self)
	tr := NewTracker(client, clock.RealClock{}, Config{NodeName: "n1", SerialNodeSync: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Run(ctx)
	mark := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: time.Now(), Deadline: time.Now().Add(30 * time.Second)}
	view := tr.Follow(ctx, mark)
	waitFor(t, "the Services read", view.Classifies)

	pod := func(app string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: app + "-1", UID: types.UID(app), Labels: map[string]string{"app": app}}}
	}
	if f := view.Fronting(pod("web")); len(f.Node) != 1 || f.Node[0] != "shop/web" || f.NEG {
		t.Errorf("web fronted by %+v, want the node-level shop/web", f)
	}
	if f := view.Fronting(pod("front")); !f.NEG || len(f.Node) != 0 {
		t.Errorf("front fronted by %+v, want NEG", f)
	}
	if f := view.Fronting(pod("db")); f.NEG || len(f.Node) != 0 {
		t.Errorf("db fronted by %+v, want nothing", f)
	}
	// Let the session take its baseline, then record the update.
	waitFor(t, "the session's first list", func() bool {
		s := view.(*session)
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.ev != nil
	})
	if at, _ := view.Left("shop/web"); !at.IsZero() {
		t.Fatalf("left at %v from an event older than the mark", at)
	}
	old = old.DeepCopy()
	old.Count, old.LastTimestamp = 4, metav1.Now()
	if _, err := client.CoreV1().Events("shop").Update(ctx, old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the node confirmed gone from shop/web", func() bool { at, _ := view.Left("shop/web"); return !at.IsZero() })
	select {
	case <-view.Changed():
	default:
		t.Error("no change signalled for the confirmation")
	}
	if err := client.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web gone from the cache", func() bool { return tr.service("shop/web") == nil })
	if f := view.Fronting(pod("web")); len(f.Node) != 0 {
		t.Errorf("deleted Service still fronts: %+v", f)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
