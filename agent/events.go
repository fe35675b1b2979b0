package agent

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Event reasons the agent records on its Node. Stable: users filter on them.
const (
	ReasonTerminationNotice    = "TerminationNotice"
	ReasonMaintenanceScheduled = "MaintenanceScheduled"
	ReasonLiveMigration        = "LiveMigration"
	ReasonRestored             = "TerminationCancelled"
)

func (a *Agent) event(kind, reason, format string, args ...any) {
	if a.events == nil {
		return
	}
	// The kubelet uses the node name as the UID of its node events; doing
	// the same lets `kubectl describe node` show ours beside them.
	ref := &corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, UID: types.UID(a.cfg.NodeName)}
	a.events.Eventf(ref, kind, reason, format, args...)
}
