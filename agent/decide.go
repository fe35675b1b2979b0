package agent

import (
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/nodemark"
)

// signals is the latest parsed value of each GCE metadata key read so far:
// what the GCE source turns into a Reading (watch.ReadingOf).
type signals map[watch.Key]watch.Observation

// decision is what the node should carry.
type decision struct {
	// mark is the wanted mark; nil means none.
	mark *nodemark.Mark
	// hold leaves the node as it is: it carries a mark whose notice may be
	// on a channel not read yet. A restarted agent must not unmark a node
	// whose notice it simply has not re-read.
	hold bool
	// lateStart is set when a termination notice was already present at
	// the agent's first read and its deadline was assumed short.
	lateStart bool
	// wake is when the decision changes by itself (an upcoming window's
	// drain start); zero if never.
	wake time.Time
}

// decide is decideReading over GCE's signals.
func decide(cfg Config, s signals, node *corev1.Node, now time.Time) decision {
	return decideReading(cfg, watch.ReadingOf(s), node, now)
}

// decideReading computes the wanted mark from a source's reading, the node
// and the clock. It is pure: the same inputs give the same mark, so a
// restarted agent reaches the mark its predecessor wrote.
//
// Each notice in force gives a candidate mark; a draining one wins over one
// that only discourages, then the earliest deadline wins (the VM goes at the
// first of them). A channel never read (failing, or serving garbage)
// neither blocks a notice on another channel nor clears a mark of its own.
// A node already marked for the same notice, state and boot keeps its
// recorded notice time and deadline, except that a deadline from a time the
// cloud may move (a maintenance window, a scheduled event) follows it.
func decideReading(cfg Config, r notice.Reading, node *corev1.Node, now time.Time) decision {
	bootID := node.Status.NodeInfo.BootID
	cur, marked, curErr := nodemark.Read(node.Annotations)
	var best *candidate
	var wake time.Time
	for _, n := range r.Notices {
		c, ok := candidateFor(cfg, r.Source, n, node, now)
		if !ok {
			continue
		}
		c.mark.BootID = bootID
		if marked && curErr == nil && sameNotice(cur, c.mark) {
			c.keepRecorded(cur)
		}
		if !c.wake.IsZero() && (wake.IsZero() || c.wake.Before(wake)) {
			wake = c.wake
		}
		if best == nil || c.beats(best) {
			best = &c
		}
	}
	if best == nil {
		if marked && (curErr != nil || r.MayHide(cur)) && !r.Complete() {
			return decision{hold: true}
		}
		return decision{}
	}
	if best.lateStart {
		compressLateStart(cfg, &best.mark)
	}
	return decision{mark: &best.mark, lateStart: best.lateStart, wake: wake}
}

// candidate is the mark one notice asks for.
type candidate struct {
	mark      nodemark.Mark
	lateStart bool
	wake      time.Time
	// follows: the deadline is the cloud's own time, which it may move.
	follows bool
	// started: the disruption has begun; the deadline never moves later.
	started bool
}

// beats orders candidates: draining first, then the earliest deadline.
func (c candidate) beats(o *candidate) bool {
	if c.mark.Terminating() != o.mark.Terminating() {
		return c.mark.Terminating()
	}
	return c.mark.Deadline.Before(o.mark.Deadline)
}

// keepRecorded keeps what the node already records for this notice.
func (c *candidate) keepRecorded(cur nodemark.Mark) {
	c.mark.NoticeTime, c.lateStart = cur.NoticeTime, false
	switch {
	case c.follows:
	case c.started && c.mark.Deadline.Before(cur.Deadline):
	default:
		c.mark.Deadline = cur.Deadline
	}
}

