package kit

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/nodemark"
)

// MarkNode writes m's annotations onto node as the agent would, for tests
// and benchmarks of the webhook without an agent. It merge-patches the
// annotations alone, so the kubelet's (or kwok's) status writes meanwhile
// do not conflict.
func MarkNode(ctx context.Context, client kubernetes.Interface, node string, m nodemark.Mark) error {
	set := map[string]any{}
	for k, v := range m.Annotations() {
		set[k] = v
	}
	return patchNodeAnnotations(ctx, client, node, set)
}

// UnmarkNode removes the annotations MarkNode wrote for m.
func UnmarkNode(ctx context.Context, client kubernetes.Interface, node string, m nodemark.Mark) error {
	unset := map[string]any{}
	for k := range m.Annotations() {
		unset[k] = nil
	}
	return patchNodeAnnotations(ctx, client, node, unset)
}

func patchNodeAnnotations(ctx context.Context, client kubernetes.Interface, node string, annotations map[string]any) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return fmt.Errorf("encode the mark for %s: %w", node, err)
	}
	if _, err := client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch the mark on %s: %w", node, err)
	}
	return nil
}
