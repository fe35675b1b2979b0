package drain

import (
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
)

// schedule holds the instants of one drain, all derived from the node's mark
// so that a restarted agent computes the same ones.
type schedule struct {
	notice   time.Time
	deadline time.Time
	// regularCutoff ends the regular wave: regular and delayed pods still
	// present are deleted, and the system wave starts at the latest.
	regularCutoff time.Time
	// systemCutoff ends the system wave: system pods still present are deleted.
	systemCutoff time.Time
}

func newSchedule(mark nodemark.Mark, cfg Config) schedule {
	return schedule{
		notice:        mark.NoticeTime,
		deadline:      mark.Deadline,
		regularCutoff: mark.Deadline.Add(-cfg.SystemGrace),
		systemCutoff:  mark.Deadline.Add(-cfg.SystemEscalateBefore),
	}
}

// within returns the schedule of a drain whose process stops at exitAt:
// each cut-off comes no later than exitAt minus its margin before the
// deadline, so a short remaining grace moves the system wave and the
// escalations to now. The deadline itself, which clamps grace periods, is
// the VM's and does not move. A zero exitAt changes nothing.
func (s schedule) within(exitAt time.Time, cfg Config) schedule {
	if exitAt.IsZero() || !exitAt.Before(s.deadline) {
		return s
	}
	s.regularCutoff = earliest(s.regularCutoff, exitAt.Add(-cfg.SystemGrace))
	s.systemCutoff = earliest(s.systemCutoff, exitAt.Add(-cfg.SystemEscalateBefore))
	return s
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// due returns when a delayed pod becomes evictable: its toleration after the
// notice, but no later than the regular cut-off, so that even a long
// toleration leaves the pod time to stop before the machine does.
func (s schedule) due(after time.Duration) time.Time {
	t := s.notice.Add(after)
	if t.After(s.regularCutoff) {
		return s.regularCutoff
	}
	return t
}

// delayedPod is a pod whose eviction waits for its toleration to run out.
type delayedPod struct {
	pod *corev1.Pod
	due time.Time
}

// pass is what one turn of the drain loop sees: the node's pods sorted into
// waves at one instant. Pods already being deleted stay in their wave: the
// wave is not gone until they are.
type pass struct {
	now     time.Time
	regular []*corev1.Pod
	delayed []delayedPod
	system  []*corev1.Pod
	kept    int
	skipped int
	// lb is what the wait for load balancers decided in this pass; nil
	// when the drain does not wait for them.
	lb *lbHold
}

// classify sorts pods by the shared drain-order policy. Mirror pods and
// finished pods are skipped: the kubelet owns the former and the latter no
// longer run.
func classify(pods []*corev1.Pod, now time.Time, s schedule, effect corev1.TaintEffect) *pass {
	p := &pass{now: now}
	for _, pod := range pods {
		if nodemark.IsMirrorPod(pod) || nodemark.IsFinished(pod) {
			p.skipped++
			continue
		}
		order := nodemark.DrainOrderFor(pod, effect)
		switch order.Wave {
		case nodemark.WaveKeep:
			p.kept++
		case nodemark.WaveDelayed:
			p.delayed = append(p.delayed, delayedPod{pod: pod, due: s.due(order.After)})
		case nodemark.WaveSystem:
			p.system = append(p.system, pod)
		default:
			p.regular = append(p.regular, pod)
		}
	}
	return p
}

// evictable returns the pods the drain will still evict: every wave's pods
// not already being deleted.
func (p *pass) evictable() []*corev1.Pod {
	out := make([]*corev1.Pod, 0, p.remaining())
	for _, pod := range p.regular {
		if !terminating(pod) {
			out = append(out, pod)
		}
	}
	for _, dp := range p.delayed {
		if !terminating(dp.pod) {
			out = append(out, dp.pod)
		}
	}
	for _, pod := range p.system {
		if !terminating(pod) {
			out = append(out, pod)
		}
	}
	return out
}

// remaining counts the pods the drain still waits for.
func (p *pass) remaining() int { return len(p.regular) + len(p.delayed) + len(p.system) }

// regularGone reports whether the regular wave, delayed pods included, has
// left the node, which lets the system wave start early.
func (p *pass) regularGone() bool { return len(p.regular) == 0 && len(p.delayed) == 0 }

func terminating(pod *corev1.Pod) bool { return pod.DeletionTimestamp != nil }

// ownGrace is the grace period the pod asked for, in seconds.
func ownGrace(pod *corev1.Pod) int64 {
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return max(*g, 0)
	}
	return corev1.DefaultTerminationGracePeriodSeconds
}

// evictionGrace returns the grace period to put in an eviction: nil (the
// pod's own) when that ends before the deadline, otherwise the time left,
// so the kubelet stops the pod in order instead of the machine vanishing
// under it. Never below minGrace.
func evictionGrace(pod *corev1.Pod, now, deadline time.Time, minGrace time.Duration) *int64 {
	left := wholeSeconds(deadline.Sub(now))
	if ownGrace(pod) <= left {
		return nil
	}
	g := max(left, wholeSeconds(minGrace))
	return &g
}

// deleteGrace returns the grace period of an escalated delete, and whether
// the delete is worth sending. For a pod not yet being deleted it is
// min(own grace, time left), at least minGrace. For a pod already being
// deleted the API server measures a shorter grace from the original
// deletion (new deletionTimestamp = old one - old grace + new grace), so
// the time left is counted from there; a grace that is not shorter than
// the current one changes nothing and is not sent.
func deleteGrace(pod *corev1.Pod, now, deadline time.Time, minGrace time.Duration) (int64, bool) {
	own, start := ownGrace(pod), now
	if terminating(pod) {
		if pod.DeletionGracePeriodSeconds == nil || *pod.DeletionGracePeriodSeconds <= 0 {
			return 0, false
		}
		own = *pod.DeletionGracePeriodSeconds
		start = pod.DeletionTimestamp.Add(-time.Duration(own) * time.Second)
	}
	g := max(min(own, wholeSeconds(deadline.Sub(start))), wholeSeconds(minGrace))
	if terminating(pod) && g >= own {
		return 0, false
	}
	return g, true
}

// endsAfter reports whether a pod being deleted will still exist at t.
func endsAfter(pod *corev1.Pod, t time.Time) bool {
	return terminating(pod) && pod.DeletionTimestamp.After(t)
}

// wholeSeconds rounds down: a grace period must fit in the time left.
func wholeSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(d / time.Second)
}
