package app

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/webhook/bindgate"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/pinnedgate"
	"termgate.dev/termgate/webhook/review"
)

// rereadFailed answers every lookup as a Spot node whose fresh read failed
// or timed out: the cache says it is not terminating, unconfirmed.
type rereadFailed struct{}

func (rereadFailed) Lookup(context.Context, string) (nodecache.Node, bool) {
	return nodecache.Node{Unconfirmed: true}, true
}

// unreadPods fails the test if the gate reads the pod: an unconfirmed node
// is decided before the pod's tolerations.
type unreadPods struct{ t *testing.T }

func (p unreadPods) GetPod(context.Context, string, string) (*corev1.Pod, error) {
	p.t.Fatal("the gate read the pod of a bind onto an unconfirmed node")
	return nil, nil
}

func TestABindWhoseNodeCouldNotBeRereadIsRefusedByDefaultAndAllowedWithTheFlagOff(t *testing.T) {
	for name, tc := range map[string]struct {
		args        []string
		wantAllowed bool
		wantVerdict string
	}{
		"By default the bind is refused and the scheduler retries.":          {wantVerdict: bindgate.VerdictRefusedUnconf},
		"With --refuse-unconfirmed=false it is allowed on the cache's word.": {args: []string{"--refuse-unconfirmed=false"}, wantAllowed: true, wantVerdict: bindgate.VerdictUnconfirmed},
	} {
		t.Run(name, func(t *testing.T) {
			o, err := parseWebhookFlags(t, tc.args...)
			if err != nil {
				t.Fatalf("flags %v refused: %v", tc.args, err)
			}
			wo := o.webhookOptions()
			g := bindgate.New(rereadFailed{}, unreadPods{t: t}, bindgate.Options{TaintEffect: wo.TaintEffect, RefuseUnconfirmed: wo.RefuseUnconfirmed}, nil)
			got := g.Admit(context.Background(), &review.Request{
				UID: "u", Name: "web", Namespace: "ns", Operation: review.OperationCreate, SubResource: "binding",
				Object: []byte(`{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web"},"target":{"kind":"Node","name":"spot-1"}}`),
			})
			if got.Allowed != tc.wantAllowed || got.Verdict != tc.wantVerdict {
				t.Fatalf("got allowed=%v verdict=%q, want allowed=%v verdict=%q", got.Allowed, got.Verdict, tc.wantAllowed, tc.wantVerdict)
			}
		})
	}
}

// A refused pinned pod is not retried by anything for its author, so the
// pinned gate keeps allowing on the cache's word unless told otherwise.
func TestAPinnedPodWhoseNodeCouldNotBeRereadIsAllowedByDefaultAndRefusedWithItsFlag(t *testing.T) {
	pinned := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"job","namespace":"ns"},"spec":{"nodeName":"spot-1","containers":[{"name":"c","image":"i"}]}}`)
	for name, tc := range map[string]struct {
		args        []string
		wantAllowed bool
		wantVerdict string
	}{
		"By default the pod is allowed on the cache's word.":      {wantAllowed: true, wantVerdict: pinnedgate.VerdictUnconfirmed},
		"With --refuse-unconfirmed-pinned it is refused.":         {args: []string{"--refuse-unconfirmed-pinned"}, wantVerdict: pinnedgate.VerdictRefusedUnconf},
		"--refuse-unconfirmed alone does not refuse pinned pods.": {args: []string{"--refuse-unconfirmed=true"}, wantAllowed: true, wantVerdict: pinnedgate.VerdictUnconfirmed},
	} {
		t.Run(name, func(t *testing.T) {
			o, err := parseWebhookFlags(t, tc.args...)
			if err != nil {
				t.Fatalf("flags %v refused: %v", tc.args, err)
			}
			wo := o.webhookOptions()
			g := pinnedgate.New(rereadFailed{}, pinnedgate.Options{TaintEffect: wo.TaintEffect, RefuseUnconfirmed: wo.RefuseUnconfirmedPinned}, nil)
			got := g.Admit(context.Background(), &review.Request{UID: "u", Name: "job", Namespace: "ns", Operation: review.OperationCreate, Object: pinned})
			if got.Allowed != tc.wantAllowed || got.Verdict != tc.wantVerdict {
				t.Fatalf("got allowed=%v verdict=%q, want allowed=%v verdict=%q", got.Allowed, got.Verdict, tc.wantAllowed, tc.wantVerdict)
			}
		})
	}
}
