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

func podCreate(t *testing.T, mutate func(p *corev1.Pod)) *review.Request {
	t.Helper()
	p := &corev1.Pod{}
	p.Name = "static"
	p.Spec.Containers = []corev1.Container{{Name: "c", Image: "i"}}
	mutate(p)
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return &review.Request{UID: "u", Namespace: "ns", Operation: review.OperationCreate, Object: raw}
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
		"A mirror pod on a terminating node is allowed.": {
			mutate: func(p *corev1.Pod) {
				p.Spec.NodeName = "dying"
				p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "hash"}
			},
			wantAllowed: true, wantVerdict: VerdictMirror,
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
	g := New(testNodes(), corev1.TaintEffectNoSchedule, nil)
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

func TestMalformedPodIsRefusedAsInvalid(t *testing.T) {
	g := New(testNodes(), corev1.TaintEffectNoSchedule, nil)
	got := g.Admit(context.Background(), &review.Request{UID: "u", Operation: review.OperationCreate, Object: []byte(`{"spec":{"nodeName":5}}`)})
	if got.Allowed || got.Code != 400 || got.Verdict != VerdictInvalid {
		t.Fatalf("got %+v", got)
	}
}
