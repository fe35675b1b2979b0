package nodemark

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// AnnotationDrainOrder on a Pod is its owner's explicit drain order. Only an
// owner sets it; the agent honours it when valid and otherwise applies
// DefaultDrainOrder to the live pod.
const AnnotationDrainOrder = "termgate.dev/drain-order"

// PodAnnotationsRead are the only pod annotations the functions of this
// file read (DrainOrderFor, IsMirrorPod). The agent's pod cache and the
// webhook's pod decoder keep these and drop every other annotation, so a
// rule here that reads another one must add its key to this list.
var PodAnnotationsRead = []string{AnnotationDrainOrder, corev1.MirrorPodAnnotationKey}

// AnnotationDefaultDrainOrder is the default order the webhook computed when
// the pod was created, stamped so that owners see it. It is informational:
// the agent ignores it and recomputes the default from the live pod, so a
// toleration added after creation counts for the drain as it does for the
// bind gate.
const AnnotationDefaultDrainOrder = "termgate.dev/default-drain-order"

// Wave is the phase of the drain in which a pod is evicted.
type Wave string

const (
	// WaveRegular pods are evicted first, as soon as the notice arrives.
	WaveRegular Wave = "regular"
	// WaveSystem pods are evicted last, once the regular wave is gone or its
	// time is up, so node agents and cluster add-ons serve until the end.
	WaveSystem Wave = "system"
	// WaveKeep pods tolerate the termination taint without a time limit: they
	// declared they may run on a terminating node, so they are not evicted.
	WaveKeep Wave = "keep"
	// WaveDelayed pods tolerate the taint for a while (tolerationSeconds):
	// they are evicted that long after the notice, clamped to the deadline.
	WaveDelayed Wave = "delayed"
)

// DrainOrder is a pod's place in the drain.
type DrainOrder struct {
	Wave Wave
	// After is set for WaveDelayed: time after the notice to evict.
	After time.Duration
}

// String renders the annotation value: "regular", "system", "keep" or
// "delayed:<duration>" (for example "delayed:10s").
func (o DrainOrder) String() string {
	if o.Wave == WaveDelayed {
		return string(WaveDelayed) + ":" + o.After.String()
	}
	return string(o.Wave)
}

// ParseDrainOrder parses an annotation value written by String.
func ParseDrainOrder(v string) (DrainOrder, error) {
	switch Wave(v) {
	case WaveRegular, WaveSystem, WaveKeep:
		return DrainOrder{Wave: Wave(v)}, nil
	}
	rest, ok := strings.CutPrefix(v, string(WaveDelayed)+":")
	if !ok {
		return DrainOrder{}, fmt.Errorf("drain order %q: want regular, system, keep or delayed:<duration>", v)
	}
	d, err := time.ParseDuration(rest)
	if err != nil || d < 0 {
		return DrainOrder{}, fmt.Errorf("drain order %q: delay must be a non-negative duration such as 10s", v)
	}
	return DrainOrder{Wave: WaveDelayed, After: d}, nil
}

// System priority classes: pods that keep the node and cluster running.
const (
	PriorityClassNodeCritical    = "system-node-critical"
	PriorityClassClusterCritical = "system-cluster-critical"
)

// DrainOrderFor returns the order the agent applies to pod: a valid
// drain-order annotation wins; otherwise DefaultDrainOrder decides.
func DrainOrderFor(pod *corev1.Pod, effect corev1.TaintEffect) DrainOrder {
	if v, ok := pod.Annotations[AnnotationDrainOrder]; ok {
		if o, err := ParseDrainOrder(v); err == nil {
			return o
		}
	}
	return DefaultDrainOrder(pod, effect)
}

// DefaultDrainOrder is the drain-order policy (documented as a table in
// docs/design.md). Tolerations are read the way the kubelet reads them for NoExecute
// taints: a toleration of the termination taint without tolerationSeconds
// keeps the pod; with tolerationSeconds it delays the eviction. A toleration
// that matches every taint (operator Exists, no key) counts too, which is what
// node agents that must never leave a node look like.
func DefaultDrainOrder(pod *corev1.Pod, effect corev1.TaintEffect) DrainOrder {
	taint, noExecute := Taint(effect), Taint(corev1.TaintEffectNoExecute)
	for i := range pod.Spec.Tolerations {
		t := &pod.Spec.Tolerations[i]
		// The API accepts tolerationSeconds only on NoExecute tolerations,
		// so a toleration of our key with effect NoExecute counts whatever
		// effect the taint itself carries: termination is eviction.
		if !t.ToleratesTaint(klog.Background(), &taint, false) && !t.ToleratesTaint(klog.Background(), &noExecute, false) {
			continue
		}
		if t.TolerationSeconds == nil {
			return DrainOrder{Wave: WaveKeep}
		}
		return DrainOrder{Wave: WaveDelayed, After: time.Duration(max(*t.TolerationSeconds, 0)) * time.Second}
	}
	if IsSystemPod(pod) {
		return DrainOrder{Wave: WaveSystem}
	}
	return DrainOrder{Wave: WaveRegular}
}

// IsSystemPod: kube-system pods, pods of the system priority classes, and
// DaemonSet pods (node agents that the node needs until the end).
func IsSystemPod(pod *corev1.Pod) bool {
	if pod.Namespace == "kube-system" {
		return true
	}
	switch pod.Spec.PriorityClassName {
	case PriorityClassNodeCritical, PriorityClassClusterCritical:
		return true
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Kind == "DaemonSet" && ref.Controller != nil && *ref.Controller {
			return true
		}
	}
	return false
}

// IsMirrorPod reports whether pod is the API mirror of a static pod; those
// are owned by the kubelet and cannot be evicted.
func IsMirrorPod(pod *corev1.Pod) bool {
	_, ok := pod.Annotations[corev1.MirrorPodAnnotationKey]
	return ok
}

// IsFinished reports whether pod has run to completion.
func IsFinished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}
