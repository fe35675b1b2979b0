// Package nodemark is the contract between termgate's agent and webhook: the
// annotation keys, taint, label and condition the agent writes on a Node that
// is about to be terminated, and how to read them back. Both sides import it;
// neither imports the other. It depends only on the Kubernetes API types.
package nodemark

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Keys termgate writes on a Node. Every key lives under termgate.dev except the
// well-known load-balancer exclusion label, which cloud controllers honour.
const (
	// TaintKey is the taint the agent puts on a terminating node.
	TaintKey = "termgate.dev/terminating"

	// AnnotationState is "advance" while only an upcoming maintenance window is
	// known (the node is still usable) and "terminating" once it is draining.
	AnnotationState = "termgate.dev/state"
	// AnnotationReason names why the node goes away (see Reason).
	AnnotationReason = "termgate.dev/reason"
	// AnnotationNoticeTime is when the agent saw the notice (RFC 3339, ms).
	AnnotationNoticeTime = "termgate.dev/notice-time"
	// AnnotationDeadline is when the VM is expected to stop (RFC 3339, ms).
	AnnotationDeadline = "termgate.dev/deadline"
	// AnnotationBootID is the node's boot ID when it was marked; a node that
	// comes back with another boot ID is a new machine and gets unmarked.
	AnnotationBootID = "termgate.dev/boot-id"
	// AnnotationSource names the notice source that made the mark (gce,
	// aws, azure) and AnnotationNoticeID the notice's id within it (a
	// metadata key, an EC2 EventId, an Azure EventId): a withdrawal removes
	// exactly the mark its notice made, and a restarted agent recognises
	// its predecessor's mark by them.
	AnnotationSource   = "termgate.dev/source"
	AnnotationNoticeID = "termgate.dev/notice-id"

	// TaintToBeDeleted is the cluster autoscaler's taint of a node it
	// deletes; kube-proxy's /healthz fails for it. The agent adds it only
	// with --lb-autoscaler-taint, recording AnnotationAutoscalerTaintAdded.
	TaintToBeDeleted = "ToBeDeletedByClusterAutoscaler"
	// AnnotationAutoscalerTaintAdded and AnnotationCordoned record that the
	// agent added TaintToBeDeleted or cordoned the node (--lb-cordon), so
	// that unmarking takes back only that.
	AnnotationAutoscalerTaintAdded = "termgate.dev/autoscaler-taint-added"
	AnnotationCordoned             = "termgate.dev/cordoned"

	// LabelExcludeFromLB removes the node from external load balancers.
	LabelExcludeFromLB = "node.kubernetes.io/exclude-from-external-load-balancers"

	// ConditionType is the Node condition the agent maintains.
	ConditionType corev1.NodeConditionType = "TerminationImminent"

	// FieldManager is the server-side apply / patch manager of the agent.
	FieldManager = "termgate-agent"
)

// State is the value of AnnotationState.
type State string

const (
	// StateAdvance: maintenance is scheduled; new pods are discouraged
	// (PreferNoSchedule) but not refused.
	StateAdvance State = "advance"
	// StateTerminating: the node is draining; binds onto it are refused.
	StateTerminating State = "terminating"
)

// Reason says what notice the agent acted on. Values are also event reasons
// and metric labels, so they are CamelCase and stable.
type Reason string

const (
	ReasonPreempted           Reason = "Preempted"
	ReasonHostMaintenance     Reason = "HostMaintenance"
	ReasonUpcomingMaintenance Reason = "UpcomingMaintenance"
	// ReasonTermination: the VM is being deleted on purpose (an Azure
	// scale-set Terminate notification).
	ReasonTermination Reason = "Termination"
	// ReasonRebalanceRecommended: the cloud warns that the VM is at an
	// elevated risk of interruption (an EC2 rebalance recommendation).
	ReasonRebalanceRecommended Reason = "RebalanceRecommended"
)

// Mark is what the agent records on a Node.
type Mark struct {
	State      State
	Reason     Reason
	NoticeTime time.Time
	Deadline   time.Time
	BootID     string
	// Source and NoticeID say which notice the mark stands for; empty on
	// marks written before termgate recorded them.
	Source   string
	NoticeID string
}

