package drainorder

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook/review"
)

// FuzzAdmit: any pod body is answered; a stamp always applies cleanly and
// yields a value ParseDrainOrder accepts.
func FuzzAdmit(f *testing.F) {
	f.Add(`{"metadata":{}}`)
	f.Add(`{"metadata":{"annotations":null}}`)
	f.Add(`{"metadata":{"annotations":{"termgate.dev/drain-order":"delayed:1h"}}}`)
	f.Add(`{"metadata":{},"spec":{"tolerations":[{"key":"termgate.dev/terminating","operator":"Exists","tolerationSeconds":-4}]}}`)
	f.Add(`{"spec":{}}`)
	g := New(corev1.TaintEffectNoSchedule)
	f.Fuzz(func(t *testing.T, object string) {
		got := g.Admit(context.Background(), &review.Request{UID: "u", Namespace: "ns", Operation: review.OperationCreate, Object: []byte(object)})
		if !got.Allowed {
			if got.Message == "" {
				t.Fatalf("denial without a message: %+v", got)
			}
			return
		}
		if got.Patch == nil {
			return
		}
		pod := applyPatch(t, []byte(object), got.Patch)
		if _, err := nodemark.ParseDrainOrder(pod.Annotations[nodemark.AnnotationDefaultDrainOrder]); err != nil {
			t.Fatalf("stamped an invalid order: %v", err)
		}
	})
}
