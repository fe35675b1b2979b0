package agent

import (
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/nodemark"
)

// signals is the latest parsed value of every metadata key.
type signals map[watch.Key]watch.Observation

// known reports whether every key has been read at least once. Until then
// the agent changes nothing: a restarted agent must not unmark a node whose
// notice it simply has not re-read yet.
func (s signals) known() bool { return len(s) == len(watch.Keys) }

// decision is what the node should carry: a mark, or none.
type decision struct {
	mark *nodemark.Mark
	// wake is when the decision changes by itself (an upcoming window's
	// drain start); zero if never.
	wake time.Time
}

// decide computes the wanted mark from the signals, the node and the clock.
// It is pure: the same inputs give the same mark, so a restarted agent
// reaches the mark its predecessor wrote. A node already marked for the same
// reason, state and boot keeps its recorded notice time and deadline.
func decide(cfg Config, s signals, node *corev1.Node, now time.Time) decision {
	bootID := node.Status.NodeInfo.BootID
	var d decision
	switch p, m, u := s[watch.KeyPreempted], s[watch.KeyMaintenanceEvent], s[watch.KeyUpcomingMaintenance]; {
	case p.Kind == watch.KindTerminate:
		d.mark = &nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
			NoticeTime: p.At, Deadline: p.At.Add(cfg.PreemptionNotice)}
	case m.Kind == watch.KindTerminate:
		d.mark = &nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonHostMaintenance,
			NoticeTime: m.At, Deadline: m.At.Add(maintenanceBudget(cfg, node))}
	case u.Kind == watch.KindScheduled && u.Window != nil:
		d = upcoming(cfg, u, node, now)
	default:
		return decision{}
	}
	d.mark.BootID = bootID
	// The Node records milliseconds; deciding at the same precision makes
	// the mark read back from the Node equal to the one that was written,
	// so a running drain is recognised as the drain for it.
	d.mark.NoticeTime = d.mark.NoticeTime.Truncate(time.Millisecond)
	d.mark.Deadline = d.mark.Deadline.Truncate(time.Millisecond)
	if cur, ok, err := nodemark.Read(node.Annotations); ok && err == nil &&
		cur.Reason == d.mark.Reason && cur.State == d.mark.State && cur.BootID == bootID {
		d.mark.NoticeTime, d.mark.Deadline = cur.NoticeTime, cur.Deadline
	}
	return d
}

// upcoming: before start-minus-lead the node is only discouraged; after it,
// it drains with the window start as its deadline. A window already open
// (ONGOING, or a start in the past) gets the ordinary maintenance budget.
func upcoming(cfg Config, u watch.Observation, node *corev1.Node, now time.Time) decision {
	start := u.Window.Start
	if !start.After(now) {
		start = now.Add(maintenanceBudget(cfg, node))
	}
	drainAt := start.Add(-cfg.UpcomingLead)
	if now.Before(drainAt) {
		return decision{
			mark: &nodemark.Mark{State: nodemark.StateAdvance, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: u.At, Deadline: start},
			wake: drainAt,
		}
	}
	return decision{mark: &nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: now, Deadline: start}}
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
