package mark

import (
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/nodemark"
)

func node(labels, annotations map[string]string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", ResourceVersion: "42", Labels: labels, Annotations: annotations},
		Spec:       corev1.NodeSpec{Taints: taints},
	}
}

// apply applies a patch the way the API server would.
func apply(t *testing.T, n *corev1.Node, patch []byte) *corev1.Node {
	t.Helper()
	orig, _ := json.Marshal(n)
	out, err := strategicpatch.StrategicMergePatch(orig, patch, corev1.Node{})
	if err != nil {
		t.Fatalf("apply patch: %v", err)
	}
	var got corev1.Node
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

var gpuTaint = corev1.Taint{Key: "nvidia.com/gpu", Value: "present", Effect: corev1.TaintEffectNoSchedule}

var preempted = nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
	NoticeTime: time.Unix(1000, 0), Deadline: time.Unix(1030, 0), BootID: "b"}

func TestMarkKeepsOtherTaintsAndGuardsWithResourceVersion(t *testing.T) {
	n := node(nil, nil, gpuTaint)
	patch, err := markPatch(n, preempted, corev1.TaintEffectNoSchedule)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Metadata struct{ ResourceVersion string } `json:"metadata"`
	}
	_ = json.Unmarshal(patch, &body)
	if body.Metadata.ResourceVersion != "42" {
		t.Fatalf("patch not guarded by resourceVersion: %s", patch)
	}
	got := apply(t, n, patch)
	if len(got.Spec.Taints) != 2 || got.Spec.Taints[0] != gpuTaint || got.Spec.Taints[1].Key != nodemark.TaintKey {
		t.Fatalf("taints %v: want the GPU taint kept and ours added", got.Spec.Taints)
	}
	if got.Labels[nodemark.LabelExcludeFromLB] != "true" || got.Annotations[nodemark.AnnotationLBLabelAdded] != "true" {
		t.Fatalf("labels %v annotations %v", got.Labels, got.Annotations)
	}
}

func TestMarkTwiceAddsOneTaint(t *testing.T) {
	n := node(nil, nil)
	p1, _ := markPatch(n, preempted, corev1.TaintEffectNoSchedule)
	once := apply(t, n, p1)
	p2, _ := markPatch(once, preempted, corev1.TaintEffectNoSchedule)
	twice := apply(t, once, p2)
	if len(twice.Spec.Taints) != 1 {
		t.Fatalf("taints after two marks: %v", twice.Spec.Taints)
	}
}

func TestUnmarkRemovesExactlyWhatMarkAdded(t *testing.T) {
	userLabel := map[string]string{nodemark.LabelExcludeFromLB: "true", "team": "ml"}
	cases := map[string]struct {
		before    *corev1.Node
		wantLabel bool
	}{
		"a label termgate added is removed":              {node(map[string]string{"team": "ml"}, nil, gpuTaint), false},
		"a label the user had set before stays in place": {node(userLabel, nil, gpuTaint), true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p, _ := markPatch(tc.before, preempted, corev1.TaintEffectNoSchedule)
			marked := apply(t, tc.before, p)
			up, err := unmarkPatch(marked)
			if err != nil || up == nil {
				t.Fatalf("unmark patch: %s, %v", up, err)
			}
			got := apply(t, marked, up)
			if _, has := got.Labels[nodemark.LabelExcludeFromLB]; has != tc.wantLabel {
				t.Fatalf("load-balancer label present %v, want %v", has, tc.wantLabel)
			}
			if got.Labels["team"] != "ml" || len(got.Spec.Taints) != 1 || got.Spec.Taints[0] != gpuTaint {
				t.Fatalf("unmark touched what was not ours: labels %v taints %v", got.Labels, got.Spec.Taints)
			}
			if _, marked, _ := nodemark.Read(got.Annotations); marked || len(got.Annotations) != 0 {
				t.Fatalf("annotations left: %v", got.Annotations)
			}
		})
	}
}

