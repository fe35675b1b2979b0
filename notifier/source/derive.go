package source

import (
	"cmp"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
)

// nodeState is what the source knows of one node when it derives its
// notifications: the Node as cached (nil once deleted), the agent's events
// about it, and what the source itself saw earlier.
type nodeState struct {
	name string
	// exists is false once the Node is deleted (or was never seen).
	exists bool
	// annotations and labels of the Node, or the last labels seen of a
	// deleted one.
	annotations map[string]string
	labels      map[string]string
	// events are the agent's events about the node: its own and its pods'.
	events []*corev1.Event
	// removed is a mark the source saw on the node and then saw go, with
	// when; zero when none.
	removed   *nodemark.Mark
	removedAt time.Time
}

// derived is one notification with the mark it is about (for ordering).
type derived struct {
	notification.Notification
	mark nodemark.Mark
	// fromEvent is set when an agent event backs it; a withdrawal seen
	// only as a vanished mark waits for the event a little (withdrawalHold).
	fromEvent bool
}

// derive computes every notification the node's state holds, in order of
// occurrence: by notice, then by kind (a notice is marked before it is
// drained and drained before it is withdrawn), then by time. It is pure:
// the same state always gives the same notifications with the same ids, on
// any replica, before or after a restart.
func derive(s nodeState, base notification.Notification, window time.Duration, now time.Time) []derived {
	byID := map[string]derived{}
	add := func(d derived) {
		prev, ok := byID[d.ID]
		if !ok {
			byID[d.ID] = d
			return
		}
		// The event's account wins over the Node's: it has the message
		// and the cause.
		if d.fromEvent && !prev.fromEvent {
			byID[d.ID] = d
		}
	}
	mk := func(kind notification.Kind, m nodemark.Mark, at time.Time) derived {
		n := base
		n.ID = notification.ID(kind, s.name, m)
		n.Kind, n.Type = kind, notification.TypePrefix+string(kind)
		n.OccurredAt = at
		n.Node = notification.Node{Name: s.name, Labels: s.labels}
		n.Notice = notification.NoticeOf(m)
		return derived{Notification: n, mark: m}
	}
	current, marked, err := nodemark.Read(s.annotations)
	if marked && err == nil && s.exists {
		add(mk(notification.KindOfMark(current), current, current.NoticeTime))
	}
	if s.removed != nil {
		add(mk(notification.KindOfMark(*s.removed), *s.removed, s.removed.NoticeTime))
		add(mk(notification.KindNoticeWithdrawn, *s.removed, s.removedAt))
	}
	for _, ev := range s.events {
		at := eventTime(ev)
		if now.Sub(at) > window || ev.InvolvedObject.Kind != "Node" {
			continue
		}
		m, ok := markOfEvent(ev, s, current, marked && err == nil)
		if !ok {
			continue
		}
		switch ev.Reason {
		case nodemark.EventTerminationNotice, nodemark.EventMaintenanceScheduled, nodemark.EventMarkRefused:
			// A refused mark write still drains: the notice is as real.
			d := mk(notification.KindOfMark(m), m, m.NoticeTime)
			d.Message, d.fromEvent = ev.Message, true
			add(d)
		case nodemark.EventDrainCompleted, nodemark.EventDrainDeadlinePassed:
			kind := notification.KindDrainFinished
			if ev.Reason == nodemark.EventDrainDeadlinePassed {
				kind = notification.KindDeadlineMissed
			}
			drain := drainOf(ev, at, s.events, m)
			d := mk(kind, m, drain.FinishedAt)
			d.Drain, d.Message, d.fromEvent = &drain, ev.Message, true
			add(d)
			add(mk(notification.KindOfMark(m), m, m.NoticeTime))
		case nodemark.EventTerminationCancelled:
			w := notification.Withdrawal{Cause: ev.Annotations[nodemark.EventAnnotationUnmarkCause]}
			if seen, err := time.Parse(time.RFC3339Nano, ev.Annotations[nodemark.EventAnnotationWithdrawalSeen]); err == nil {
				w.SeenAt, at = seen, seen
			}
			d := mk(notification.KindNoticeWithdrawn, m, at)
			d.Withdrawal, d.Message, d.fromEvent = &w, ev.Message, true
			add(d)
			add(mk(notification.KindOfMark(m), m, m.NoticeTime))
		}
	}
	out := slices.Collect(maps.Values(byID))
	for i := range out {
		if out[i].Kind == notification.KindNoticeWithdrawn && out[i].Withdrawal == nil {
			out[i].Withdrawal = &notification.Withdrawal{}
		}
	}
	slices.SortFunc(out, func(a, b derived) int {
		return cmp.Or(a.mark.NoticeTime.Compare(b.mark.NoticeTime), cmp.Compare(a.Kind.Rank(), b.Kind.Rank()),
			a.OccurredAt.Compare(b.OccurredAt), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// markOfEvent is the mark an event is about: the one it carries (agents
// record it on every event about a mark), else, for events of older agents,
// the mark the node carries or last carried.
func markOfEvent(ev *corev1.Event, s nodeState, current nodemark.Mark, hasCurrent bool) (nodemark.Mark, bool) {
	if m, ok, err := nodemark.Read(ev.Annotations); ok && err == nil {
		return m, true
	}
	switch {
	case hasCurrent && ev.Reason != nodemark.EventTerminationCancelled:
		return current, true
	case s.removed != nil:
		return *s.removed, true
	}
	return nodemark.Mark{}, false
}

// drainOf reads a drain-end event's figures. Pods blocked by a disruption
// budget are counted from the agent's EvictionBlocked events on them during
// the drain, one per pod.
func drainOf(ev *corev1.Event, at time.Time, events []*corev1.Event, m nodemark.Mark) notification.Drain {
	d := notification.Drain{FinishedAt: at}
	if sum, err := nodemark.ParseDrainSummary(ev.Annotations[nodemark.EventAnnotationDrainSummary]); err == nil {
		d.FinishedAt = sum.EndedAt
		d.Duration = time.Duration(sum.DurationMillis) * time.Millisecond
		d.Evicted, d.Deleted, d.Gone, d.Remaining, d.Kept = sum.Evicted, sum.Deleted, sum.Gone, sum.Remaining, sum.Kept
	}
	d.DurationSeconds = d.Duration.Seconds()
	// Event timestamps keep whole seconds: widen the window by one.
	from, to := m.NoticeTime.Add(-time.Second), d.FinishedAt.Add(time.Second)
	pods := map[string]bool{}
	for _, e := range events {
		if e.Reason != nodemark.EventEvictionBlocked || e.InvolvedObject.Kind != "Pod" {
			continue
		}
		if t := eventTime(e); !t.Before(from) && !t.After(to) {
			pods[string(e.InvolvedObject.UID)+"/"+e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name] = true
		}
	}
	d.BlockedByPDB = len(pods)
	return d
}

// eventTime is when an event last happened: its micro-second EventTime when
// set, else its last (then first) timestamp, else its creation.
func eventTime(ev *corev1.Event) time.Time {
	switch {
	case !ev.EventTime.IsZero():
		return ev.EventTime.Time
	case !ev.LastTimestamp.IsZero():
		return ev.LastTimestamp.Time
	case !ev.FirstTimestamp.IsZero():
		return ev.FirstTimestamp.Time
	}
	return ev.CreationTimestamp.Time
}

// nodeOfEvent names the node an agent event is about: the Node itself, or
// for its pods' events the node of the agent that recorded them.
func nodeOfEvent(ev *corev1.Event) string {
	if ev.InvolvedObject.Kind == "Node" {
		return ev.InvolvedObject.Name
	}
	return ev.Source.Host
}
