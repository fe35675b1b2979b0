package testenv

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
)

// MarkByHand writes a terminating mark onto a node as the agent would (the
// annotations, with an hour to the deadline; kit.MarkNode), for tests of
// the webhook without an agent, and removes it when the test ends.
func MarkByHand(t testing.TB, client kubernetes.Interface, node string) nodemark.Mark {
	t.Helper()
	now := time.Now()
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(time.Hour)}
	if err := kit.MarkNode(context.Background(), client, node, m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := kit.UnmarkNode(context.Background(), client, node, m); err != nil {
			t.Error(err)
		}
	})
	return m
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
