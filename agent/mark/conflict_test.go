package mark

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/nodemark"
)

// racingWriter makes the first conflicts node patches fail with 409, each
// time after another writer added a taint of its own, as the API server
// answers a patch computed from a resourceVersion that moved on.
func racingWriter(t *testing.T, client *fake.Clientset, conflicts int) (patches *int) {
	t.Helper()
	patches = new(int)
	nodes := schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
	client.PrependReactor("patch", "nodes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "" {
			return false, nil, nil
		}
		*patches++
		if *patches > conflicts {
			return false, nil, nil
		}
		obj, err := client.Tracker().Get(nodes, "", "n")
		if err != nil {
			return true, nil, err
		}
		n := obj.(*corev1.Node).DeepCopy()
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "other-writer/" + string(rune('a'+*patches)), Effect: corev1.TaintEffectNoSchedule})
		if err := client.Tracker().Update(nodes, n, ""); err != nil {
			return true, nil, err
		}
		return true, nil, apierrors.NewConflict(nodes.GroupResource(), "n", errors.New("the object has been modified"))
	})
	return patches
}

// TestAMarkThatConflictsIsRecomputedFromTheNodeAsItIsNow: the taint list
// is atomic, so a mark computed from a stale copy would drop the taints
// another writer added meanwhile. On 409 the Marker re-reads the node and
// rebuilds the patch, so every taint added meanwhile survives.
func TestAMarkThatConflictsIsRecomputedFromTheNodeAsItIsNow(t *testing.T) {
	start := node(nil, nil, gpuTaint)
	client := fake.NewClientset(start)
	patches := racingWriter(t, client, 2)
	mk := New(client, clocktesting.NewFakeClock(preempted.NoticeTime), "n", false)
	if err := mk.Mark(context.Background(), start, preempted, corev1.TaintEffectNoSchedule); err != nil {
		t.Fatalf("mark after two conflicts: %v", err)
	}
	got, err := client.CoreV1().Nodes().Get(context.Background(), "n", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, tn := range got.Spec.Taints {
		keys[tn.Key] = true
	}
	for _, want := range []string{gpuTaint.Key, "other-writer/b", "other-writer/c", nodemark.TaintKey} {
		if !keys[want] {
			t.Errorf("taint %s missing after the mark: %v", want, got.Spec.Taints)
		}
	}
	if *patches != 3 {
		t.Errorf("%d patches, want 3 (two refused, one accepted)", *patches)
	}
}

// TestAMarkThatKeepsConflictingGivesUp: the retries are bounded, so a node
// that some controller rewrites without end fails the reconcile (which
// retries later and starts the drain anyway) instead of spinning.
func TestAMarkThatKeepsConflictingGivesUp(t *testing.T) {
	start := node(nil, nil)
	client := fake.NewClientset(start)
	patches := racingWriter(t, client, 1000)
	mk := New(client, clocktesting.NewFakeClock(preempted.NoticeTime), "n", false)
	err := mk.Mark(context.Background(), start, preempted, corev1.TaintEffectNoSchedule)
	if err == nil || !apierrors.IsConflict(err) || !strings.Contains(err.Error(), "still conflicting after 10 attempts") {
		t.Fatalf("got %v, want the last conflict after 10 attempts", err)
	}
	if *patches != maxConflicts {
		t.Errorf("%d patches, want %d", *patches, maxConflicts)
	}
}
