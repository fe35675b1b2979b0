package confine

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"termgate.dev/termgate/webhook/review"
)

const agent = "system:serviceaccount:termgate:termgate-agent"

type pods struct {
	byName map[string]*corev1.Pod
	err    error
}

func (p pods) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	if p.err != nil {
		return nil, p.err
	}
	if pod, ok := p.byName[namespace+"/"+name]; ok {
		return pod, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
}

func podOn(name, node string) *corev1.Pod {
	p := &corev1.Pod{}
	p.Name, p.Namespace, p.Spec.NodeName = name, "apps", node
	return p
}

func eviction(user, tokenNode, pod string) *review.Request {
	r := &review.Request{UID: "u", Name: pod, Namespace: "apps", Operation: review.OperationCreate, SubResource: "eviction",
		UserInfo: review.UserInfo{Username: user}, Object: []byte(`{"apiVersion":"policy/v1","kind":"Eviction"}`)}
	if tokenNode != "" {
		r.UserInfo.Extra = map[string][]string{ExtraNodeName: {tokenNode}, ExtraPodName: {"termgate-agent-" + tokenNode}}
	}
	return r
}

// nodeBoundEviction is an eviction by a token bound to the Node object: the
// API server sets the node's name and UID but no pod.
func nodeBoundEviction(tokenNode, pod string) *review.Request {
	r := eviction(agent, "", pod)
	r.UserInfo.Extra = map[string][]string{ExtraNodeName: {tokenNode}, "authentication.kubernetes.io/node-uid": {"1234"}}
	return r
}

// located is a PodLocator that holds the pods of some nodes.
type located map[string]string

func (l located) Locate(_ context.Context, namespace, name, _ string) (string, bool) {
	n, ok := l[namespace+"/"+name]
	return n, ok
}

func deletion(t *testing.T, tokenNode string, pod *corev1.Pod) *review.Request {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &review.Request{UID: "u", Name: pod.Name, Namespace: "apps", Operation: review.OperationDelete,
		UserInfo: review.UserInfo{Username: agent, Extra: map[string][]string{ExtraNodeName: {tokenNode}, ExtraPodName: {"termgate-agent-" + tokenNode}}}, OldObject: raw}
}

func TestConfine(t *testing.T) {
	cluster := pods{byName: map[string]*corev1.Pod{"apps/on-a": podOn("on-a", "node-a"), "apps/on-b": podOn("on-b", "node-b"), "apps/pending": podOn("pending", "")}}
	tests := map[string]struct {
		req         func(t *testing.T) *review.Request
		locator     PodLocator
		pods        review.PodGetter
		opts        Options
		wantAllowed bool
		wantVerdict string
		wantMessage string
	}{
		"The agent on node A evicts a pod on node A.": {
			req: func(*testing.T) *review.Request { return eviction(agent, "node-a", "on-a") }, pods: cluster, wantAllowed: true, wantVerdict: VerdictOwnNode,
		},
		"The agent on node A may not evict a pod on node B.": {
			req: func(*testing.T) *review.Request { return eviction(agent, "node-a", "on-b") }, pods: cluster,
			wantVerdict: VerdictOtherNode, wantMessage: "the agent on node node-a may not evict or delete pod apps/on-b on node node-b",
		},
		"The agent may not evict a pod that is not scheduled.": {
			req: func(*testing.T) *review.Request { return eviction(agent, "node-a", "pending") }, pods: cluster, wantVerdict: VerdictOtherNode,
		},
		"An agent token not bound to a pod may not evict at all.": {
			req: func(*testing.T) *review.Request { return eviction(agent, "", "on-a") }, pods: cluster,
			wantVerdict: VerdictUnbound, wantMessage: ExtraNodeName,
		},
		"The agent on node A deletes a pod on node A, read from the old object.": {
			req: func(t *testing.T) *review.Request { return deletion(t, "node-a", podOn("x", "node-a")) }, pods: pods{err: errors.New("must not read")},
			wantAllowed: true, wantVerdict: VerdictOwnNode,
		},
		"The agent on node A may not delete a pod on node B.": {
			req: func(t *testing.T) *review.Request { return deletion(t, "node-a", podOn("x", "node-b")) }, pods: cluster, wantVerdict: VerdictOtherNode,
		},
		"Evicting a pod that is already gone is allowed.": {
			req: func(*testing.T) *review.Request { return eviction(agent, "node-a", "gone") }, pods: cluster, wantAllowed: true, wantVerdict: VerdictPodGone,
		},
		"When the pod cannot be read the eviction is allowed by default (fail open).": {
			req: func(*testing.T) *review.Request { return eviction(agent, "node-a", "on-b") }, pods: pods{err: errors.New("timeout")},
			wantAllowed: true, wantVerdict: VerdictUnreadable,
		},
		"When the pod cannot be read and the gate fails closed, the eviction is denied.": {
			req: func(*testing.T) *review.Request { return eviction(agent, "node-a", "on-b") }, pods: pods{err: errors.New("timeout")},
			opts: Options{DenyOnError: true}, wantVerdict: VerdictDeniedUnread, wantMessage: "timeout",
		},
		"A token bound to the agent's Node object, not to a pod, may not evict.": {
			req: func(*testing.T) *review.Request { return nodeBoundEviction("node-a", "on-a") }, pods: cluster,
			wantVerdict: VerdictUnbound, wantMessage: ExtraPodName,
		},
		"A pod the cache holds on the agent's node is evicted without an API read.": {
			req:     func(*testing.T) *review.Request { return eviction(agent, "node-a", "on-a") },
			locator: located{"apps/on-a": "node-a"}, pods: pods{err: errors.New("must not read")},
			wantAllowed: true, wantVerdict: VerdictOwnNode,
		},
		"A pod the cache holds on another marked node is refused without an API read.": {
			req:     func(*testing.T) *review.Request { return eviction(agent, "node-a", "on-b") },
			locator: located{"apps/on-b": "node-b"}, pods: pods{err: errors.New("must not read")},
			wantVerdict: VerdictOtherNode, wantMessage: "on node node-b",
		},
		"A pod the cache does not hold is read through the API and refused there.": {
			req:     func(*testing.T) *review.Request { return eviction(agent, "node-a", "on-b") },
			locator: located{}, pods: cluster, wantVerdict: VerdictOtherNode, wantMessage: "on node node-b",
		},
		"Other users' evictions are not this gate's business.": {
			req: func(*testing.T) *review.Request { return eviction("admin", "", "on-b") }, pods: cluster, wantAllowed: true, wantVerdict: VerdictNotOurs,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			opts := tc.opts
			opts.Username = agent
			got := New(opts, tc.locator, tc.pods, nil).Admit(context.Background(), tc.req(t))
			if got.Allowed != tc.wantAllowed || got.Verdict != tc.wantVerdict || !strings.Contains(got.Message, tc.wantMessage) {
				t.Fatalf("got allowed=%v verdict=%q message=%q", got.Allowed, got.Verdict, got.Message)
			}
		})
	}
}
