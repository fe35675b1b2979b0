package sink

import (
	"fmt"
	"strings"
	"time"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
)

// slackText is the message of the Slack preset, in Slack's mrkdwn.
func slackText(n notification.Notification) string {
	node := "*" + slackEscape(n.Node.Name) + "*"
	if n.Cluster != "" {
		node += " (cluster " + slackEscape(n.Cluster) + ")"
	}
	at := func(t time.Time) string { return t.UTC().Format("15:04:05 UTC") }
	switch n.Kind {
	case notification.KindMaintenanceScheduled:
		return fmt.Sprintf(":calendar: Node %s: maintenance window starts %s; termgate drains it before then.",
			node, n.Notice.Deadline.UTC().Format("2006-01-02 15:04 UTC"))
	case notification.KindMarked:
		return fmt.Sprintf(":warning: Node %s is going away (%s): marked terminating, draining before %s (%s notice).",
			node, reasonWords(n.Notice.Reason), at(n.Notice.Deadline), n.Notice.Deadline.Sub(n.Notice.NoticeTime).Round(time.Second))
	case notification.KindDrainFinished:
		d := drainOrZero(n)
		return fmt.Sprintf(":white_check_mark: Node %s drained in %s: %d evicted, %d deleted at a cut-off, %d blocked by a PodDisruptionBudget, %d left.",
			node, d.Duration.Round(100*time.Millisecond), d.Evicted, d.Deleted, d.BlockedByPDB, d.Remaining)
	case notification.KindDeadlineMissed:
		d := drainOrZero(n)
		return fmt.Sprintf(":rotating_light: Node %s: the deadline (%s) passed with %d pods still on the node (%d evicted, %d deleted, %d blocked by a PodDisruptionBudget).",
			node, at(n.Notice.Deadline), d.Remaining, d.Evicted, d.Deleted, d.BlockedByPDB)
	case notification.KindNoticeWithdrawn:
		why := "the notice was withdrawn"
		if n.Withdrawal != nil && n.Withdrawal.Cause == nodemark.UnmarkNewBoot {
			why = "the VM came back with a new boot"
		}
		return fmt.Sprintf(":information_source: Node %s: termination marks removed, %s.", node, why)
	}
	return fmt.Sprintf("Node %s: %s", node, n.Kind)
}

func drainOrZero(n notification.Notification) notification.Drain {
	if n.Drain == nil {
		return notification.Drain{}
	}
	return *n.Drain
}

func reasonWords(r string) string {
	switch nodemark.Reason(r) {
	case nodemark.ReasonPreempted:
		return "Spot/preemptible VM reclaimed"
	case nodemark.ReasonHostMaintenance:
		return "host maintenance"
	case nodemark.ReasonUpcomingMaintenance:
		return "scheduled maintenance"
	}
	return slackEscape(r)
}

// slackEscape escapes the three characters Slack's mrkdwn gives meaning.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
