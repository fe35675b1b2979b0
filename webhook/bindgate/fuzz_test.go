package bindgate

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/webhook/review"
)

// FuzzAdmit: any Binding body gets an answer, never a panic, and a denial
// always explains itself.
func FuzzAdmit(f *testing.F) {
	f.Add(`{"target":{"kind":"Node","name":"dying"}}`, "dying-pod")
	f.Add(`{"target":{"name":"healthy"}}`, "p")
	f.Add(`{"target":null}`, "")
	f.Add(`[]`, "x")
	nodes := newNodes(&nodecacheNode{name: "healthy"}, &nodecacheNode{name: "dying", annotations: terminating()})
	f.Fuzz(func(t *testing.T, object, podName string) {
		p := &pods{t: t, byName: map[string]*corev1.Pod{"ns/dying-pod": pod("dying-pod")}}
		g := New(nodes, p, Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
		req := &review.Request{UID: "u", Name: podName, Namespace: "ns", Operation: review.OperationCreate, SubResource: "binding", Object: []byte(object)}
		got := g.Admit(context.Background(), req)
		if !got.Allowed && got.Message == "" {
			t.Fatalf("denial without a message: %+v", got)
		}
	})
}
