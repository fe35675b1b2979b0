package drain

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clienttesting "k8s.io/client-go/testing"

	"termgate.dev/termgate/nodemark"
)

func TestPodSourceWatchesOnlyItsNode(t *testing.T) {
	k := newKit(t, pod("mine"), pod("theirs", onNode("node-b")))

	var listed, watched bool
	for _, a := range k.client.Actions() {
		if a.GetResource().Resource != "pods" {
			continue
		}
		var selector string
		switch a := a.(type) {
		case clienttesting.ListAction:
			selector = a.GetListRestrictions().Fields.String()
		case clienttesting.WatchAction:
			selector = a.GetWatchRestrictions().Fields.String()
		default:
			continue
		}
		if a.GetNamespace() != "" {
			t.Errorf("%s in namespace %q, want all namespaces", a.GetVerb(), a.GetNamespace())
		}
		if got := selector; got != "spec.nodeName="+testNode {
			t.Errorf("%s of pods with field selector %q, want spec.nodeName=%s", a.GetVerb(), got, testNode)
		}
		listed = listed || a.GetVerb() == "list"
		watched = watched || a.GetVerb() == "watch"
	}
	if !listed || !watched {
		t.Fatalf("listed=%v watched=%v, want both", listed, watched)
	}
	if got := names(asCalls(k.source)); len(got) != 1 || got[0] != "mine" {
		t.Errorf("List() = %v, want only the node's pod", got)
	}
}

func TestPodSourceWakesSubscribersOnChange(t *testing.T) {
	k := newKit(t)
	changes, cancel := k.source.Subscribe()
	defer cancel()
	if _, err := k.client.CoreV1().Pods("default").Create(context.Background(), pod("new"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up after a pod was added")
	}
	if len(k.source.List()) != 1 {
		t.Errorf("List() = %d pods after the wake-up, want 1", len(k.source.List()))
	}
}

func asCalls(s *PodSource) []call {
	var out []call
	for _, p := range s.List() {
		out = append(out, call{name: p.Name})
	}
	return out
}

// Tenants decide how large their pods are; the cache keeps only what the
// drain reads.
func TestTrimPodKeepsOnlyWhatTheDrainReads(t *testing.T) {
	big := strings.Repeat("x", 256<<10)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u", ResourceVersion: "7",
			Annotations: map[string]string{"tenant/blob": big, nodemark.AnnotationDrainOrder: "system", corev1.MirrorPodAnnotationKey: "h"},
			Labels:      map[string]string{"big": "label"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "other"},
				{Kind: "DaemonSet", Name: "ds", Controller: ptr(true)}},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "m"}}},
		Spec: corev1.PodSpec{NodeName: "n", PriorityClassName: "pc", TerminationGracePeriodSeconds: ptr[int64](7),
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "c", Env: []corev1.EnvVar{{Name: "E", Value: big}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Message: big},
	}
	obj, err := trimPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	got := obj.(*corev1.Pod)
	if len(got.Spec.Containers) != 0 || got.ManagedFields != nil || got.Status.Message != "" || len(got.Annotations) != 2 {
		t.Fatalf("kept more than the drain reads: %d containers, %d annotations", len(got.Spec.Containers), len(got.Annotations))
	}
	// The wait for load balancers matches Service selectors on them.
	if got.Labels["big"] != "label" {
		t.Fatalf("labels %v dropped; Services select pods by them", got.Labels)
	}
	if nodemark.DrainOrderFor(got, corev1.TaintEffectNoSchedule) != nodemark.DrainOrderFor(pod, corev1.TaintEffectNoSchedule) ||
		nodemark.IsMirrorPod(got) != nodemark.IsMirrorPod(pod) || nodemark.IsSystemPod(got) != nodemark.IsSystemPod(pod) ||
		ownGrace(got) != ownGrace(pod) || got.UID != pod.UID || got.Spec.NodeName != "n" || got.Status.Phase != corev1.PodRunning {
		t.Fatalf("trimmed pod reads differently: %+v", got)
	}
}
