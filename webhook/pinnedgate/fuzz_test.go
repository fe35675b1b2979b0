package pinnedgate

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/webhook/review"
)

// FuzzAdmit: any pod body gets an answer, and a denial explains itself.
func FuzzAdmit(f *testing.F) {
	f.Add(`{"metadata":{},"spec":{"nodeName":"dying"}}`)
	f.Add(`{"metadata":{"annotations":{"kubernetes.io/config.mirror":"x"}},"spec":{"nodeName":"dying"}}`)
	f.Add(`{"metadata":{},"spec":{"nodeName":"dying","tolerations":[{"operator":"Exists","tolerationSeconds":-1}]}}`)
	g := New(testNodes(), corev1.TaintEffectNoSchedule, nil)
	f.Fuzz(func(t *testing.T, object string) {
		got := g.Admit(context.Background(), &review.Request{UID: "u", Namespace: "ns", Operation: review.OperationCreate, Object: []byte(object)})
		if !got.Allowed && got.Message == "" {
			t.Fatalf("denial without a message: %+v", got)
		}
	})
}
