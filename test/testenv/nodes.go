package testenv

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/nodemark"
)

// MarkByHand writes a terminating mark onto a node as the agent would (the
// annotations, with an hour to the deadline), for tests of the webhook
// without an agent, and removes it when the test ends. It merge-patches the
// annotations alone, so the kubelet's (or kwok's) status writes meanwhile do
// not conflict.
func MarkByHand(t testing.TB, client kubernetes.Interface, node string) nodemark.Mark {
	t.Helper()
	now := time.Now()
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(time.Hour)}
	set := map[string]any{}
	for k, v := range m.Annotations() {
		set[k] = v
	}
	patchAnnotations(t, client, node, set, t.Fatalf)
	t.Cleanup(func() {
		unset := map[string]any{}
		for k := range m.Annotations() {
			unset[k] = nil
		}
		patchAnnotations(t, client, node, unset, t.Errorf)
	})
	return m
}

func patchAnnotations(t testing.TB, client kubernetes.Interface, node string, annotations map[string]any, fail func(string, ...any)) {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		fail("encode the mark for %s: %v", node, err)
		return
	}
	if _, err := client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		fail("patch the mark on %s: %v", node, err)
	}
}

// OtherNode returns the name of a node that is not except.
func OtherNode(t testing.TB, client kubernetes.Interface, except string) string {
	t.Helper()
	nodes, err := client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	for _, n := range nodes.Items {
		if n.Name != except {
			return n.Name
		}
	}
	t.Fatalf("no node other than %s", except)
	return ""
}