// timeLayout keeps milliseconds: a 30 s budget is tracked to the millisecond.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// Annotations renders the mark as Node annotations. Source and NoticeID are
// left out when empty.
func (m Mark) Annotations() map[string]string {
	a := map[string]string{
		AnnotationState:      string(m.State),
		AnnotationReason:     string(m.Reason),
		AnnotationNoticeTime: m.NoticeTime.UTC().Format(timeLayout),
		AnnotationDeadline:   m.Deadline.UTC().Format(timeLayout),
		AnnotationBootID:     m.BootID,
	}
	if m.Source != "" {
		a[AnnotationSource] = m.Source
	}
	if m.NoticeID != "" {
		a[AnnotationNoticeID] = m.NoticeID
	}
	return a
}

// MaxNoticeIDLength bounds AnnotationNoticeID's value; the Node policy
// bounds every annotation the agent writes to 63 characters.
const MaxNoticeIDLength = 63

// NoticeIDValue is the value AnnotationNoticeID records for a notice id:
// the id itself, or for an id longer than MaxNoticeIDLength its start and a
// digest of the whole, which stays stable and distinct.
func NoticeIDValue(id string) string {
	if len(id) <= MaxNoticeIDLength {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	digest := hex.EncodeToString(sum[:8])
	return id[:MaxNoticeIDLength-len(digest)-1] + "~" + digest
}

// AnnotationKeys lists every annotation a Mark writes.
var AnnotationKeys = []string{AnnotationState, AnnotationReason, AnnotationNoticeTime, AnnotationDeadline, AnnotationBootID,
	AnnotationSource, AnnotationNoticeID}

// OwnedAnnotationKeys lists every annotation termgate may leave on a Node,
// the mark's and AnnotationLBLabelAdded: what unmarking removes.
var OwnedAnnotationKeys = append(append([]string{}, AnnotationKeys...), AnnotationLBLabelAdded)

// Terminating reports whether the mark means the node is draining.
func (m Mark) Terminating() bool { return m.State == StateTerminating }

// Read parses the mark from a Node's annotations. ok is false when the node
// carries no mark; err is set when a mark is present but malformed.
func Read(annotations map[string]string) (m Mark, ok bool, err error) {
	state, ok := annotations[AnnotationState]
	if !ok {
		return Mark{}, false, nil
	}
	m = Mark{State: State(state), Reason: Reason(annotations[AnnotationReason]), BootID: annotations[AnnotationBootID],
		Source: annotations[AnnotationSource], NoticeID: annotations[AnnotationNoticeID]}
	if m.State != StateAdvance && m.State != StateTerminating {
		return m, true, fmt.Errorf("annotation %s: unknown state %q", AnnotationState, state)
	}
	if m.NoticeTime, err = parseTime(annotations, AnnotationNoticeTime); err != nil {
		return m, true, err
	}
	if m.Deadline, err = parseTime(annotations, AnnotationDeadline); err != nil {
		return m, true, err
	}
	return m, true, nil
}

func parseTime(annotations map[string]string, key string) (time.Time, error) {
	v, ok := annotations[key]
	if !ok {
		return time.Time{}, fmt.Errorf("annotation %s missing", key)
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("annotation %s: %w", key, err)
	}
	return t, nil
}

// ValidateEffect checks a configured taint effect.
func ValidateEffect(effect corev1.TaintEffect) error {
	switch effect {
	case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		return nil
	}
	return fmt.Errorf("taint effect %q: want NoSchedule, PreferNoSchedule or NoExecute", effect)
}

// Taint returns the termination taint with the given effect.
func Taint(effect corev1.TaintEffect) corev1.Taint {
	return corev1.Taint{Key: TaintKey, Effect: effect}
}

// AnnotationLBLabelAdded records that the agent added LabelExcludeFromLB, so
// that unmarking removes the label only if termgate put it there.
const AnnotationLBLabelAdded = "termgate.dev/lb-label-added"