// candidateFor turns one notice into a mark. The deadline is the cloud's
// own time when it gives one, with the drain starting UpcomingLead before
// it and the node only discouraged until then; otherwise the reason's
// budget from first sight, shortened on a late start. A notice that only
// pauses the VM or advises discourages new pods unless the user opted in to
// draining on it. A live migration asks for nothing.
func candidateFor(cfg Config, source string, n notice.Notice, node *corev1.Node, now time.Time) (candidate, bool) {
	drains := n.Impact.Ends() ||
		(n.Impact == notice.ImpactPause && cfg.DrainOnPause) ||
		(n.Impact == notice.ImpactAdvisory && cfg.DrainOnAdvisory)
	if n.Impact == notice.ImpactLiveMigrate {
		return candidate{}, false
	}
	c := candidate{mark: nodemark.Mark{Reason: n.Reason, Source: source, NoticeID: nodemark.NoticeIDValue(n.ID), NoticeTime: n.FirstSeen}}
	c.timeMark(cfg, n, node, now, drains)
	// The Node records milliseconds; deciding at the same precision makes
	// the mark read back from the Node equal to the one that was written,
	// so a running drain is recognised as the drain for it.
	c.mark.NoticeTime = c.mark.NoticeTime.Truncate(time.Millisecond)
	c.mark.Deadline = c.mark.Deadline.Truncate(time.Millisecond)
	return c, true
}

// timeMark sets the candidate's state, deadline and wake-up.
func (c *candidate) timeMark(cfg Config, n notice.Notice, node *corev1.Node, now time.Time, drains bool) {
	start := n.NotBefore
	switch {
	case start.IsZero():
		c.mark.Deadline = n.FirstSeen.Add(budget(cfg, n.Reason, node))
		c.lateStart = n.AtFirstRead && n.Reason == nodemark.ReasonPreempted
		c.mark.State = nodemark.StateTerminating
		if !drains {
			c.mark.State = nodemark.StateAdvance
		}
		return
	case n.Started, !n.Reschedulable && !start.After(now):
		// Begun, or a fixed time that has come (a Spot interruption's):
		// no time to plan, the drain goes now, against that time.
		c.started = true
	case !start.After(now):
		// A window already open: the disruption may come at any moment
		// of it, so the reason's budget from now.
		start = now.Add(budget(cfg, n.Reason, node))
	default:
		c.follows = n.Reschedulable
	}
	c.mark.Deadline = start
	drainAt := start.Add(-cfg.UpcomingLead)
	if !drains || now.Before(drainAt) {
		c.mark.State = nodemark.StateAdvance
		if drains {
			c.wake = drainAt
		}
		return
	}
	c.mark.State = nodemark.StateTerminating
	if drainAt.After(n.FirstSeen) {
		// The drain starts at the window's lead, not at first sight.
		c.mark.NoticeTime = now
	}
	c.mark.NoticeTime = minTime(c.mark.NoticeTime, c.mark.Deadline)
}

// budget is how long the VM is assumed to have after a notice whose cloud
// gives no time.
func budget(cfg Config, r nodemark.Reason, node *corev1.Node) time.Duration {
	switch r {
	case nodemark.ReasonPreempted:
		return cfg.PreemptionNotice
	case nodemark.ReasonRebalanceRecommended:
		return cfg.AdvisoryBudget
	}
	return maintenanceBudget(cfg, node)
}

// sameNotice reports whether the node's mark was made for the notice c
// stands for. Marks written before termgate recorded the source and notice
// id match by reason alone.
func sameNotice(cur, want nodemark.Mark) bool {
	return cur.Reason == want.Reason && cur.State == want.State && cur.BootID == want.BootID &&
		(cur.Source == "" || cur.Source == want.Source) &&
		(cur.NoticeID == "" || cur.NoticeID == want.NoticeID)
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

func maintenanceBudget(cfg Config, node *corev1.Node) time.Duration {
	if _, ok := node.Labels[cfg.AcceleratorLabel]; ok {
		return cfg.AcceleratorMaintenanceBudget
	}
	return cfg.MaintenanceBudget
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// sameMark reports whether two marks would write the same annotations.
func sameMark(a, b nodemark.Mark) bool {
	return a.State == b.State && a.Reason == b.Reason && a.BootID == b.BootID &&
		a.Source == b.Source && a.NoticeID == b.NoticeID &&
		a.NoticeTime.Equal(b.NoticeTime) && a.Deadline.Equal(b.Deadline)
}
