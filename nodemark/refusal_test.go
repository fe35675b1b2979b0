package nodemark

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

func TestToleratesReadsTolerationsOnly(t *testing.T) {
	pod := &corev1.Pod{}
	pod.Annotations = map[string]string{AnnotationDrainOrder: "keep"}
	if Tolerates(pod, corev1.TaintEffectNoSchedule) {
		t.Fatal("a drain-order annotation counted as a toleration")
	}
	pod.Spec.Tolerations = []corev1.Toleration{{Key: TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](5)}}
	if !Tolerates(pod, corev1.TaintEffectNoSchedule) {
		t.Fatal("a time-limited toleration of the taint did not count")
	}
}

func TestRefusalNamesTheNodeTheReasonAndTheDeadline(t *testing.T) {
	m := Mark{Reason: ReasonPreempted, Deadline: time.Date(2026, 11, 29, 12, 0, 30, 0, time.UTC)}
	got := Refusal("spot-1", m, corev1.TaintEffectNoSchedule)
	for _, want := range []string{"node spot-1 is terminating", "Preempted", "2026-11-29T12:00:30Z", TaintKey + ":NoSchedule"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	if got := Refusal("n", Mark{}, corev1.TaintEffectNoSchedule); !strings.Contains(got, "unknown reason, deadline unknown") {
		t.Errorf("empty mark: %q", got)
	}
}
