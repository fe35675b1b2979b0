package confine

import (
	"context"
	"testing"

	"termgate.dev/termgate/webhook/review"
)

// FuzzAdmit: any old object and token node get an answer; a denial
// explains itself; a pod on another node is never allowed.
func FuzzAdmit(f *testing.F) {
	f.Add(`{"metadata":{},"spec":{"nodeName":"node-a"}}`, "node-a")
	f.Add(`{"metadata":{},"spec":{"nodeName":"node-b"}}`, "node-a")
	f.Add(`null`, "")
	g := New(Options{Username: agent}, nil, pods{}, nil)
	f.Fuzz(func(t *testing.T, old, tokenNode string) {
		req := &review.Request{UID: "u", Name: "x", Namespace: "apps", Operation: review.OperationDelete,
			UserInfo: review.UserInfo{Username: agent, Extra: map[string][]string{ExtraNodeName: {tokenNode}, ExtraPodName: {"agent-pod"}}}, OldObject: []byte(old)}
		got := g.Admit(context.Background(), req)
		if !got.Allowed && got.Message == "" {
			t.Fatalf("denial without a message: %+v", got)
		}
		if got.Allowed {
			pod, err := review.DecodePod([]byte(old), "apps")
			if err != nil || pod.Spec.NodeName != tokenNode || tokenNode == "" {
				t.Fatalf("allowed a delete of %s by the agent on %q", old, tokenNode)
			}
		}
	})
}
