package confine

import (
	"context"
	"testing"

	"termgate.dev/termgate/webhook/review"
)

// FuzzAdmit: any old object or eviction body and token node get an answer;
// a denial explains itself; a pod on another node is never allowed.
func FuzzAdmit(f *testing.F) {
	f.Add(`{"metadata":{},"spec":{"nodeName":"node-a"}}`, "node-a", false)
	f.Add(`{"metadata":{},"spec":{"nodeName":"node-b"}}`, "node-a", false)
	f.Add(`{"deleteOptions":{"preconditions":{"uid":"uid-on-b"}}}`, "node-a", true)
	f.Add(`{"deleteOptions":{"preconditions":{"uid":"uid-on-a"}}}`, "node-a", true)
	f.Add(`null`, "", true)
	g := New(Options{Username: agent}, &marks{terminating: map[string]bool{"node-a": true, "node-b": true}}, cluster(), nil)
	f.Fuzz(func(t *testing.T, body, tokenNode string, evict bool) {
		req := &review.Request{UID: "u", Name: "on-b", Namespace: "apps", Operation: review.OperationDelete,
			UserInfo: agentUser(tokenNode), OldObject: []byte(body)}
		if evict {
			req.Operation, req.SubResource, req.OldObject, req.Object = review.OperationCreate, "eviction", nil, []byte(body)
		}
		got := g.Admit(context.Background(), req)
		if !got.Allowed && got.Message == "" {
			t.Fatalf("denial without a message: %+v", got)
		}
		if !got.Allowed {
			return
		}
		if evict {
			if tokenNode != "node-b" {
				t.Fatalf("allowed the eviction of a pod on node-b by the agent on %q", tokenNode)
			}
			return
		}
		pod, err := review.DecodePod([]byte(body), "apps")
		if err != nil || pod.Spec.NodeName != tokenNode || tokenNode == "" {
			t.Fatalf("allowed a delete of %s by the agent on %q", body, tokenNode)
		}
	})
}