func TestUnmarkOfAnUnmarkedNodeSendsNothing(t *testing.T) {
	if p, err := unmarkPatch(node(nil, nil, gpuTaint)); p != nil || err != nil {
		t.Fatalf("got patch %s, %v; want none", p, err)
	}
}

// Load balancers keep an announced-maintenance node until it drains: the
// advance state never adds the exclusion label, and going back from
// terminating to advance (a window moved later) removes the label termgate
// added, never a label someone else set.
func TestLoadBalancerExclusionOnlyWhileTerminating(t *testing.T) {
	advance := preempted
	advance.State, advance.Reason = nodemark.StateAdvance, nodemark.ReasonUpcomingMaintenance
	mark := func(n *corev1.Node, m nodemark.Mark) *corev1.Node {
		t.Helper()
		patch, err := markPatch(n, m, corev1.TaintEffectPreferNoSchedule)
		if err != nil {
			t.Fatal(err)
		}
		return apply(t, n, patch)
	}
	ahead := mark(node(nil, nil), advance)
	if _, ok := ahead.Labels[nodemark.LabelExcludeFromLB]; ok {
		t.Fatal("advance state excluded the node from load balancers")
	}
	draining := mark(ahead, preempted)
	if draining.Labels[nodemark.LabelExcludeFromLB] != "true" || draining.Annotations[nodemark.AnnotationLBLabelAdded] != "true" {
		t.Fatalf("terminating state: labels %v annotations %v", draining.Labels, draining.Annotations)
	}
	back := mark(draining, advance)
	if _, ok := back.Labels[nodemark.LabelExcludeFromLB]; ok {
		t.Fatal("back to advance kept termgate's exclusion label")
	}
	users := mark(node(map[string]string{nodemark.LabelExcludeFromLB: "true"}, nil), advance)
	if users.Labels[nodemark.LabelExcludeFromLB] != "true" {
		t.Fatal("advance removed a label termgate did not add")
	}
}

// TestTheConditionIsWrittenOnceWhileTheCallersCopyLags: right after a mark
// the agent's informer still holds the Node from before the condition was
// written; checking that copy would write the condition again on every
// reconcile until the watch caught up, one more Node update for every
// watcher each time.
func TestTheConditionIsWrittenOnceWhileTheCallersCopyLags(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(node(nil, nil))
	mk := New(client, clocktesting.NewFakeClock(time.Unix(1000, 0)), "n", false)
	stale, err := client.CoreV1().Nodes().Get(ctx, "n", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := mk.Mark(ctx, stale, preempted, corev1.TaintEffectNoSchedule); err != nil {
		t.Fatal(err)
	}
	afterMark, err := client.CoreV1().Nodes().Get(ctx, "n", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	statusPatches := func() int {
		n := 0
		for _, a := range client.Actions() {
			if a.GetVerb() == "patch" && a.GetSubresource() == "status" {
				n++
			}
		}
		return n
	}
	// The informer delivers the Node as the mark left it, twice, before
	// it sees the condition.
	for range 2 {
		if err := mk.EnsureCondition(ctx, afterMark, preempted); err != nil {
			t.Fatal(err)
		}
	}
	if got := statusPatches(); got != 1 {
		t.Fatalf("%d condition writes, want 1", got)
	}
	withCondition, err := client.CoreV1().Nodes().Get(ctx, "n", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !hasCondition(withCondition, preempted) {
		t.Fatalf("conditions %v: the mark's condition is missing", withCondition.Status.Conditions)
	}
	// A different mark (a moved deadline) is written.
	moved := preempted
	moved.Deadline = moved.Deadline.Add(time.Minute)
	if err := mk.EnsureCondition(ctx, withCondition, moved); err != nil {
		t.Fatal(err)
	}
	if got := statusPatches(); got != 2 {
		t.Fatalf("%d condition writes after the deadline moved, want 2", got)
	}
}
