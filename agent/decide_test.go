package agent

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/nodemark"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func clearSignals() signals {
	return signals{
		watch.KeyPreempted:           {Key: watch.KeyPreempted, Kind: watch.KindClear, At: t0},
		watch.KeyMaintenanceEvent:    {Key: watch.KeyMaintenanceEvent, Kind: watch.KindClear, At: t0},
		watch.KeyUpcomingMaintenance: {Key: watch.KeyUpcomingMaintenance, Kind: watch.KindClear, At: t0},
	}
}

func testNode(labels map[string]string, annotations map[string]string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: labels, Annotations: annotations},
		Status:     corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{BootID: "boot-1"}},
	}
}

func TestDecide(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName = "n"
	notice := t0.Add(time.Second)
	gpu := map[string]string{cfg.AcceleratorLabel: "nvidia-l4"}
	cases := map[string]struct {
		set          func(signals)
		labels       map[string]string
		now          time.Time
		wantNone     bool
		wantReason   nodemark.Reason
		wantState    nodemark.State
		wantDeadline time.Time
		wantWake     time.Time
	}{
		"nothing happening means no mark": {set: func(signals) {}, wantNone: true},
		"a preemption drains with a 30s deadline": {
			set:        func(s signals) { s[watch.KeyPreempted] = watch.Observation{Kind: watch.KindTerminate, At: notice} },
			wantReason: nodemark.ReasonPreempted, wantState: nodemark.StateTerminating, wantDeadline: notice.Add(30 * time.Second),
		},
		"host maintenance on an ordinary VM gets 60s": {
			set: func(s signals) {
				s[watch.KeyMaintenanceEvent] = watch.Observation{Kind: watch.KindTerminate, At: notice}
			},
			wantReason: nodemark.ReasonHostMaintenance, wantState: nodemark.StateTerminating, wantDeadline: notice.Add(60 * time.Second),
		},
		"host maintenance on a GPU VM gets the hour": {
			set: func(s signals) {
				s[watch.KeyMaintenanceEvent] = watch.Observation{Kind: watch.KindTerminate, At: notice}
			},
			labels:     gpu,
			wantReason: nodemark.ReasonHostMaintenance, wantState: nodemark.StateTerminating, wantDeadline: notice.Add(time.Hour),
		},
		"live migration drains nothing": {
			set:      func(s signals) { s[watch.KeyMaintenanceEvent] = watch.Observation{Kind: watch.KindMigrate, At: notice} },
			wantNone: true,
		},
		"preemption wins over a maintenance event": {
			set: func(s signals) {
				s[watch.KeyMaintenanceEvent] = watch.Observation{Kind: watch.KindTerminate, At: t0}
				s[watch.KeyPreempted] = watch.Observation{Kind: watch.KindTerminate, At: notice}
			},
			labels:     gpu,
			wantReason: nodemark.ReasonPreempted, wantState: nodemark.StateTerminating, wantDeadline: notice.Add(30 * time.Second),
		},
		"a window far ahead only discourages": {
			set: func(s signals) {
				s[watch.KeyUpcomingMaintenance] = watch.Observation{Kind: watch.KindScheduled, At: notice, Window: &watch.Window{Start: t0.Add(2 * time.Hour)}}
			},
			now:        notice,
			wantReason: nodemark.ReasonUpcomingMaintenance, wantState: nodemark.StateAdvance, wantDeadline: t0.Add(2 * time.Hour),
			wantWake: t0.Add(2*time.Hour - 15*time.Minute),
		},
		"a window within the lead drains until its start": {
			set: func(s signals) {
				s[watch.KeyUpcomingMaintenance] = watch.Observation{Kind: watch.KindScheduled, At: notice, Window: &watch.Window{Start: t0.Add(10 * time.Minute)}}
			},
			now:        notice,
			wantReason: nodemark.ReasonUpcomingMaintenance, wantState: nodemark.StateTerminating, wantDeadline: t0.Add(10 * time.Minute),
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s := clearSignals()
			tc.set(s)
			now := tc.now
			if now.IsZero() {
				now = notice
			}
			d := decide(cfg, s, testNode(tc.labels, nil), now)
			if tc.wantNone {
				if d.mark != nil {
					t.Fatalf("got mark %+v, want none", *d.mark)
				}
				return
			}
			if d.mark == nil {
				t.Fatal("got no mark")
			}
			m := *d.mark
			if !d.wake.Equal(tc.wantWake) {
				t.Errorf("wakes at %s, want %s", d.wake, tc.wantWake)
			}
			if m.Reason != tc.wantReason || m.State != tc.wantState || !m.Deadline.Equal(tc.wantDeadline) || m.BootID != "boot-1" {
				t.Fatalf("got %s/%s deadline %s boot %q; want %s/%s deadline %s boot boot-1",
					m.Reason, m.State, m.Deadline, m.BootID, tc.wantReason, tc.wantState, tc.wantDeadline)
			}
		})
	}
}

