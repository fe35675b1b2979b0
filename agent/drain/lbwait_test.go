package drain

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/nodemark"
)

// fakeLBs plays agent/lb: which Services front which pods, and when the
// node is seen leaving each load balancer (by the fake clock).
type fakeLBs struct {
	clk clock.PassiveClock

	mu         sync.Mutex
	front      map[string]Fronting  // by pod name
	leaves     map[string]time.Time // when the evidence arrives, by Service
	failures   map[string]string
	classifies time.Time // Fronting answers from then on
	seen       map[string]bool
	changed    chan struct{}
	followed   int
}

func newFakeLBs(clk clock.PassiveClock) *fakeLBs {
	return &fakeLBs{clk: clk, front: map[string]Fronting{}, leaves: map[string]time.Time{},
		failures: map[string]string{}, seen: map[string]bool{}, changed: make(chan struct{}, 1)}
}

func (f *fakeLBs) Follow(context.Context, nodemark.Mark) LoadBalancerView {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.followed++
	return f
}

func (f *fakeLBs) Classifies() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.clk.Now().Before(f.classifies)
}

func (f *fakeLBs) Fronting(p *corev1.Pod) Fronting {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.front[p.Name]
}

func (f *fakeLBs) Left(svc string) (time.Time, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if at, ok := f.leaves[svc]; ok && !f.clk.Now().Before(at) {
		return at, ""
	}
	return time.Time{}, f.failures[svc]
}

func (f *fakeLBs) Changed() <-chan struct{} { return f.changed }

// step signals a change when evidence or classification arrives, as the
// real view does when its watch delivers.
func (f *fakeLBs) step() {
	f.mu.Lock()
	now, changed := f.clk.Now(), false
	for svc, at := range f.leaves {
		if !now.Before(at) && !f.seen[svc] {
			f.seen[svc], changed = true, true
		}
	}
	if !now.Before(f.classifies) && !f.seen["\x00classified"] {
		f.seen["\x00classified"], changed = true, true
	}
	f.mu.Unlock()
	if changed {
		select {
		case f.changed <- struct{}{}:
		default:
		}
	}
}

func (f *fakeLBs) backs(pod string, fr Fronting) { f.front[pod] = fr }

// firstEviction returns when pod was first asked to go, since the notice.
func (k *kit) firstEviction(pod string) (time.Duration, bool) {
	for _, c := range k.callsFor(pod) {
		return c.at.Sub(notice), true
	}
	return 0, false
}

func eventWith(events []string, reason string) string {
	for _, e := range events {
		if strings.Contains(e, " "+reason+" ") {
			return e
		}
	}
	return ""
}

func TestLBWaitCapComesFromTheMarkAndNeverPassesTheRegularCutoff(t *testing.T) {
	caps := DefaultWaitCaps()
	mark := func(reason nodemark.Reason, window time.Duration) nodemark.Mark {
		return nodemark.Mark{State: nodemark.StateTerminating, Reason: reason, NoticeTime: notice, Deadline: notice.Add(window)}
	}
	cutoffOf := func(m nodemark.Mark) time.Time { return m.Deadline.Add(-DefaultSystemGrace) }
	for _, tc := range []struct {
		name string
		mark nodemark.Mark
		cap  WaitCap
		want time.Duration // after the notice
	}{
		{"Spot 30 s: 40% of the notice", mark(nodemark.ReasonPreempted, 30*time.Second), caps[nodemark.ReasonPreempted], 12 * time.Second},
		{"host maintenance 60 s: 40%", mark(nodemark.ReasonHostMaintenance, 60*time.Second), caps[nodemark.ReasonHostMaintenance], 24 * time.Second},
		{"GPU maintenance 60 min: the absolute bound", mark(nodemark.ReasonHostMaintenance, 60*time.Minute), caps[nodemark.ReasonHostMaintenance], 5 * time.Minute},
		{"a long Spot notice stays under 15 s", mark(nodemark.ReasonPreempted, 2*time.Minute), caps[nodemark.ReasonPreempted], 15 * time.Second},
		{"a fraction past the cut-off stops at the cut-off", mark(nodemark.ReasonPreempted, 30*time.Second), WaitCap{Fraction: 0.9, Max: time.Minute}, 20 * time.Second},
		{"no wait at all", mark(nodemark.ReasonPreempted, 30*time.Second), WaitCap{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := lbCapAt(tc.mark, tc.cap, cutoffOf(tc.mark)).Sub(notice); got != tc.want {
				t.Errorf("cap %s after the notice, want %s", got, tc.want)
			}
		})
	}
	// A late start: the VM got the notice 15 s before the agent saw it, and
	// the mark says so; 40% of its 30 s are gone.
	late := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: notice.Add(-15 * time.Second), Deadline: notice.Add(15 * time.Second)}
	if got := lbCapAt(late, caps[nodemark.ReasonPreempted], cutoffOf(late)); got.After(notice) {
		t.Errorf("late start: cap %s after the agent saw the notice, want already passed", got.Sub(notice))
	}
	if c := capFor(caps, "SomethingNew"); c != caps[nodemark.ReasonPreempted] {
		t.Errorf("unknown reason gets %+v, want the Preempted cap", c)
	}
}

