package nodecache

import (
	"context"
	"maps"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/nodemark"
)

func TestLookup(t *testing.T) {
	deadline := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	marked := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: deadline.Add(-30 * time.Second), Deadline: deadline}.Annotations()
	broken := map[string]string{nodemark.AnnotationState: "terminating", nodemark.AnnotationDeadline: "soon"}
	store := NewStore()
	for _, n := range []*metav1.PartialObjectMetadata{NodeMeta("plain", nil), NodeMeta("dying", marked), NodeMeta("broken", broken)} {
		if err := store.Add(n); err != nil {
			t.Fatal(err)
		}
	}
	c := NewFromStore(store)
	tests := map[string]struct {
		name            string
		wantKnown       bool
		wantTerminating bool
	}{
		"A node without a mark is known and not terminating.":                {name: "plain", wantKnown: true},
		"A marked node is terminating with its deadline.":                    {name: "dying", wantKnown: true, wantTerminating: true},
		"A node with a malformed mark that says terminating is terminating.": {name: "broken", wantKnown: true, wantTerminating: true},
		"A node missing from the cache is reported unknown.":                 {name: "absent"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			n, known := c.Lookup(context.Background(), tc.name)
			if known != tc.wantKnown || n.Terminating() != tc.wantTerminating {
				t.Fatalf("got %+v known=%v", n, known)
			}
			if tc.name == "dying" && !n.Mark.Deadline.Equal(deadline) {
				t.Fatalf("deadline %v", n.Mark.Deadline)
			}
		})
	}
}

func TestTrimKeepsOnlyTermgateAnnotationsAndTheLabelsAskedFor(t *testing.T) {
	in := NodeMeta("n", map[string]string{nodemark.AnnotationState: "advance", "other.io/x": "y"})
	in.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	in.Labels = map[string]string{"a": "b", "cloud.google.com/gke-spot": "true"}
	for _, tc := range []struct {
		keep       []string
		wantLabels map[string]string
	}{
		{keep: nil, wantLabels: nil},
		{keep: []string{"cloud.google.com/gke-spot", "absent"}, wantLabels: map[string]string{"cloud.google.com/gke-spot": "true"}},
	} {
		out, err := trimmer(tc.keep)(in)
		if err != nil {
			t.Fatal(err)
		}
		m := out.(*metav1.PartialObjectMetadata)
		if m.Name != "n" || len(m.Annotations) != 1 || m.Annotations[nodemark.AnnotationState] != "advance" || m.ManagedFields != nil {
			t.Fatalf("keep %v: trimmed to %+v", tc.keep, m)
		}
		if !maps.Equal(m.Labels, tc.wantLabels) || (tc.wantLabels == nil && m.Labels != nil) {
			t.Fatalf("keep %v: labels %v, want %v", tc.keep, m.Labels, tc.wantLabels)
		}
	}
}
