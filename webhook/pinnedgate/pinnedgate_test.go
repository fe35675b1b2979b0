package pinnedgate

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

var deadline = time.Date(2026, 5, 1, 12, 0, 30, 0, time.UTC)

func testNodes() *nodecache.Cache {
	store := nodecache.NewStore()
	_ = store.Add(nodecache.NodeMeta("healthy", nil))
	_ = store.Add(nodecache.NodeMeta("dying", nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonHostMaintenance,
		NoticeTime: deadline.Add(-time.Minute), Deadline: deadline, BootID: "b"}.Annotations()))
	return nodecache.NewFromStore(store)
}

// tenant is an ordinary user allowed to create pods.
const tenant = "system:serviceaccount:team:deployer"

func podCreate(t *testing.T, mutate func(p *corev1.Pod)) *review.Request {
	t.Helper()
	return podCreateBy(t, tenant, mutate)
}

func podCreateBy(t *testing.T, username string, mutate func(p *corev1.Pod)) *review.Request {
	t.Helper()
	p := &corev1.Pod{}
	p.Name = "static"
	p.Spec.Containers = []corev1.Container{{Name: "c", Image: "i"}}
	mutate(p)
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return &review.Request{UID: "u", Namespace: "ns", Operation: review.OperationCreate, Object: raw, UserInfo: review.UserInfo{Username: username}}
}

func mirrorOn(node string) func(p *corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.NodeName = node
		p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "hash"}
	}
}

func TestPinnedGate(t *testing.T) {
	tests := map[string]struct {
		mutate      func(p *corev1.Pod)
		wantAllowed bool
		wantVerdict string
		wantMessage []string
	}{
		"A pod pinned to a terminating node is denied, naming node, reason and deadline.": {
			mutate:      func(p *corev1.Pod) { p.Spec.NodeName = "dying" },
			wantVerdict: VerdictDenied, wantMessage: []string{"node dying", "HostMaintenance", "2026-05-01T12:00:30Z"},
		},
		"A pod pinned to a healthy node is allowed.": {
			mutate: func(p *corev1.Pod) { p.Spec.NodeName = "healthy" }, wantAllowed: true, wantVerdict: VerdictNotTerminating,
		},
		"A pod pinned to a node the cache does not know is allowed (fail open).": {
			mutate: func(p *corev1.Pod) { p.Spec.NodeName = "new" }, wantAllowed: true, wantVerdict: VerdictUnknownNode,
		},
		"A tenant's mirror-annotated pod on a terminating node is denied like any pinned pod.": {
			mutate:      mirrorOn("dying"),
			wantVerdict: VerdictDenied, wantMessage: []string{"node dying", "HostMaintenance", "2026-05-01T12:00:30Z"},
		},
		"A tenant's mirror-annotated pod on a healthy node is allowed.": {
			mutate: mirrorOn("healthy"), wantAllowed: true, wantVerdict: VerdictNotTerminating,
		},
		"A pinned pod tolerating the termination taint is allowed onto a terminating node.": {
			mutate: func(p *corev1.Pod) {
				p.Spec.NodeName = "dying"
				p.Spec.Tolerations = []corev1.Toleration{{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists}}
			},
			wantAllowed: true, wantVerdict: VerdictTolerates,
		},
		"A drain-order annotation is not a toleration: the pinned pod is still denied.": {
			mutate: func(p *corev1.Pod) {
				p.Spec.NodeName = "dying"
				p.Annotations = map[string]string{nodemark.AnnotationDrainOrder: "keep"}
			},
			wantVerdict: VerdictDenied,
		},
		"A pod without a node name is not this gate's business.": {
			mutate: func(*corev1.Pod) {}, wantAllowed: true, wantVerdict: VerdictNotPinned,
		},
	}
	g := New(testNodes(), Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := g.Admit(context.Background(), podCreate(t, tc.mutate))
			if got.Allowed != tc.wantAllowed || got.Verdict != tc.wantVerdict {
				t.Fatalf("got allowed=%v verdict=%q message=%q", got.Allowed, got.Verdict, got.Message)
			}
			for _, w := range tc.wantMessage {
				if !strings.Contains(got.Message, w) {
					t.Errorf("message %q does not mention %q", got.Message, w)
				}
			}
		})
	}
}