// A restarted agent re-reads the notice later than its predecessor did; it
// must keep the deadline already on the Node, not grant itself a new one.
func TestDecideKeepsTheRecordedDeadlineAcrossRestarts(t *testing.T) {
	cfg := DefaultConfig()
	first := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: t0, Deadline: t0.Add(30 * time.Second), BootID: "boot-1"}
	s := clearSignals()
	s[watch.KeyPreempted] = watch.Observation{Kind: watch.KindTerminate, At: t0.Add(12 * time.Second)}
	d := decide(cfg, s, testNode(nil, first.Annotations()), t0.Add(12*time.Second))
	if d.mark == nil || !d.mark.Deadline.Equal(first.Deadline) || !d.mark.NoticeTime.Equal(first.NoticeTime) {
		t.Fatalf("got %+v, want the recorded notice %s and deadline %s", d.mark, first.NoticeTime, first.Deadline)
	}
}

// A mark from an earlier boot is not this VM's: its deadline is not reused.
func TestDecideIgnoresAMarkFromAnotherBoot(t *testing.T) {
	cfg := DefaultConfig()
	old := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: t0, Deadline: t0.Add(30 * time.Second), BootID: "boot-0"}
	s := clearSignals()
	later := t0.Add(time.Hour)
	s[watch.KeyPreempted] = watch.Observation{Kind: watch.KindTerminate, At: later}
	d := decide(cfg, s, testNode(nil, old.Annotations()), later)
	if d.mark == nil || !d.mark.Deadline.Equal(later.Add(30*time.Second)) {
		t.Fatalf("got %+v, want a fresh deadline %s", d.mark, later.Add(30*time.Second))
	}
}

// A key that was never read (failing, or serving garbage) neither blocks a
// notice on another key nor clears a mark of its own.
func TestDecideActsOnEachKeyAsSoonAsItIsRead(t *testing.T) {
	cfg := DefaultConfig()
	preempted := signals{watch.KeyPreempted: {Key: watch.KeyPreempted, Kind: watch.KindTerminate, At: t0}}
	d := decide(cfg, preempted, testNode(nil, nil), t0)
	if d.mark == nil || d.mark.Reason != nodemark.ReasonPreempted {
		t.Fatalf("preempted with the other keys unread: got %+v, want a preemption mark", d)
	}

	marked := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: t0, Deadline: t0.Add(30 * time.Second), BootID: "boot-1"}
	onlyMaintenance := signals{watch.KeyMaintenanceEvent: {Key: watch.KeyMaintenanceEvent, Kind: watch.KindClear, At: t0}}
	if d := decide(cfg, onlyMaintenance, testNode(nil, marked.Annotations()), t0); !d.hold {
		t.Fatalf("preemption mark with instance/preempted unread: got %+v, want the node held as it is", d)
	}
	onlyPreempted := signals{watch.KeyPreempted: {Key: watch.KeyPreempted, Kind: watch.KindClear, At: t0}}
	if d := decide(cfg, onlyPreempted, testNode(nil, marked.Annotations()), t0); d.hold || d.mark != nil {
		t.Fatalf("preemption withdrawn, other keys unread: got %+v, want the mark removed", d)
	}
}

