package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
)

// foreignAnnotations returns count annotations that are not termgate's,
// about total bytes of keys and values together.
func foreignAnnotations(count, total int) map[string]string {
	out := map[string]string{}
	for i := range count {
		key := fmt.Sprintf("example.com/inventory-%04d", i)
		out[key] = strings.Repeat("x", total/count-len(key))
	}
	return out
}

// TestTheAgentMarksAndRestoresANodeCarrying200KiBOfForeignAnnotations: the
// Node policy compares every foreign annotation on each of the agent's
// writes, so its CEL cost grows with them. On a node carrying 200 KiB of
// other owners' annotations (the API server allows 256 KiB), in a few
// large values or in many small ones, the real agent's mark, condition and
// unmark must still pass, and leave those annotations as they were.
func TestTheAgentMarksAndRestoresANodeCarrying200KiBOfForeignAnnotations(t *testing.T) {
	for name, shape := range map[string]struct{ count int }{
		"four values of 50 KiB":     {count: 4},
		"2,000 values of 100 bytes": {count: 2000},
	} {
		t.Run(name, func(t *testing.T) {
			n := prepareNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=30s")
			foreign := foreignAnnotations(shape.count, 200<<10)
			patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": foreign}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := env.Client.CoreV1().Nodes().Patch(context.Background(), n.name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatalf("annotate node: %v", err)
			}
			n.start(t)
			n.md.SetPreempted(true)
			n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
			n.md.SetPreempted(false)
			n.expectUnmarked(t, 5*time.Second)
			got := n.get(t).Annotations
			kept := maps.Clone(got)
			maps.DeleteFunc(kept, func(k, _ string) bool { return !strings.HasPrefix(k, "example.com/") })
			if !maps.Equal(kept, foreign) {
				t.Fatalf("the node's foreign annotations changed: %d of %d kept as they were", len(kept), len(foreign))
			}
			if log := n.agent.Log(); strings.Contains(log, "ValidatingAdmissionPolicy") {
				t.Fatalf("the agent met a policy refusal:\n%s", log)
			}
		})
	}
}
