package drain

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clienttesting "k8s.io/client-go/testing"
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
