package nodemark

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Tolerates reports whether pod may run on a terminating node: it tolerates
// the termination taint, so the agent keeps it (wave keep) or evicts it late
// (wave delayed). It reads tolerations only, through the same policy function
// the agent drains by; a drain-order annotation is a preference for the
// drain, not a toleration, so it does not count here.
func Tolerates(pod *corev1.Pod, effect corev1.TaintEffect) bool {
	switch DefaultDrainOrder(pod, effect).Wave {
	case WaveKeep, WaveDelayed:
		return true
	}
	return false
}

// Refusal is the message the webhook answers with when it keeps a pod off a
// terminating node: it names the node, why it goes away and when.
func Refusal(node string, m Mark, effect corev1.TaintEffect) string {
	deadline := "unknown"
	if !m.Deadline.IsZero() {
		deadline = m.Deadline.UTC().Format(time.RFC3339)
	}
	reason := string(m.Reason)
	if reason == "" {
		reason = "unknown reason"
	}
	return fmt.Sprintf("node %s is terminating (%s, deadline %s) and the pod does not tolerate taint %s:%s",
		node, reason, deadline, TaintKey, effect)
}
