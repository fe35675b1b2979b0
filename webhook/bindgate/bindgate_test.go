package bindgate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

var deadline = time.Date(2026, 5, 1, 12, 0, 30, 0, time.UTC)

func terminating() map[string]string {
	return nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: deadline.Add(-30 * time.Second), Deadline: deadline, BootID: "b1"}.Annotations()
}

func advance() map[string]string {
	m := terminating()
	m[nodemark.AnnotationState] = string(nodemark.StateAdvance)
	return m
}

func newNodes(nodes ...*nodecacheNode) *nodecache.Cache {
	store := nodecache.NewStore()
	for _, n := range nodes {
		_ = store.Add(nodecache.NodeMeta(n.name, n.annotations))
	}
	return nodecache.NewFromStore(store)
}

type nodecacheNode struct {
	name        string
	annotations map[string]string
}

// pods answers GetPod from a map, or fails the test when it must not be
// called at all.
type pods struct {
	t      *testing.T
	byName map[string]*corev1.Pod
	err    error
	forbid bool
	calls  int
}

func (p *pods) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.calls++
	if p.forbid {
		p.t.Fatalf("pod %s/%s read on the fast path", namespace, name)
	}
	if p.err != nil {
		return nil, p.err
	}
	pod, ok := p.byName[namespace+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
	}
	return pod, nil
}

func bindRequest(pod, node string) *review.Request {
	return &review.Request{
		UID: "u", Name: pod, Namespace: "ns", Operation: review.OperationCreate, SubResource: "binding",
		Object: []byte(`{"apiVersion":"v1","kind":"Binding","metadata":{"name":"` + pod + `"},"target":{"kind":"Node","name":"` + node + `"}}`),
	}
}

func pod(name string, tolerations ...corev1.Toleration) *corev1.Pod {
	p := &corev1.Pod{}
	p.Name, p.Namespace = name, "ns"
	p.Spec.Tolerations = tolerations
	return p
}

func TestBindGate(t *testing.T) {
	nodes := newNodes(
		&nodecacheNode{name: "healthy"},
		&nodecacheNode{name: "maintenance-soon", annotations: advance()},
		&nodecacheNode{name: "dying", annotations: terminating()},
	)
	tolerateAll := corev1.Toleration{Operator: corev1.TolerationOpExists}
	tolerateTaint := corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	tolerateFor10s := corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, TolerationSeconds: ptr.To[int64](10)}
	tolerateOtherKey := corev1.Toleration{Key: "example.com/other", Operator: corev1.TolerationOpExists}
	tolerateEviction := corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](20)}
	tests := map[string]struct {
		req         *review.Request
		pods        *pods
		wantAllowed bool
		wantVerdict string
		wantMessage []string
	}{
		"A bind onto a node that is not marked is allowed without reading the pod.": {
			req: bindRequest("web", "healthy"), pods: &pods{forbid: true}, wantAllowed: true, wantVerdict: VerdictNotTerminating,
		},
		"A bind onto a node with only upcoming maintenance is allowed without reading the pod.": {
			req: bindRequest("web", "maintenance-soon"), pods: &pods{forbid: true}, wantAllowed: true, wantVerdict: VerdictNotTerminating,
		},
		"A bind onto a node the cache does not know is allowed (fail open).": {
			req: bindRequest("web", "brand-new"), pods: &pods{forbid: true}, wantAllowed: true, wantVerdict: VerdictUnknownNode,
		},
		"A bind of a pod that does not tolerate the taint onto a terminating node is denied, naming node, reason and deadline.": {
			req: bindRequest("web", "dying"), pods: &pods{byName: map[string]*corev1.Pod{"ns/web": pod("web")}},
			wantVerdict: VerdictDenied, wantMessage: []string{"node dying", "Preempted", "2026-05-01T12:00:30Z", nodemark.TaintKey},
		},
		"A pod tolerating only another taint is still denied.": {
			req: bindRequest("web", "dying"), pods: &pods{byName: map[string]*corev1.Pod{"ns/web": pod("web", tolerateOtherKey)}},
			wantVerdict: VerdictDenied,
		},
		"A pod tolerating the termination taint for eviction (NoExecute, tolerationSeconds) binds onto a terminating node.": {
			req: bindRequest("late", "dying"), pods: &pods{byName: map[string]*corev1.Pod{"ns/late": pod("late", tolerateEviction)}},
			wantAllowed: true, wantVerdict: VerdictTolerates,
		},
		"A pod tolerating every taint binds onto a terminating node.": {
			req: bindRequest("agent", "dying"), pods: &pods{byName: map[string]*corev1.Pod{"ns/agent": pod("agent", tolerateAll)}},
			wantAllowed: true, wantVerdict: VerdictTolerates,
		},
		"A pod tolerating the termination taint binds onto a terminating node.": {
			req: bindRequest("keep", "dying"), pods: &pods{byName: map[string]*corev1.Pod{"ns/keep": pod("keep", tolerateTaint)}},
			wantAllowed: true, wantVerdict: VerdictTolerates,
		},
		"A pod tolerating the taint for a while (delayed wave) binds onto a terminating node.": {
			req: bindRequest("late", "dying"), pods: &pods{byName: map[string]*corev1.Pod{"ns/late": pod("late", tolerateFor10s)}},
			wantAllowed: true, wantVerdict: VerdictTolerates,
		},
		"A bind of a pod that no longer exists is allowed: the bind fails on its own.": {
			req: bindRequest("gone", "dying"), pods: &pods{}, wantAllowed: true, wantVerdict: VerdictPodGone,
		},
		"When the pod cannot be read, a bind onto a terminating node is denied and says why.": {
			req: bindRequest("web", "dying"), pods: &pods{err: errors.New("connection refused")},
			wantVerdict: VerdictPodUnreadable, wantMessage: []string{"node dying", "connection refused"},
		},
		"A binding without a target is refused as invalid.": {
			req:  &review.Request{UID: "u", Operation: review.OperationCreate, SubResource: "binding", Object: []byte(`{"target":{}}`)},
			pods: &pods{forbid: true}, wantVerdict: VerdictInvalid,
		},
		"A binding whose target is not a Node is refused as invalid.": {
			req:  &review.Request{UID: "u", Operation: review.OperationCreate, SubResource: "binding", Object: []byte(`{"target":{"kind":"Pod","name":"x"}}`)},
			pods: &pods{forbid: true}, wantVerdict: VerdictInvalid,
		},
		"A request that is not a bind is allowed untouched.": {
			req: &review.Request{UID: "u", Operation: review.OperationCreate, Object: []byte(`{}`)}, pods: &pods{forbid: true},
			wantAllowed: true, wantVerdict: VerdictNotBinding,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.pods.t = t
			g := New(nodes, tc.pods, Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
			got := g.Admit(context.Background(), tc.req)
			if got.Allowed != tc.wantAllowed || got.Verdict != tc.wantVerdict {
				t.Fatalf("got allowed=%v verdict=%q message=%q, want allowed=%v verdict=%q", got.Allowed, got.Verdict, got.Message, tc.wantAllowed, tc.wantVerdict)
			}
			for _, w := range tc.wantMessage {
				if !strings.Contains(got.Message, w) {
					t.Errorf("message %q does not mention %q", got.Message, w)
				}
			}
		})
	}
}

