package source

import (
	"fmt"
	"maps"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
)

var (
	t0      = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	preempt = nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: t0, Deadline: t0.Add(30 * time.Second), BootID: "boot-1"}
	advance = nodemark.Mark{State: nodemark.StateAdvance, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: t0.Add(-time.Hour), Deadline: t0.Add(2 * time.Hour), BootID: "boot-1"}
	base    = notification.Notification{Cluster: "test", Source: CloudEventsSource("test")}
)

// nodeEvent is an agent event about mark m on node n.
func nodeEvent(n, reason string, m *nodemark.Mark, at time.Time, extra map[string]string) *corev1.Event {
	ann := map[string]string{}
	if m != nil {
		ann = m.Annotations()
	}
	maps.Copy(ann, extra)
	return &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("%s.%d", n, at.UnixNano()), Namespace: "default", Annotations: ann},
		InvolvedObject: *nodemark.NodeEventRef(n), Reason: reason, Message: reason + " message",
		Source: corev1.EventSource{Component: "termgate-agent", Host: n}, LastTimestamp: metav1.NewTime(at),
	}
}

func blockedEvent(n, pod string, at time.Time) *corev1.Event {
	return &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: pod + ".x", Namespace: "shop"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod, UID: types.UID("uid-" + pod)},
		Reason:         nodemark.EventEvictionBlocked, Source: corev1.EventSource{Component: "termgate-agent", Host: n},
		LastTimestamp: metav1.NewTime(at),
	}
}

func kinds(ds []derived) []notification.Kind {
	var out []notification.Kind
	for _, d := range ds {
		out = append(out, d.Kind)
	}
	return out
}

func TestDeriveMarkedFromTheMarkOnTheNode(t *testing.T) {
	s := nodeState{name: "n1", exists: true, annotations: preempt.Annotations(), labels: map[string]string{"pool": "spot"}}
	got := derive(s, base, time.Hour, t0.Add(time.Second))
	if len(got) != 1 || got[0].Kind != notification.KindMarked {
		t.Fatalf("derived %v, want one node.marked", kinds(got))
	}
	n := got[0]
	if n.ID != notification.ID(notification.KindMarked, "n1", preempt) || n.Type != "dev.termgate.node.marked" || n.Node.Labels["pool"] != "spot" ||
		n.Notice.Reason != "Preempted" || !n.Notice.Deadline.Equal(preempt.Deadline) || n.Notice.Source != "gce-metadata:instance/preempted" || !n.OccurredAt.Equal(t0) {
		t.Errorf("derived %+v", n.Notification)
	}
	if again := derive(s, base, time.Hour, t0.Add(time.Minute)); again[0].ID != n.ID {
		t.Errorf("the same mark derived id %s, then %s", n.ID, again[0].ID)
	}
}

func TestDrainFinishedComesFromTheAgentsEventWithItsFigures(t *testing.T) {
	end := t0.Add(12 * time.Second)
	sum := nodemark.DrainSummary{EndedAt: end, DurationMillis: 11900, Evicted: 7, Deleted: 1, Kept: 2}
	s := nodeState{name: "n1", exists: false, events: []*corev1.Event{
		blockedEvent("n1", "web-1", t0.Add(2*time.Second)),
		blockedEvent("n1", "web-1", t0.Add(3*time.Second)), // the same pod counts once
		blockedEvent("n1", "web-2", t0.Add(4*time.Second)),
		blockedEvent("n1", "old", t0.Add(-time.Hour)), // another drain's
		nodeEvent("n1", nodemark.EventDrainCompleted, &preempt, end, map[string]string{nodemark.EventAnnotationDrainSummary: sum.Encode()}),
	}}
	got := derive(s, base, time.Hour, end.Add(time.Second))
	if want := []notification.Kind{notification.KindMarked, notification.KindDrainFinished}; fmt.Sprint(kinds(got)) != fmt.Sprint(want) {
		t.Fatalf("derived %v, want %v: the mark is implied by the drain even when the Node is gone", kinds(got), want)
	}
	d := got[1].Drain
	if d == nil || d.Evicted != 7 || d.Deleted != 1 || d.Kept != 2 || d.BlockedByPDB != 2 || d.Duration != 11900*time.Millisecond || !d.FinishedAt.Equal(end) {
		t.Errorf("drain %+v", d)
	}
	if got[1].Message != "DrainCompleted message" {
		t.Errorf("message %q, want the event's", got[1].Message)
	}
}

func TestWithdrawalFromTheEventCarriesItsCause(t *testing.T) {
	seen := t0.Add(5 * time.Second)
	s := nodeState{name: "n1", exists: true, events: []*corev1.Event{
		nodeEvent("n1", nodemark.EventTerminationCancelled, &preempt, seen.Add(time.Second), map[string]string{
			nodemark.EventAnnotationUnmarkCause: nodemark.UnmarkNewBoot, nodemark.EventAnnotationWithdrawalSeen: seen.Format(time.RFC3339Nano),
		}),
	}}
	got := derive(s, base, time.Hour, seen.Add(2*time.Second))
	if want := []notification.Kind{notification.KindMarked, notification.KindNoticeWithdrawn}; fmt.Sprint(kinds(got)) != fmt.Sprint(want) {
		t.Fatalf("derived %v, want %v", kinds(got), want)
	}
	w := got[1]
	if w.Withdrawal == nil || w.Withdrawal.Cause != nodemark.UnmarkNewBoot || !w.OccurredAt.Equal(seen) {
		t.Errorf("withdrawal %+v at %s", w.Withdrawal, w.OccurredAt)
	}
}