func TestLBBackendsWaitForTheNodeToLeaveAndNEGBackendsGoFirst(t *testing.T) {
	k := newKit(t, pod("web-1"), pod("web-2"), pod("neg-1"), pod("plain"), pod("dns", inNamespace("kube-system")))
	lbs := newFakeLBs(k.clk)
	lbs.backs("web-1", Fronting{Node: []string{"default/web"}})
	lbs.backs("web-2", Fronting{Node: []string{"default/web", "default/web-internal"}})
	lbs.backs("neg-1", Fronting{NEG: true})
	lbs.leaves["default/web"] = notice.Add(3 * time.Second)
	lbs.leaves["default/web-internal"] = notice.Add(5 * time.Second)
	res, err := k.drive(k.drainer(Config{LoadBalancers: lbs}), testMark, runOpts{onStep: lbs.step})
	expectNoError(t, err)
	k.expectWithinDeadline(testMark)

	at := func(name string) time.Duration {
		t.Helper()
		d, ok := k.firstEviction(name)
		if !ok {
			t.Fatalf("%s was never evicted", name)
		}
		return d
	}
	// "At once": within the steps a loaded machine lets the fake clock
	// take while the first requests are in flight (clockSkew), against
	// the seconds the load-balancer wait takes.
	if d := at("neg-1"); d > clockSkew {
		t.Errorf("NEG backend evicted %s after the notice, want at once", d)
	}
	if d := at("plain"); d > clockSkew {
		t.Errorf("a pod behind no load balancer evicted %s after the notice, want at once", d)
	}
	if s, ok := res.Started[StepEvictNEGBackends]; !ok || s > clockSkew {
		t.Errorf("evictNEGBackends started %v (%v), want at once, before evictRegular", s, ok)
	}
	// web-1 waits for web (3 s) + margin; web-2 for both (5 s) + margin.
	if d, want := at("web-1"), 3*time.Second+DefaultLBMargin; d < want || d > want+clockSkew {
		t.Errorf("web-1 evicted %s after the notice, want %s (evidence + margin)", d, want)
	}
	if d, want := at("web-2"), 5*time.Second+DefaultLBMargin; d < want || d > want+clockSkew {
		t.Errorf("web-2 evicted %s after the notice, want %s (its last Service + margin)", d, want)
	}
	if d := at("dns"); d < at("web-2") {
		t.Errorf("system pod evicted %s after the notice, before the held regular pods", d)
	}
	events := k.events()
	ev := eventWith(events, nodemark.EventLoadBalancersDrained)
	if ev == "" || !strings.Contains(ev, "default/web after 3s") || !strings.Contains(ev, "default/web-internal after 5s") {
		t.Errorf("LoadBalancersDrained event %q, want the time per Service; events %v", ev, events)
	}
	if hasEvent(events, nodemark.EventLoadBalancerWaitCapped) {
		t.Errorf("capped event although every load balancer confirmed: %v", events)
	}
	if res.LBCapped || res.LBWait < 5*time.Second+DefaultLBMargin || len(res.LBWaited) != 2 {
		t.Errorf("result %+v, want a drained wait of 2 Services ending at 7s", res)
	}
	if _, ok := res.Started[StepAwaitLoadBalancers]; !ok {
		t.Errorf("no awaitLoadBalancers step in %v", res.Started)
	}
}

