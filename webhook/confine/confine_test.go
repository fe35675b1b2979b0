package confine

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/webhook/nodepods"
	"termgate.dev/termgate/webhook/review"
)

const agent = "system:serviceaccount:termgate-agent:termgate-agent"

// marks holds which nodes are terminating, or fails.
type marks struct {
	terminating map[string]bool
	err         error
	asked       []string
}

func (m *marks) Terminating(_ context.Context, node string) (bool, error) {
	m.asked = append(m.asked, node)
	return m.terminating[node], m.err
}

// placed is a PodLocator over where pods run: namespace/name -> node and
// UID.
type placed struct {
	pods map[string]struct {
		node string
		uid  types.UID
	}
	err  error
	read bool // answers come from a read
}

func (p placed) Locate(_ context.Context, node, namespace, name string, uid types.UID) (nodepods.Located, error) {
	if p.err != nil {
		return nodepods.Located{Read: p.read}, p.err
	}
	at, ok := p.pods[namespace+"/"+name]
	switch {
	case !ok || at.node != node:
		return nodepods.Located{Placement: nodepods.NotOnNode, Read: p.read}, nil
	case at.uid != uid:
		return nodepods.Located{Placement: nodepods.OtherUID, Read: p.read}, nil
	}
	return nodepods.Located{Placement: nodepods.OnNode, Read: p.read}, nil
}

func cluster() placed {
	p := placed{pods: map[string]struct {
		node string
		uid  types.UID
	}{}}
	for name, node := range map[string]string{"on-a": "node-a", "on-b": "node-b"} {
		p.pods["apps/"+name] = struct {
			node string
			uid  types.UID
		}{node, types.UID("uid-" + name)}
	}
	return p
}

func agentUser(tokenNode string) review.UserInfo {
	u := review.UserInfo{Username: agent}
	if tokenNode != "" {
		u.Extra = map[string][]string{ExtraNodeName: {tokenNode}, ExtraPodName: {"termgate-agent-" + tokenNode}}
	}
	return u
}

// eviction is an eviction of pod by user with a UID precondition (none if
// uid is empty).
func eviction(user review.UserInfo, pod, uid string) *review.Request {
	body := `{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"` + pod + `"}}`
	if uid != "" {
		body = `{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"` + pod + `"},"deleteOptions":{"preconditions":{"uid":"` + uid + `"}}}`
	}
	return &review.Request{UID: "u", Name: pod, Namespace: "apps", Operation: review.OperationCreate, SubResource: "eviction",
		UserInfo: user, Object: []byte(body)}
}

func dryRun(r *review.Request) *review.Request { r.DryRun = true; return r }

func podOn(name, node string) *corev1.Pod {
	p := &corev1.Pod{}
	p.Name, p.Namespace, p.Spec.NodeName = name, "apps", node
	return p
}

func deletion(t *testing.T, tokenNode string, pod *corev1.Pod) *review.Request {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &review.Request{UID: "u", Name: pod.Name, Namespace: "apps", Operation: review.OperationDelete,
		UserInfo: agentUser(tokenNode), OldObject: raw}
}

