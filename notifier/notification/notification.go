// Package notification is what termgate's notifier tells the outside world:
// the Notification struct (the one value a user's template sees, and the
// data of a CloudEvent), its kinds and its stable id. It depends on nodemark
// only.
package notification

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

	"termgate.dev/termgate/nodemark"
)

// Kind is what happened. Values are stable: users filter on them, and the
// CloudEvents type is TypePrefix + Kind.
type Kind string

const (
	// KindMaintenanceScheduled: a maintenance window is announced; the node
	// is discouraged but not drained yet.
	KindMaintenanceScheduled Kind = "node.maintenance-scheduled"
	// KindMarked: the node is marked terminating and drains.
	KindMarked Kind = "node.marked"
	// KindDrainFinished: every pod the policy evicts has left the node.
	KindDrainFinished Kind = "node.drain-finished"
	// KindDeadlineMissed: the deadline came with pods still on the node.
	KindDeadlineMissed Kind = "node.deadline-missed"
	// KindNoticeWithdrawn: the marks were removed, because the notice was
	// withdrawn or the VM came back.
	KindNoticeWithdrawn Kind = "node.notice-withdrawn"
)

// Kinds lists every kind in the order they occur for one notice.
var Kinds = []Kind{KindMaintenanceScheduled, KindMarked, KindDrainFinished, KindDeadlineMissed, KindNoticeWithdrawn}

// Rank orders the kinds of one notice: what happens first ranks lowest.
func (k Kind) Rank() int {
	for i, x := range Kinds {
		if x == k {
			return i
		}
	}
	return len(Kinds)
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k.Rank() < len(Kinds) }

// TypePrefix starts every CloudEvents type the notifier sends.
const TypePrefix = "dev.termgate."

// Notification is one thing termgate did to a node, as the notifier sends
// it. It is the only value a sink's template sees (as "."); the JSON names
// are the CloudEvents data. Fields that do not apply to a kind are zero, and
// omitted from JSON.
type Notification struct {
	// ID is stable: the same notice, kind and node always give the same ID,
	// whichever replica sends it and however often, so receivers
	// deduplicate by it (with Source).
	ID string `json:"id"`
	// Kind is what happened; Type is the CloudEvents type, TypePrefix+Kind.
	Kind Kind   `json:"kind"`
	Type string `json:"type"`
	// Cluster is the notifier's --cluster-name; Source the CloudEvents
	// source built from it.
	Cluster string `json:"cluster"`
	Source  string `json:"source"`
	// OccurredAt is when it happened, by the agent's clock where the agent
	// recorded it, else when the notifier saw it.
	OccurredAt time.Time `json:"occurredAt"`
	Node       Node      `json:"node"`
	// Notice is the mark the agent wrote for the notice.
	Notice Notice `json:"notice"`
	// Drain is set for KindDrainFinished and KindDeadlineMissed.
	Drain *Drain `json:"drain,omitempty"`
	// Withdrawal is set for KindNoticeWithdrawn.
	Withdrawal *Withdrawal `json:"withdrawal,omitempty"`
	// Message is the agent's event message, when one was seen.
	Message string `json:"message,omitempty"`
}

// Node is the node a notification is about.
type Node struct {
	Name string `json:"name"`
	// Labels as the notifier last saw them; empty for a node that was
	// already deleted when the notifier learned of the notice.
	Labels map[string]string `json:"labels,omitempty"`
}

// Notice is a node's termination mark.
type Notice struct {
	// State is "advance" (maintenance announced) or "terminating".
	State string `json:"state"`
	// Reason is the agent's: Preempted, HostMaintenance,
	// UpcomingMaintenance.
	Reason string `json:"reason"`
	// Source is what the agent read the notice from.
	Source string `json:"source"`
	// NoticeTime is when the agent saw the notice; Deadline is when the VM
	// is expected to stop.
	NoticeTime time.Time `json:"noticeTime"`
	Deadline   time.Time `json:"deadline"`
}

// Drain is how a drain ended.
type Drain struct {
	FinishedAt time.Time `json:"finishedAt"`
	// Duration prints as "12.3s" in a template; JSON has DurationSeconds.
	Duration        time.Duration `json:"-"`
	DurationSeconds float64       `json:"durationSeconds"`
	// Evicted, Deleted (at a cut-off, grace clamped to the deadline) and
	// Gone (already left) pods; BlockedByPDB pods had an eviction refused
	// by a PodDisruptionBudget at least once; Remaining pods were still on
	// the node at the end; Kept pods the policy leaves.
	Evicted      int `json:"evicted"`
	Deleted      int `json:"deleted"`
	Gone         int `json:"gone"`
	BlockedByPDB int `json:"blockedByPDB"`
	Remaining    int `json:"remaining"`
	Kept         int `json:"kept"`
}

// Withdrawal is why the marks were removed.
type Withdrawal struct {
	// Cause is NoticeWithdrawn or NewBootID, empty when unknown.
	Cause string `json:"cause,omitempty"`
	// SeenAt is when the agent read the value that withdrew the notice.
	SeenAt time.Time `json:"seenAt,omitzero"`
}

// ID is the stable id of kind for mark m on node. Everything that makes the
// notice distinct is in it: the node, the mark's state, reason, notice time
// and deadline (a moved window is a new notice).
func ID(kind Kind, node string, m nodemark.Mark) string {
	h := sha256.New()
	for _, part := range []string{"termgate/v1", string(kind), node, string(m.State), string(m.Reason),
		strconv.FormatInt(m.NoticeTime.UnixMilli(), 10), strconv.FormatInt(m.Deadline.UnixMilli(), 10)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// KindOfMark is the kind that a mark appearing announces.
func KindOfMark(m nodemark.Mark) Kind {
	if m.Terminating() {
		return KindMarked
	}
	return KindMaintenanceScheduled
}

// NoticeSource names what the agent reads for each reason.
func NoticeSource(r nodemark.Reason) string {
	switch r {
	case nodemark.ReasonPreempted:
		return "gce-metadata:instance/preempted"
	case nodemark.ReasonHostMaintenance:
		return "gce-metadata:instance/maintenance-event"
	case nodemark.ReasonUpcomingMaintenance:
		return "gce-metadata:instance/upcoming-maintenance"
	}
	return "unknown"
}

// NoticeOf renders a mark.
func NoticeOf(m nodemark.Mark) Notice {
	return Notice{State: string(m.State), Reason: string(m.Reason), Source: NoticeSource(m.Reason), NoticeTime: m.NoticeTime, Deadline: m.Deadline}
}