func TestOnlyTheNodeItselfBringsAMirrorPodOntoATerminatingNode(t *testing.T) {
	tests := map[string]struct {
		username    string
		wantAllowed bool
		wantVerdict string
	}{
		"The terminating node's own kubelet creates its mirror pod.": {
			username: "system:node:dying", wantAllowed: true, wantVerdict: VerdictMirror,
		},
		"Another node's kubelet is refused.":                             {username: "system:node:healthy", wantVerdict: VerdictDenied},
		"A node name that only starts like the pod's node is refused.":   {username: "system:node:dyin", wantVerdict: VerdictDenied},
		"A node name that only ends like the pod's node is refused.":     {username: "system:node:dying-2", wantVerdict: VerdictDenied},
		"A user named like the node without the node prefix is refused.": {username: "dying", wantVerdict: VerdictDenied},
		"An admin is refused like any tenant.":                           {username: "kubernetes-admin", wantVerdict: VerdictDenied},
		"A request without a user is refused.":                           {username: "", wantVerdict: VerdictDenied},
	}
	g := New(testNodes(), Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	denial := g.Admit(context.Background(), podCreate(t, func(p *corev1.Pod) { p.Spec.NodeName = "dying" }))
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := g.Admit(context.Background(), podCreateBy(t, tc.username, mirrorOn("dying")))
			if got.Allowed != tc.wantAllowed || got.Verdict != tc.wantVerdict {
				t.Fatalf("got allowed=%v verdict=%q message=%q", got.Allowed, got.Verdict, got.Message)
			}
			// A refused mirror pod reads exactly like any refused pinned pod:
			// the annotation neither helps nor shows in the answer.
			if !got.Allowed && (got.Message != denial.Message || got.Code != denial.Code) {
				t.Errorf("mirror pod refused with %d %q, a pinned pod with %d %q", got.Code, got.Message, denial.Code, denial.Message)
			}
		})
	}
}

func TestMalformedPodIsRefusedAsInvalid(t *testing.T) {
	g := New(testNodes(), Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	got := g.Admit(context.Background(), &review.Request{UID: "u", Operation: review.OperationCreate, Object: []byte(`{"spec":{"nodeName":5}}`)})
	if got.Allowed || got.Code != 400 || got.Verdict != VerdictInvalid {
		t.Fatalf("got %+v", got)
	}
}

// unconfirmedNodes answers every lookup as a node whose fresh read failed.
type unconfirmedNodes struct{}

func (unconfirmedNodes) Lookup(context.Context, string) (nodecache.Node, bool) {
	return nodecache.Node{Unconfirmed: true}, true
}

func TestAPodOntoANodeThatCouldNotBeConfirmedIsAllowedAndCountedApart(t *testing.T) {
	g := New(unconfirmedNodes{}, Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	got := g.Admit(context.Background(), podCreate(t, func(p *corev1.Pod) { p.Spec.NodeName = "spot" }))
	if !got.Allowed || got.Verdict != VerdictUnconfirmed {
		t.Fatalf("got allowed=%v verdict=%q, want allowed with %q", got.Allowed, got.Verdict, VerdictUnconfirmed)
	}
}

func TestAPodOntoANodeThatCouldNotBeConfirmedIsRefusedWhenSoConfigured(t *testing.T) {
	g := New(unconfirmedNodes{}, Options{TaintEffect: corev1.TaintEffectNoSchedule, RefuseUnconfirmed: true}, nil)
	got := g.Admit(context.Background(), podCreate(t, func(p *corev1.Pod) { p.Spec.NodeName = "spot" }))
	if got.Allowed || got.Verdict != VerdictRefusedUnconf {
		t.Fatalf("got allowed=%v verdict=%q, want a refusal with %q", got.Allowed, got.Verdict, VerdictRefusedUnconf)
	}
}

// rereadRecorder records whether each lookup was allowed to re-read.
type rereadRecorder struct{ reread []bool }

func (r *rereadRecorder) Lookup(ctx context.Context, _ string) (nodecache.Node, bool) {
	r.reread = append(r.reread, nodecache.RereadAllowed(ctx))
	return nodecache.Node{}, true
}

// A tenant may create pinned pods with --dry-run=server by the thousand:
// they change nothing and must not spend the node re-reads of real ones.
func TestADryRunPinnedPodNeverRereadsItsNode(t *testing.T) {
	rec := &rereadRecorder{}
	g := New(rec, Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	pinned := func(p *corev1.Pod) { p.Spec.NodeName = "spot" }
	real, dry := podCreate(t, pinned), podCreate(t, pinned)
	dry.DryRun = true
	g.Admit(context.Background(), real)
	g.Admit(context.Background(), dry)
	if len(rec.reread) != 2 || !rec.reread[0] || rec.reread[1] {
		t.Fatalf("re-read allowed %v for a real then a dry-run pinned pod, want [true false]", rec.reread)
	}
}