// A preemption that is already TRUE at the agent's first read may be most
// of 30 s old: the deadline is assumed close and the notice older.
func TestDecideAssumesLittleTimeLeftOnALateStart(t *testing.T) {
	cfg := DefaultConfig()
	s := clearSignals()
	s[watch.KeyPreempted] = watch.Observation{Kind: watch.KindTerminate, At: t0, First: true}
	d := decide(cfg, s, testNode(nil, nil), t0)
	if d.mark == nil || !d.lateStart {
		t.Fatalf("got %+v, want a late-start mark", d)
	}
	if want := t0.Add(cfg.LateStartBudget); !d.mark.Deadline.Equal(want) {
		t.Errorf("deadline %s, want %s (first read + late-start budget)", d.mark.Deadline, want)
	}
	if want := t0.Add(cfg.LateStartBudget - cfg.PreemptionNotice); !d.mark.NoticeTime.Equal(want) {
		t.Errorf("notice %s, want %s (as if the notice came that much earlier)", d.mark.NoticeTime, want)
	}
	// Once written, the compressed mark is kept, not recomputed.
	again := decide(cfg, s, testNode(nil, d.mark.Annotations()), t0.Add(3*time.Second))
	if again.mark == nil || !sameMark(*again.mark, *d.mark) || again.lateStart {
		t.Fatalf("after writing: got %+v, want the written mark %+v", again.mark, *d.mark)
	}
	// A notice that arrives while the agent runs keeps its full budget.
	s[watch.KeyPreempted] = watch.Observation{Kind: watch.KindTerminate, At: t0}
	if d := decide(cfg, s, testNode(nil, nil), t0); d.lateStart || !d.mark.Deadline.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("notice while running: got %+v, want the full 30s", d.mark)
	}
}

// A maintenance window moved by GCE moves the deadline and the drain start;
// while the node is only discouraged the wake-up follows the window too.
func TestDecideFollowsAMovedMaintenanceWindow(t *testing.T) {
	cfg := DefaultConfig()
	now := t0.Add(time.Minute)
	window := func(start time.Time) signals {
		s := clearSignals()
		s[watch.KeyUpcomingMaintenance] = watch.Observation{Kind: watch.KindScheduled, At: t0, Window: &watch.Window{Start: start}}
		return s
	}
	first := decide(cfg, window(t0.Add(2*time.Hour)), testNode(nil, nil), now)
	if first.mark == nil || first.mark.State != nodemark.StateAdvance || !first.wake.Equal(t0.Add(2*time.Hour-cfg.UpcomingLead)) {
		t.Fatalf("window in 2h: got %+v, want advance waking at start minus the lead", first)
	}
	node := testNode(nil, first.mark.Annotations())
	for name, tc := range map[string]struct {
		start     time.Time
		wantState nodemark.State
		wantWake  time.Time
	}{
		"moved later":                {start: t0.Add(3 * time.Hour), wantState: nodemark.StateAdvance, wantWake: t0.Add(3*time.Hour - cfg.UpcomingLead)},
		"moved earlier, still ahead": {start: t0.Add(time.Hour), wantState: nodemark.StateAdvance, wantWake: t0.Add(time.Hour - cfg.UpcomingLead)},
		"moved within the lead":      {start: t0.Add(10 * time.Minute), wantState: nodemark.StateTerminating},
	} {
		t.Run(name, func(t *testing.T) {
			d := decide(cfg, window(tc.start), node, now)
			if d.mark == nil || d.mark.State != tc.wantState || !d.mark.Deadline.Equal(tc.start) || !d.wake.Equal(tc.wantWake) {
				t.Fatalf("got %+v (wake %s), want %s with deadline %s waking at %s", d.mark, d.wake, tc.wantState, tc.start, tc.wantWake)
			}
		})
	}
	// Draining towards a window that then moves earlier: the deadline follows.
	draining := decide(cfg, window(t0.Add(10*time.Minute)), testNode(nil, nil), now)
	moved := decide(cfg, window(t0.Add(8*time.Minute)), testNode(nil, draining.mark.Annotations()), now.Add(time.Second))
	if !moved.mark.Deadline.Equal(t0.Add(8*time.Minute)) || !moved.mark.NoticeTime.Equal(draining.mark.NoticeTime) {
		t.Fatalf("window moved during the drain: got %+v, want deadline %s and the first notice kept", moved.mark, t0.Add(8*time.Minute))
	}
}

// The mark read back from the Node must equal the decision that wrote it,
// or the agent would restart the drain at every Node update.
func TestDecisionSurvivesTheRoundTripThroughTheNode(t *testing.T) {
	cfg := DefaultConfig()
	s := clearSignals()
	at := t0.Add(1234567891 * time.Nanosecond)
	s[watch.KeyPreempted] = watch.Observation{Kind: watch.KindTerminate, At: at}
	first := decide(cfg, s, testNode(nil, nil), at).mark
	again := decide(cfg, s, testNode(nil, first.Annotations()), at.Add(time.Second)).mark
	if !sameMark(*first, *again) {
		t.Fatalf("decided %+v, then %+v after writing it", *first, *again)
	}
}
