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

func TestSignalsUnknownUntilEveryKeyIsRead(t *testing.T) {
	s := clearSignals()
	delete(s, watch.KeyUpcomingMaintenance)
	if s.known() {
		t.Fatal("known with a key never read")
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