func TestLBWaitStopsAtTheCapNamingTheServicesAndKeepsTheDeadline(t *testing.T) {
	k := newKit(t, pod("web", withGrace(5)), pod("api", withGrace(5)))
	lbs := newFakeLBs(k.clk)
	lbs.backs("web", Fronting{Node: []string{"default/web"}})
	lbs.backs("api", Fronting{Node: []string{"default/api"}})
	lbs.leaves["default/api"] = notice.Add(2 * time.Second)
	lbs.failures["default/web"] = "quota exceeded"
	res, err := k.drive(k.drainer(Config{LoadBalancers: lbs}), testMark, runOpts{onStep: lbs.step})
	expectNoError(t, err)
	k.expectWithinDeadline(testMark)
	if d, _ := k.firstEviction("web"); d < 12*time.Second || d > 12*time.Second+clockSkew {
		t.Errorf("web evicted %s after the notice, want at the 12 s cap", d)
	}
	if d, _ := k.firstEviction("api"); d > 4*time.Second+clockSkew {
		t.Errorf("api evicted %s after the notice; its load balancer confirmed at 2 s", d)
	}
	ev := eventWith(k.events(), nodemark.EventLoadBalancerWaitCapped)
	if !strings.Contains(ev, "default/web (last failure: quota exceeded)") || strings.Contains(ev, "default/api") {
		t.Errorf("capped event %q, want it to name web with its failure and not api", ev)
	}
	if !res.LBCapped || res.LBWait < 12*time.Second {
		t.Errorf("result %+v, want a capped wait at 12 s", res)
	}
}

func TestLBWaitDoesNotHoldALateStartWhoseCapHasPassed(t *testing.T) {
	late := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: notice.Add(-15 * time.Second), Deadline: notice.Add(15 * time.Second)}
	k := newKit(t, pod("web", withGrace(5)))
	lbs := newFakeLBs(k.clk)
	lbs.backs("web", Fronting{Node: []string{"default/web"}})
	_, err := k.drive(k.drainer(Config{LoadBalancers: lbs}), late, runOpts{onStep: lbs.step})
	expectNoError(t, err)
	k.expectWithinDeadline(late)
	if d, _ := k.firstEviction("web"); d > clockSkew {
		t.Errorf("web evicted %s after the agent saw the notice, want at once: the cap passed before", d)
	}
	if !hasEvent(k.events(), nodemark.EventLoadBalancerWaitCapped) {
		t.Error("no LoadBalancerWaitCapped event for the Service the late start could not wait for")
	}
}

func TestLBWaitHoldsEveryPodUntilTheServicesAreRead(t *testing.T) {
	k := newKit(t, pod("plain"), pod("web"))
	lbs := newFakeLBs(k.clk)
	lbs.classifies = notice.Add(time.Second)
	lbs.backs("web", Fronting{Node: []string{"default/web"}})
	lbs.leaves["default/web"] = notice.Add(2 * time.Second)
	_, err := k.drive(k.drainer(Config{LoadBalancers: lbs}), testMark, runOpts{onStep: lbs.step})
	expectNoError(t, err)
	if d, _ := k.firstEviction("plain"); d < time.Second || d > time.Second+clockSkew {
		t.Errorf("plain evicted %s after the notice, want once the Services were read (1 s)", d)
	}
	if d, _ := k.firstEviction("web"); d < 2*time.Second+DefaultLBMargin {
		t.Errorf("web evicted %s after the notice, before its load balancer confirmed", d)
	}
}

func TestLBWaitEndsEarlierWhenSignalledAndTheCutoffMoves(t *testing.T) {
	k := newKit(t, pod("web", withGrace(2)))
	lbs := newFakeLBs(k.clk)
	lbs.backs("web", Fronting{Node: []string{"default/web"}})
	d := k.drainer(Config{LoadBalancers: lbs})
	// The agent is told to stop 15 s after the notice: the regular cut-off
	// moves to 5 s, before the 12 s cap.
	d.Hurry(notice.Add(15 * time.Second))
	_, err := k.drive(d, testMark, runOpts{onStep: lbs.step})
	expectNoError(t, err)
	if at, _ := k.firstEviction("web"); at > 5*time.Second+clockSkew {
		t.Errorf("web evicted %s after the notice, after the moved cut-off (5 s)", at)
	}
}

func TestWithoutLoadBalancersTheStepsAreTheOldOnes(t *testing.T) {
	r := &run{}
	for _, s := range r.plan() {
		switch s.name {
		case StepAwaitLoadBalancers, StepEvictNEGBackends:
			t.Errorf("step %s in a drain that does not wait for load balancers", s.name)
		}
	}
}

func TestLBWaitConfigRejectsBadCaps(t *testing.T) {
	cfg := Config{NodeName: "n", LBWaitCaps: map[nodemark.Reason]WaitCap{nodemark.ReasonPreempted: {Fraction: 1.5}}, LBMargin: -time.Second}.WithDefaults()
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "fraction 1.5") || !strings.Contains(err.Error(), "margin -1s") {
		t.Errorf("Validate: %v, want both the cap and the margin reported", err)
	}
}