// unconfirmedNodes answers every lookup as a node whose fresh read failed.
type unconfirmedNodes struct{}

func (unconfirmedNodes) Lookup(context.Context, string) (nodecache.Node, bool) {
	return nodecache.Node{Unconfirmed: true}, true
}

func TestABindOntoANodeThatCouldNotBeConfirmedIsAllowedAndCountedApart(t *testing.T) {
	g := New(unconfirmedNodes{}, &pods{t: t, forbid: true}, Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	got := g.Admit(context.Background(), bindRequest("web", "spot"))
	if !got.Allowed || got.Verdict != VerdictUnconfirmed {
		t.Fatalf("got allowed=%v verdict=%q, want allowed with %q", got.Allowed, got.Verdict, VerdictUnconfirmed)
	}
}

func TestABindOntoANodeThatCouldNotBeConfirmedIsRefusedWhenSoConfigured(t *testing.T) {
	g := New(unconfirmedNodes{}, &pods{t: t, forbid: true}, Options{TaintEffect: corev1.TaintEffectNoSchedule, RefuseUnconfirmed: true}, nil)
	got := g.Admit(context.Background(), bindRequest("web", "spot"))
	if got.Allowed || got.Verdict != VerdictRefusedUnconf || !strings.Contains(got.Message, "could not be checked") {
		t.Fatalf("got allowed=%v verdict=%q message=%q, want a refusal with %q", got.Allowed, got.Verdict, got.Message, VerdictRefusedUnconf)
	}
}

// rereadRecorder records whether each lookup was allowed to re-read.
type rereadRecorder struct{ reread []bool }

func (r *rereadRecorder) Lookup(ctx context.Context, _ string) (nodecache.Node, bool) {
	r.reread = append(r.reread, nodecache.RereadAllowed(ctx))
	return nodecache.Node{}, true
}

func TestADryRunBindNeverRereadsItsNode(t *testing.T) {
	rec := &rereadRecorder{}
	g := New(rec, &pods{t: t, forbid: true}, Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	real, dry := bindRequest("web", "spot"), bindRequest("web", "spot")
	dry.DryRun = true
	g.Admit(context.Background(), real)
	g.Admit(context.Background(), dry)
	if len(rec.reread) != 2 || !rec.reread[0] || rec.reread[1] {
		t.Fatalf("re-read allowed %v for a real then a dry-run bind, want [true false]", rec.reread)
	}
}
