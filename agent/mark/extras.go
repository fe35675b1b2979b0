package mark

import (
	"context"
	"encoding/json"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/nodemark"
)

// Extras are the optional marks a draining node can get for load balancers
// (docs/load-balancers.md), both off by default:
//   - AutoscalerTaint adds the cluster autoscaler's
//     ToBeDeletedByClusterAutoscaler taint, which makes kube-proxy's /healthz
//     fail, so that the health checks of externalTrafficPolicy Cluster load
//     balancers take the node out even when the service controller is slow.
//     The taint is the autoscaler's: it removes it from every node when it
//     starts, and treats a node that carries it as one it deletes itself.
//   - Cordon sets spec.unschedulable, for tools that look for it.
//
// Both are written after the mark, in a patch of their own: the shipped Node
// policy refuses them, and a refusal must cost the mark nothing. termgate
// removes only what it added (it records that in an annotation).
type Extras struct {
	AutoscalerTaint bool
	Cordon          bool
}

// SetExtras turns the extras on; call before the first Mark.
func (mk *Marker) SetExtras(e Extras) {
	mk.mu.Lock()
	defer mk.mu.Unlock()
	mk.extras = e
}

func (mk *Marker) extrasWanted() Extras {
	mk.mu.Lock()
	defer mk.mu.Unlock()
	return mk.extras
}

// applyExtras writes the extras of a draining node; a failure is logged and
// the mark stands.
func (mk *Marker) applyExtras(ctx context.Context, m nodemark.Mark) {
	e := mk.extrasWanted()
	if !m.Terminating() || (!e.AutoscalerTaint && !e.Cordon) {
		return
	}
	now := mk.clock.Now().Unix()
	err := mk.patchWithRetry(ctx, nil, func(n *corev1.Node) ([]byte, error) { return extrasPatch(n, e, now) })
	if err != nil {
		log.FromContext(ctx).Error(err, "optional load-balancer marks not written; the Node policy must allow them", "autoscalerTaint", e.AutoscalerTaint, "cordon", e.Cordon)
	}
}

// extrasPatch adds what e asks for and the node lacks, recording what was
// added; nil when there is nothing to add.
func extrasPatch(n *corev1.Node, e Extras, now int64) ([]byte, error) {
	annotations := map[string]any{}
	spec := map[string]any{}
	if e.AutoscalerTaint && !hasTaintKey(n.Spec.Taints, nodemark.TaintToBeDeleted) {
		// The value is a Unix time, as the autoscaler writes it.
		spec["taints"] = append(append([]corev1.Taint{}, n.Spec.Taints...),
			corev1.Taint{Key: nodemark.TaintToBeDeleted, Value: strconv.FormatInt(now, 10), Effect: corev1.TaintEffectNoSchedule})
		annotations[nodemark.AnnotationAutoscalerTaintAdded] = "true"
	}
	if e.Cordon && !n.Spec.Unschedulable {
		spec["unschedulable"] = true
		annotations[nodemark.AnnotationCordoned] = "true"
	}
	if len(spec) == 0 {
		return nil, nil
	}
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": n.ResourceVersion, "annotations": annotations},
		"spec":     spec,
	})
}

// removeExtrasPatch takes back what extrasPatch added; nil when nothing.
func removeExtrasPatch(n *corev1.Node) ([]byte, error) {
	annotations := map[string]any{}
	spec := map[string]any{}
	if n.Annotations[nodemark.AnnotationAutoscalerTaintAdded] == "true" {
		var keep []corev1.Taint
		for _, t := range n.Spec.Taints {
			if t.Key != nodemark.TaintToBeDeleted {
				keep = append(keep, t)
			}
		}
		if keep == nil {
			keep = []corev1.Taint{}
		}
		spec["taints"] = keep
		annotations[nodemark.AnnotationAutoscalerTaintAdded] = nil
	}
	if n.Annotations[nodemark.AnnotationCordoned] == "true" {
		spec["unschedulable"] = false
		annotations[nodemark.AnnotationCordoned] = nil
	}
	if len(annotations) == 0 {
		return nil, nil
	}
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": n.ResourceVersion, "annotations": annotations},
		"spec":     spec,
	})
}

func hasTaintKey(taints []corev1.Taint, key string) bool {
	for _, t := range taints {
		if t.Key == key {
			return true
		}
	}
	return false
}
