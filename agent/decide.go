package agent

import (
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/nodemark"
)

// signals is the latest parsed value of each metadata key read so far.
type signals map[watch.Key]watch.Observation

// read reports whether key has been read at least once.
func (s signals) read(key watch.Key) bool {
	_, ok := s[key]
	return ok
}

// latest is when the newest value was read: for an unmark, when the agent
// saw the withdrawal, and so stopped sending evictions.
func (s signals) latest() time.Time {
	var t time.Time
	for _, o := range s {
		if o.At.After(t) {
			t = o.At
		}
	}
	return t
}

// keyOf is the metadata key whose notice a mark's reason stands for.
func keyOf(r nodemark.Reason) watch.Key {
	switch r {
	case nodemark.ReasonPreempted:
		return watch.KeyPreempted
	case nodemark.ReasonHostMaintenance:
		return watch.KeyMaintenanceEvent
	default:
		return watch.KeyUpcomingMaintenance
	}
}

// decision is what the node should carry.
type decision struct {
	// mark is the wanted mark; nil means none.
	mark *nodemark.Mark
	// hold leaves the node as it is: it carries a mark whose key has not
	// been read yet. A restarted agent must not unmark a node whose notice
	// it simply has not re-read.
	hold bool
	// lateStart is set when a termination notice was already present at
	// the agent's first read and its deadline was assumed short.
	lateStart bool
	// wake is when the decision changes by itself (an upcoming window's
	// drain start); zero if never.
	wake time.Time
}

// decide computes the wanted mark from the signals, the node and the clock.
// It is pure: the same inputs give the same mark, so a restarted agent
// reaches the mark its predecessor wrote. Each key counts as soon as it is
// read: a key that was never read (failing, or serving garbage) neither
// blocks a notice on another key nor clears a mark of its own. A node
// already marked for the same reason, state and boot keeps its recorded
// notice time and deadline, except that a moved maintenance window moves the
// deadline with it.
func decide(cfg Config, s signals, node *corev1.Node, now time.Time) decision {
	bootID := node.Status.NodeInfo.BootID
	cur, marked, curErr := nodemark.Read(node.Annotations)
	var d decision
	fromWindow := false
	switch p, m, u := s[watch.KeyPreempted], s[watch.KeyMaintenanceEvent], s[watch.KeyUpcomingMaintenance]; {
	case p.Kind == watch.KindTerminate:
		d.mark = &nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
			NoticeTime: p.At, Deadline: p.At.Add(cfg.PreemptionNotice)}
		d.lateStart = p.First
	case m.Kind == watch.KindTerminate:
		d.mark = &nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonHostMaintenance,
			NoticeTime: m.At, Deadline: m.At.Add(maintenanceBudget(cfg, node))}
	case u.Kind == watch.KindScheduled && u.Window != nil:
		d, fromWindow = upcoming(cfg, u, node, now)
	default:
		keyUnread := marked && (curErr != nil || !s.read(keyOf(cur.Reason)))
		if keyUnread && len(s) < len(watch.Keys) {
			return decision{hold: true}
		}
		return decision{}
	}
	d.mark.BootID = bootID
	// The Node records milliseconds; deciding at the same precision makes
	// the mark read back from the Node equal to the one that was written,
	// so a running drain is recognised as the drain for it.
	d.mark.NoticeTime = d.mark.NoticeTime.Truncate(time.Millisecond)
	d.mark.Deadline = d.mark.Deadline.Truncate(time.Millisecond)
	if marked && curErr == nil && cur.Reason == d.mark.Reason && cur.State == d.mark.State && cur.BootID == bootID {
		d.mark.NoticeTime, d.lateStart = cur.NoticeTime, false
		if !fromWindow {
			d.mark.Deadline = cur.Deadline
		}
		return d
	}
	if d.lateStart {
		compressLateStart(cfg, d.mark)
	}
	return d
}

// compressLateStart handles a preemption notice that was already TRUE when
// the agent first read it (a crash loop, a rollout, an OOM kill). The notice
// may be almost 30 s old, so the VM may have seconds left: the agent assumes
// it has only LateStartBudget and records the notice as that much older, so
// that the cut-offs (and the escalated deletes) come early enough.
func compressLateStart(cfg Config, m *nodemark.Mark) {
	budget := min(cfg.LateStartBudget, cfg.PreemptionNotice)
	m.Deadline = m.NoticeTime.Add(budget)
	m.NoticeTime = m.Deadline.Add(-cfg.PreemptionNotice)
}

// upcoming: before start-minus-lead the node is only discouraged; after it,
// it drains with the window start as its deadline. A window already open
// (ONGOING, or a start in the past) gets the ordinary maintenance budget.
// fromWindow reports whether the deadline is the window's own start, which
// the metadata server may move.
func upcoming(cfg Config, u watch.Observation, node *corev1.Node, now time.Time) (d decision, fromWindow bool) {
	start, fromWindow := u.Window.Start, true
	if !start.After(now) {
		start, fromWindow = now.Add(maintenanceBudget(cfg, node)), false
	}
	drainAt := start.Add(-cfg.UpcomingLead)
	if now.Before(drainAt) {
		return decision{
			mark: &nodemark.Mark{State: nodemark.StateAdvance, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: u.At, Deadline: start},
			wake: drainAt,
		}, fromWindow
	}
	return decision{mark: &nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: now, Deadline: start}}, fromWindow
}

func maintenanceBudget(cfg Config, node *corev1.Node) time.Duration {
	if _, ok := node.Labels[cfg.AcceleratorLabel]; ok {
		return cfg.AcceleratorMaintenanceBudget
	}
	return cfg.MaintenanceBudget
}

// sameMark reports whether two marks would write the same annotations.
func sameMark(a, b nodemark.Mark) bool {
	return a.State == b.State && a.Reason == b.Reason && a.BootID == b.BootID &&
		a.NoticeTime.Equal(b.NoticeTime) && a.Deadline.Equal(b.Deadline)
}