func TestConfine(t *testing.T) {
	draining := func() *marks { return &marks{terminating: map[string]bool{"node-a": true, "node-b": true}} }
	nodeBound := review.UserInfo{Username: agent, Extra: map[string][]string{ExtraNodeName: {"node-a"}, "authentication.kubernetes.io/node-uid": {"1234"}}}
	tests := map[string]struct {
		req         func(t *testing.T) *review.Request
		marks       *marks
		pods        PodLocator
		wantAllowed bool
		wantVerdict string
		wantMessage string
	}{
		"The agent on a draining node A evicts its pod on node A.": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "on-a", "uid-on-a") },
			marks: draining(), pods: cluster(), wantAllowed: true, wantVerdict: VerdictOwnNode,
		},
		"The agent on node A may not evict a pod on node B.": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "on-b", "uid-on-b") },
			marks: draining(), pods: cluster(), wantVerdict: VerdictOtherNode, wantMessage: "may not evict pod apps/on-b: it does not run on that node",
		},
		"The agent may not evict a pod that does not exist, or is not scheduled.": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "made-up", "uid-x") },
			marks: draining(), pods: cluster(), wantVerdict: VerdictOtherNode,
		},
		"An eviction naming another UID than the pod's on the node is refused: that pod is gone.": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "on-a", "uid-of-an-older-pod") },
			marks: draining(), pods: cluster(), wantVerdict: VerdictOtherUID, wantMessage: "another UID",
		},
		"An eviction without a UID precondition is refused, even on the agent's own node.": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "on-a", "") },
			marks: draining(), pods: cluster(), wantVerdict: VerdictNoUID, wantMessage: "preconditions.uid",
		},
		"The agent may not evict while its node is not marked terminating.": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "on-a", "uid-on-a") },
			marks: &marks{}, pods: cluster(), wantVerdict: VerdictNotDraining, wantMessage: "node node-a is not marked terminating",
		},
		"A dry-run eviction on the agent's own node is allowed without a mark (the agent's --dry-run mode).": {
			req:   func(*testing.T) *review.Request { return dryRun(eviction(agentUser("node-a"), "on-a", "uid-on-a")) },
			marks: &marks{err: errors.New("must not be asked")}, pods: cluster(), wantAllowed: true, wantVerdict: VerdictOwnNode,
		},
		"A dry-run eviction of a pod on another node is refused like any other.": {
			req:   func(*testing.T) *review.Request { return dryRun(eviction(agentUser("node-a"), "on-b", "uid-on-b")) },
			marks: draining(), pods: cluster(), wantVerdict: VerdictOtherNode,
		},
		"When the node's mark cannot be read the eviction is refused (fail closed).": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "on-a", "uid-on-a") },
			marks: &marks{err: errors.New("timeout")}, pods: cluster(), wantVerdict: VerdictUnchecked, wantMessage: "timeout",
		},
		"When the pod's place cannot be read the eviction is refused (fail closed).": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser("node-a"), "on-a", "uid-on-a") },
			marks: draining(), pods: placed{err: nodepods.ErrBudget, read: true}, wantVerdict: VerdictUnchecked, wantMessage: "budget",
		},
		"An agent token not bound to a pod may not evict at all.": {
			req:   func(*testing.T) *review.Request { return eviction(agentUser(""), "on-a", "uid-on-a") },
			marks: draining(), pods: cluster(), wantVerdict: VerdictUnbound, wantMessage: ExtraNodeName,
		},
		"A token bound to the agent's Node object, not to a pod, may not evict.": {
			req:   func(*testing.T) *review.Request { return eviction(nodeBound, "on-a", "uid-on-a") },
			marks: draining(), pods: cluster(), wantVerdict: VerdictUnbound, wantMessage: ExtraPodName,
		},
		"A malformed Eviction is rejected as invalid.": {
			req: func(*testing.T) *review.Request {
				r := eviction(agentUser("node-a"), "on-a", "")
				r.Object = []byte(`{"deleteOptions":`)
				return r
			},
			marks: draining(), pods: cluster(), wantVerdict: VerdictInvalid,
		},
		"A delete (sent by an older registration) of a pod on the agent's node is allowed from the old object.": {
			req:   func(t *testing.T) *review.Request { return deletion(t, "node-a", podOn("x", "node-a")) },
			marks: &marks{err: errors.New("must not be asked")}, pods: placed{err: errors.New("must not read")},
			wantAllowed: true, wantVerdict: VerdictOwnNode,
		},
		"A delete of a pod on node B by the agent on node A is refused.": {
			req:   func(t *testing.T) *review.Request { return deletion(t, "node-a", podOn("x", "node-b")) },
			marks: draining(), pods: cluster(), wantVerdict: VerdictOtherNode,
		},
		"Other users' evictions are not this gate's business.": {
			req: func(*testing.T) *review.Request {
				return eviction(review.UserInfo{Username: "admin"}, "on-b", "")
			},
			marks: &marks{}, pods: cluster(), wantAllowed: true, wantVerdict: VerdictNotOurs,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := New(Options{Username: agent}, tc.marks, tc.pods, nil).Admit(context.Background(), tc.req(t))
			if got.Allowed != tc.wantAllowed || got.Verdict != tc.wantVerdict || !strings.Contains(got.Message, tc.wantMessage) {
				t.Fatalf("got allowed=%v verdict=%q message=%q", got.Allowed, got.Verdict, got.Message)
			}
		})
	}
}
