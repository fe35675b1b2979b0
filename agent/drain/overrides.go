package drain

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/nodemark"
)

// overrideNotes records, once per pod and drain, an event on each pod whose
// owner's termgate.dev/drain-order annotation decides its place in the
// drain instead of the default. On a node shared by tenants, an override
// (above all "keep", which is never evicted, or "system", which goes last)
// changes when other tenants' pods may go; the event lets the pod's owner
// and the platform see that the annotation, not termgate's policy, decided.
type overrideNotes struct {
	seen map[types.UID]bool
}

func newOverrideNotes() *overrideNotes { return &overrideNotes{seen: map[types.UID]bool{}} }

// note records the event for every pod of pods not seen yet whose
// annotation overrides the default.
func (o *overrideNotes) note(d *Drainer, pods []*corev1.Pod) {
	if d.rec == nil {
		return
	}
	for _, pod := range pods {
		if o.seen[pod.UID] {
			continue
		}
		v, ok := pod.Annotations[nodemark.AnnotationDrainOrder]
		if !ok || nodemark.IsMirrorPod(pod) || nodemark.IsFinished(pod) {
			continue
		}
		o.seen[pod.UID] = true
		order, def := nodemark.DrainOrderFor(pod, d.cfg.TaintEffect), nodemark.DefaultDrainOrder(pod, d.cfg.TaintEffect)
		if _, err := nodemark.ParseDrainOrder(v); err != nil || order == def {
			continue
		}
		d.rec.Eventf(pod, corev1.EventTypeNormal, nodemark.EventDrainOrderOverridden,
			"Drain order %s from the pod's %s annotation, instead of the default %s, on terminating node %s",
			order, nodemark.AnnotationDrainOrder, def, d.cfg.NodeName)
	}
}
