package nodemark

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// NodeEventRef names a Node for termgate's events. The kubelet uses the
// node name as the UID of its own node events; doing the same lets
// `kubectl describe node` show termgate's events beside them.
func NodeEventRef(node string) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: node, UID: types.UID(node)}
}

// Event reasons termgate's agent records, on the Node unless said otherwise.
// They are part of the contract: users filter on them, and the demo's
// timeline reads them. Stable.
const (
	// EventTerminationNotice: the node is marked and draining.
	EventTerminationNotice = "TerminationNotice"
	// EventMaintenanceScheduled: a maintenance window is announced; the node
	// is only discouraged until its drain starts.
	EventMaintenanceScheduled = "MaintenanceScheduled"
	// EventLiveMigration: GCE live-migrates the VM; nothing is drained.
	EventLiveMigration = "LiveMigration"
	// EventTerminationCancelled: the marks were removed (notice withdrawn,
	// or the VM came back with a new boot ID).
	EventTerminationCancelled = "TerminationCancelled"
	// EventShutdownDuringDrain: the agent was signalled to stop while
	// draining and drains on within its grace period.
	EventShutdownDuringDrain = "ShutdownDuringDrain"
	// EventMaintenanceUnreadable: instance/upcoming-maintenance served a
	// value the agent cannot schedule by; it counts as no window.
	EventMaintenanceUnreadable = "MaintenanceValueUnreadable"
	// EventNoticeUnreadable: a notice source served a value the agent does
	// not understand (an unknown maintenance-event value, a malformed EC2
	// or Azure document). It is ignored; every other notice still counts.
	EventNoticeUnreadable = "NoticeValueUnreadable"
	// EventDisruptionAdvised: the cloud warns of a disruption that does not
	// end the VM (an EC2 rebalance recommendation, an Azure Freeze); new
	// pods are discouraged, nothing is drained unless the user opts in.
	EventDisruptionAdvised = "DisruptionAdvised"
	// EventNoticeAcknowledged: the agent told the cloud that the drain is
	// done and the event may start now (Azure StartRequests, opt-in).
	EventNoticeAcknowledged = "NoticeAcknowledged"
	// EventNoticeSourceUnknown: the agent cannot tell which cloud's
	// notices to follow (--cloud=auto and no known spec.providerID); it
	// stays not ready.
	EventNoticeSourceUnknown = "NoticeSourceUnknown"

	// EventDrainWaveStarted: a drain step first acted.
	EventDrainWaveStarted = "DrainWaveStarted"
	// EventDrainEscalated: pods still present at a cut-off were deleted with
	// a grace period clamped to the deadline.
	EventDrainEscalated = "DrainEscalated"
	// EventDrainCompleted: every pod the policy evicts has left the node.
	EventDrainCompleted = "DrainCompleted"
	// EventDrainDeadlinePassed: the deadline came with pods still present.
	EventDrainDeadlinePassed = "DrainDeadlinePassed"
	// EventLoadBalancersDrained: the node left the load balancers its pods
	// back (the time per Service is in the message); their backends go.
	EventLoadBalancersDrained = "LoadBalancersDrained"
	// EventLoadBalancerWaitCapped: the wait for load balancers reached its
	// cap; the message names the Services not confirmed.
	EventLoadBalancerWaitCapped = "LoadBalancerWaitCapped"
	// EventEvictionBlocked is recorded on a Pod the first time a
	// PodDisruptionBudget refuses its eviction.
	EventEvictionBlocked = "EvictionBlocked"
	// EventEvictionsThrottled is recorded on the Node, once per drain, when
	// the API server throttles the agent's evictions (429 without a
	// disruption budget's cause: API priority and fairness shedding load).
	EventEvictionsThrottled = "EvictionsThrottled"
	// EventDrainOrderOverridden is recorded on a Pod, once per drain, when
	// its owner's termgate.dev/drain-order annotation decides its wave
	// instead of the default policy.
	EventDrainOrderOverridden = "DrainOrderOverridden"
	// EventMarkRefused: the Node patch that marks the node failed (refused
	// by admission, or timed out); the drain runs from the mark computed in
	// memory while the write is retried.
	EventMarkRefused = "MarkRefused"
)

// EventAnnotationStepTime on a drain-step event (EventDrainWaveStarted,
// EventDrainEscalated) holds when the step began by the agent's clock
// (RFC 3339, nanoseconds): an event's own timestamps keep only seconds.
const EventAnnotationStepTime = "termgate.dev/step-time"

// EventAnnotationWithdrawalSeen on an EventTerminationCancelled event holds
// when the agent read the value that withdrew the notice (RFC 3339,
// nanoseconds). The agent sends no eviction or delete after that instant;
// the API server's audit log can check it.
const EventAnnotationWithdrawalSeen = "termgate.dev/withdrawal-seen"

// Events about one mark (EventTerminationNotice, EventMaintenanceScheduled,
// EventMarkRefused, EventDrainCompleted, EventDrainDeadlinePassed,
// EventTerminationCancelled)
// also carry that mark's own annotations (Mark.Annotations, read back with
// Read), so that a reader that did not see the Node at the time, such as
// the notifier after a restart, still tells which notice each belongs to.

// EventAnnotationUnmarkCause on an EventTerminationCancelled event says why
// the marks were removed: UnmarkNoticeWithdrawn or UnmarkNewBoot.
const EventAnnotationUnmarkCause = "termgate.dev/unmark-cause"

// Values of EventAnnotationUnmarkCause.
const (
	// UnmarkNoticeWithdrawn: the metadata server no longer announces it.
	UnmarkNoticeWithdrawn = "NoticeWithdrawn"
	// UnmarkNewBoot: the node came back with another boot ID, so the VM
	// was stopped and started again; the notice is spent.
	UnmarkNewBoot = "NewBootID"
)

// EventAnnotationDrainSummary on an EventDrainCompleted or
// EventDrainDeadlinePassed event holds the drain's figures as JSON
// (DrainSummary).
const EventAnnotationDrainSummary = "termgate.dev/drain-summary"
