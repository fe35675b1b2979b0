package mark

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
)

func TestExtrasAddTheAutoscalerTaintAndCordonAndUnmarkTakesBackOnlyThose(t *testing.T) {
	n := node(nil, nil, gpuTaint)
	p, err := extrasPatch(n, Extras{AutoscalerTaint: true, Cordon: true}, 1700000000)
	if err != nil || p == nil {
		t.Fatalf("patch %s, %v", p, err)
	}
	marked := apply(t, n, p)
	if !hasTaintKey(marked.Spec.Taints, nodemark.TaintToBeDeleted) || !hasTaintKey(marked.Spec.Taints, gpuTaint.Key) || !marked.Spec.Unschedulable {
		t.Fatalf("after the extras: taints %v, unschedulable %v", marked.Spec.Taints, marked.Spec.Unschedulable)
	}
	for _, tt := range marked.Spec.Taints {
		if tt.Key == nodemark.TaintToBeDeleted && tt.Value != "1700000000" {
			t.Errorf("autoscaler taint value %q, want the Unix time as the autoscaler writes it", tt.Value)
		}
	}
	again, _ := extrasPatch(marked, Extras{AutoscalerTaint: true, Cordon: true}, 1700000001)
	if again != nil {
		t.Errorf("second extras patch %s, want nothing to add", again)
	}
	undo, err := removeExtrasPatch(marked)
	if err != nil || undo == nil {
		t.Fatalf("undo %s, %v", undo, err)
	}
	back := apply(t, marked, undo)
	if hasTaintKey(back.Spec.Taints, nodemark.TaintToBeDeleted) || !hasTaintKey(back.Spec.Taints, gpuTaint.Key) || back.Spec.Unschedulable || len(back.Annotations) != 0 {
		t.Errorf("after the undo: taints %v, unschedulable %v, annotations %v", back.Spec.Taints, back.Spec.Unschedulable, back.Annotations)
	}
}

func TestExtrasLeaveWhatOthersSetAlone(t *testing.T) {
	// The autoscaler tainted and an operator cordoned the node before the
	// notice: termgate adds nothing and so takes nothing back.
	n := node(nil, nil, corev1.Taint{Key: nodemark.TaintToBeDeleted, Value: "1", Effect: corev1.TaintEffectNoSchedule})
	n.Spec.Unschedulable = true
	if p, _ := extrasPatch(n, Extras{AutoscalerTaint: true, Cordon: true}, 2); p != nil {
		t.Errorf("extras patch %s on a node that has both", p)
	}
	if p, _ := removeExtrasPatch(n); p != nil {
		t.Errorf("unmark would take back %s, which termgate did not add", p)
	}
}
