package pinnedgate

import (
	"context"
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/webhook/review"
)

// FuzzAdmit: any pod body from any user gets an answer, a denial explains
// itself, and a mirror pod is let through as such only for its own node.
func FuzzAdmit(f *testing.F) {
	f.Add(`{"metadata":{},"spec":{"nodeName":"dying"}}`, "")
	f.Add(`{"metadata":{"annotations":{"kubernetes.io/config.mirror":"x"}},"spec":{"nodeName":"dying"}}`, "system:node:dying")
	f.Add(`{"metadata":{"annotations":{"kubernetes.io/config.mirror":"x"}},"spec":{"nodeName":"dying"}}`, "system:node:")
	f.Add(`{"metadata":{"annotations":{"kubernetes.io/config.mirror":"x"}},"spec":{"nodeName":""}}`, "system:node:")
	f.Add(`{"metadata":{},"spec":{"nodeName":"dying","tolerations":[{"operator":"Exists","tolerationSeconds":-1}]}}`, "tenant")
	g := New(testNodes(), Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	f.Fuzz(func(t *testing.T, object, username string) {
		got := g.Admit(context.Background(), &review.Request{UID: "u", Namespace: "ns", Operation: review.OperationCreate,
			Object: []byte(object), UserInfo: review.UserInfo{Username: username}})
		if !got.Allowed && got.Message == "" {
			t.Fatalf("denial without a message: %+v", got)
		}
		if got.Verdict != VerdictMirror {
			return
		}
		var pod corev1.Pod
		if err := json.Unmarshal([]byte(object), &pod); err != nil || username != "system:node:"+pod.Spec.NodeName || pod.Spec.NodeName == "" {
			t.Fatalf("user %q passed as the node of mirror pod %s", username, object)
		}
	})
}
