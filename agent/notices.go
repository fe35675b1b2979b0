package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
)

// startSource resolves the notice source from the Node once and starts it.
// Until it resolves, the agent is not ready and says why, once as an event.
func (a *Agent) startSource(ctx context.Context, wg *sync.WaitGroup, out chan<- notice.Reading) {
	a.mu.Lock()
	started, hadErr := a.source != nil, a.sourceErr != nil
	a.mu.Unlock()
	node := a.currentNode()
	if started || node == nil {
		return
	}
	src, err := a.sources(node)
	a.mu.Lock()
	a.source, a.sourceErr = src, err
	a.mu.Unlock()
	logger := log.FromContext(ctx)
	if err != nil {
		if !hadErr {
			logger.Error(err, "cannot tell which notices to follow; not ready until the Node tells or --cloud is set")
			a.event(corev1.EventTypeWarning, nodemark.EventNoticeSourceUnknown, "%v", err)
		}
		return
	}
	logger.Info("following notices", "source", src.Name())
	wg.Go(func() { src.Run(ctx, out) })
}

// alive is the liveness of the notice source; an agent still waiting to
// learn its cloud is alive (restarting would not teach it).
func (a *Agent) alive() error {
	a.mu.Lock()
	src := a.source
	a.mu.Unlock()
	if src == nil {
		return nil
	}
	return src.Alive()
}

// observe records a source's reading and reports what changed that no mark
// shows: live migrations and values the source could not read.
func (a *Agent) observe(ctx context.Context, r notice.Reading) {
	prev := a.reading
	a.reading = r
	if notice.Same(prev, r) {
		return
	}
	logger := log.FromContext(ctx)
	logger.Info("notices changed", "source", r.Source, "notices", summary(r.Notices), "unread", r.Unread, "unreadable", len(r.Unreadable))
	for _, n := range r.Notices {
		if old, ok := prev.Find(n.ID); n.Impact == notice.ImpactLiveMigrate && (!ok || old.Impact != n.Impact || old.Raw != n.Raw) {
			a.event(corev1.EventTypeNormal, nodemark.EventLiveMigration, "%s is live-migrating this VM (%s); nothing to drain", cloudName(r.Source), n.Raw)
		}
	}
	a.reportUnreadable(ctx, r.Unreadable)
}

// reportUnreadable raises one event per value not understood, for as long
// as it stays; a value that goes and comes back is reported again.
func (a *Agent) reportUnreadable(ctx context.Context, us []notice.Unreadable) {
	now := map[notice.Unreadable]bool{}
	for _, u := range us {
		now[u] = true
		if a.reported[u] {
			continue
		}
		switch {
		case u.AsClear:
			a.event(corev1.EventTypeWarning, nodemark.EventMaintenanceUnreadable,
				"%s could not be read (%s); treating it as no maintenance window", u.Channel, u.Err)
		case u.Alarming:
			a.event(corev1.EventTypeWarning, nodemark.EventNoticeUnreadable,
				"%s served %q, which reads like a termination termgate does not know; it is ignored and the other notices still count: check the VM (%s)", u.Channel, u.Value, u.Err)
		default:
			a.event(corev1.EventTypeWarning, nodemark.EventNoticeUnreadable,
				"%s served a value termgate cannot read (%s); it is ignored and the other notices still count", u.Channel, u.Err)
		}
		log.FromContext(ctx).Info("WARNING: notice value not understood", "channel", u.Channel, "value", u.Value, "error", u.Err, "alarming", u.Alarming)
	}
	a.reported = now
}

// advanceEvent describes an advance mark: a window the drain will start
// before, or a disruption that only discourages new pods.
func (a *Agent) advanceEvent(m nodemark.Mark) (reason, message string) {
	n, ok := noticeOf(a.reading, m)
	drains := !ok || n.Impact.Ends() ||
		(n.Impact == notice.ImpactPause && a.cfg.DrainOnPause) || (n.Impact == notice.ImpactAdvisory && a.cfg.DrainOnAdvisory)
	if drains {
		return nodemark.EventMaintenanceScheduled, fmt.Sprintf("maintenance window starts %s; drain starts %s before it",
			m.Deadline.UTC().Format(time.RFC3339), a.cfg.UpcomingLead)
	}
	optIn := "--drain-on-advisory"
	if n.Impact == notice.ImpactPause {
		optIn = "--drain-on-pause"
	}
	return nodemark.EventDisruptionAdvised, fmt.Sprintf("%s: %s announces a %s (%s); new pods are discouraged, nothing is drained (set %s to drain)",
		m.Reason, cloudName(m.Source), n.Impact, n.Raw, optIn)
}

// acknowledge tells the cloud that the drain for m is done, when the source
// can and the user asked for it (the source decides both).
func (a *Agent) acknowledge(ctx context.Context, m nodemark.Mark) {
	a.mu.Lock()
	ack, ok := a.source.(notice.Acknowledger)
	a.mu.Unlock()
	if !ok || m.NoticeID == "" || a.cfg.DryRun {
		return
	}
	n, inForce := noticeOf(a.reading, m)
	if !inForce {
		return
	}
	done, err := ack.Acknowledge(ctx, n.ID)
	if err != nil {
		log.FromContext(ctx).Error(err, "notice not acknowledged; the cloud starts it at its own time", "notice", m.NoticeID)
		a.event(corev1.EventTypeWarning, nodemark.EventNoticeAcknowledged, "drain done, but telling %s failed: %v", cloudName(m.Source), err)
		return
	}
	if !done {
		return
	}
	a.event(corev1.EventTypeNormal, nodemark.EventNoticeAcknowledged, "drain done: told %s that event %s may start now", cloudName(m.Source), m.NoticeID)
}

// noticeOf finds the notice in force that made mark m.
func noticeOf(r notice.Reading, m nodemark.Mark) (notice.Notice, bool) {
	for _, n := range r.Notices {
		if m.NoticeID != "" && nodemark.NoticeIDValue(n.ID) == m.NoticeID {
			return n, true
		}
	}
	return notice.Notice{}, false
}

// cloudName is how events name a source.
func cloudName(source string) string {
	switch source {
	case "gce":
		return "GCE"
	case "aws":
		return "EC2"
	case "azure":
		return "Azure"
	}
	return source
}

func summary(ns []notice.Notice) []string {
	out := make([]string, 0, len(ns))
	for _, n := range ns {
		out = append(out, fmt.Sprintf("%s %s/%s %s", n.ID, n.Reason, n.Impact, notice.Truncate(n.Raw)))
	}
	return out
}
