package drain

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Event reasons the drain records. They are stable: users filter on them.
const (
	// ReasonDrainWaveStarted is recorded on the Node when a step first acts.
	ReasonDrainWaveStarted = "DrainWaveStarted"
	// ReasonDrainEscalated is recorded on the Node when pods still present at
	// a cut-off are deleted with a grace period clamped to the deadline.
	ReasonDrainEscalated = "DrainEscalated"
	// ReasonDrainCompleted: every pod the policy evicts has left the node.
	ReasonDrainCompleted = "DrainCompleted"
	// ReasonDrainDeadlinePassed: the deadline came with pods still present.
	ReasonDrainDeadlinePassed = "DrainDeadlinePassed"
	// ReasonEvictionBlocked is recorded on a Pod the first time a
	// PodDisruptionBudget refuses its eviction.
	ReasonEvictionBlocked = "EvictionBlocked"
)

// nodeRef names the Node for events. The kubelet uses the node name as the
// UID in its own node events, which lets them aggregate with ours.
func nodeRef(name string) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: name, UID: types.UID(name)}
}