func TestARemovedMarkAndItsEventAreOneWithdrawal(t *testing.T) {
	removedAt := t0.Add(6 * time.Second)
	s := nodeState{name: "n1", exists: true, removed: &preempt, removedAt: removedAt}
	fromNode := derive(s, base, time.Hour, removedAt)
	s.events = []*corev1.Event{nodeEvent("n1", nodemark.EventTerminationCancelled, &preempt, removedAt, map[string]string{nodemark.EventAnnotationUnmarkCause: nodemark.UnmarkNoticeWithdrawn})}
	fromEvent := derive(s, base, time.Hour, removedAt)
	if len(fromNode) != 2 || len(fromEvent) != 2 || fromNode[1].ID != fromEvent[1].ID {
		t.Fatalf("from the Node %v, from the event %v: want the same two notifications", kinds(fromNode), kinds(fromEvent))
	}
	if fromNode[1].fromEvent || !fromEvent[1].fromEvent || fromEvent[1].Withdrawal.Cause != nodemark.UnmarkNoticeWithdrawn {
		t.Errorf("the event's account should win: %+v", fromEvent[1].Withdrawal)
	}
}

func TestNotificationsComeInOrderOfOccurrence(t *testing.T) {
	// An announced window, then its drain, then the VM came back; then a
	// new preemption: every event at once, as after a restart.
	drainMark := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: t0.Add(-30 * time.Minute), Deadline: advance.Deadline, BootID: "boot-1"}
	s := nodeState{name: "n1", exists: true, annotations: preempt.Annotations(), events: []*corev1.Event{
		nodeEvent("n1", nodemark.EventTerminationCancelled, &drainMark, t0.Add(-10*time.Minute), nil),
		nodeEvent("n1", nodemark.EventDrainCompleted, &drainMark, t0.Add(-20*time.Minute), nil),
		nodeEvent("n1", nodemark.EventMaintenanceScheduled, &advance, advance.NoticeTime, nil),
		nodeEvent("n1", nodemark.EventTerminationNotice, &drainMark, drainMark.NoticeTime, nil),
	}}
	got := derive(s, base, 2*time.Hour, t0.Add(time.Second))
	want := []notification.Kind{notification.KindMaintenanceScheduled, notification.KindMarked, notification.KindDrainFinished, notification.KindNoticeWithdrawn, notification.KindMarked}
	if fmt.Sprint(kinds(got)) != fmt.Sprint(want) {
		t.Fatalf("derived %v, want %v", kinds(got), want)
	}
	if got[4].Notice.Reason != "Preempted" || got[1].Notice.Reason != "UpcomingMaintenance" {
		t.Errorf("notices out of order: %+v / %+v", got[1].Notice, got[4].Notice)
	}
}

func TestOldEventsAreIgnoredButAMarkCountsWhateverItsAge(t *testing.T) {
	old := nodemark.Mark{State: nodemark.StateAdvance, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: t0.Add(-72 * time.Hour), Deadline: t0.Add(24 * time.Hour)}
	s := nodeState{name: "n1", exists: true, annotations: old.Annotations(), events: []*corev1.Event{
		nodeEvent("n2", nodemark.EventDrainCompleted, &preempt, t0.Add(-3*time.Hour), nil),
	}}
	got := derive(s, base, 2*time.Hour, t0)
	if len(got) != 1 || got[0].Kind != notification.KindMaintenanceScheduled {
		t.Errorf("derived %v, want only the three-day-old mark still on the node", kinds(got))
	}
}

func TestEventsOfAnOlderAgentAttachToTheNodesMark(t *testing.T) {
	s := nodeState{name: "n1", exists: true, annotations: preempt.Annotations(), events: []*corev1.Event{
		nodeEvent("n1", nodemark.EventDrainDeadlinePassed, nil, t0.Add(30*time.Second), nil),
	}}
	got := derive(s, base, time.Hour, t0.Add(31*time.Second))
	if len(got) != 2 || got[1].Kind != notification.KindDeadlineMissed || got[1].ID != notification.ID(notification.KindDeadlineMissed, "n1", preempt) {
		t.Errorf("derived %v, want the missed deadline of the node's mark", kinds(got))
	}
	s.annotations = nil
	if got := derive(s, base, time.Hour, t0.Add(31*time.Second)); len(got) != 0 {
		t.Errorf("derived %v from an event that names no mark on an unmarked node", kinds(got))
	}
}

func TestARefusedMarkWriteStillAnnouncesTheNotice(t *testing.T) {
	// Admission refused the agent's Node patch: the drain runs from the
	// mark in memory, and the agent's event carries it.
	s := nodeState{name: "n1", exists: true, events: []*corev1.Event{nodeEvent("n1", nodemark.EventMarkRefused, &preempt, t0.Add(time.Second), nil)}}
	got := derive(s, base, time.Hour, t0.Add(2*time.Second))
	if len(got) != 1 || got[0].Kind != notification.KindMarked || got[0].ID != notification.ID(notification.KindMarked, "n1", preempt) {
		t.Errorf("derived %v, want node.marked for the mark in memory", kinds(got))
	}
}
