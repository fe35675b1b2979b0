package nodecache

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
)

// Tolerates reports whether pod may run on a terminating node: it tolerates
// the termination taint, so the agent keeps it (wave keep) or evicts it late
// (wave delayed). It reads tolerations only, through the same policy function
// the agent drains by; a drain-order annotation is a preference for the
// drain, not a toleration, so it does not count here.
func Tolerates(pod *corev1.Pod, effect corev1.TaintEffect) bool {
	switch nodemark.DefaultDrainOrder(pod, effect).Wave {
	case nodemark.WaveKeep, nodemark.WaveDelayed:
		return true
	}
	return false
}

// Refusal is the message a gate answers with when it keeps a pod off a
// terminating node: it names the node, why it goes away and when.
func (n Node) Refusal(node string, effect corev1.TaintEffect) string {
	deadline := "unknown"
	if !n.Mark.Deadline.IsZero() {
		deadline = n.Mark.Deadline.UTC().Format(time.RFC3339)
	}
	reason := string(n.Mark.Reason)
	if reason == "" {
		reason = "unknown reason"
	}
	return fmt.Sprintf("node %s is terminating (%s, deadline %s) and the pod does not tolerate taint %s:%s",
		node, reason, deadline, nodemark.TaintKey, effect)
}
