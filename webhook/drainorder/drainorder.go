// Package drainorder stamps every new pod with its default drain order
// (nodemark.AnnotationDefaultDrainOrder), computed by nodemark.DefaultDrainOrder.
// The stamp makes the order visible (kubectl get pod -o yaml) and shows
// owners what they would override; the agent ignores it and recomputes the
// default from the live pod, so a toleration added after creation still
// counts. An owner's own termgate.dev/drain-order is kept when valid and
// refused with the parser's message when not.
//
// The gate adds no toleration to DaemonSet pods. DaemonSet pods are system
// wave already (evicted last), and a toleration of the termination taint
// would turn them into wave keep, so they would never be drained and a node
// agent's shutdown would race the VM's stop. Keeping new DaemonSet pods off a
// node that is going away is the right outcome too.
package drainorder

import (
	"context"
	"encoding/json"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook/review"
)

// Name labels the gate in metrics and logs.
const Name = "drain-order"

// Verdicts, the metric label values this gate uses.
const (
	VerdictStamped  = "stamped"
	VerdictKept     = "kept"
	VerdictMirror   = "allowed-mirror"
	VerdictNotPod   = "allowed-not-pod-create"
	VerdictRejected = "denied-invalid-order"
	VerdictInvalid  = "invalid"
)

// Gate is the drain-order stamping gate.
type Gate struct {
	effect corev1.TaintEffect
}

var _ review.Gate = (*Gate)(nil)

// New returns the gate. effect is the termination taint's effect; it decides
// which tolerations make a pod keep or delayed.
func New(effect corev1.TaintEffect) *Gate { return &Gate{effect: effect} }

// Name implements review.Gate.
func (g *Gate) Name() string { return Name }

var _ review.APICaller = (*Gate)(nil)

// CallsAPI implements review.APICaller: stamping reads only the review, so
// the handler need not give it a deadline.
func (g *Gate) CallsAPI() bool { return false }

// Admit implements review.Gate.
func (g *Gate) Admit(_ context.Context, req *review.Request) review.Response {
	if req.Operation != review.OperationCreate || req.SubResource != "" {
		return review.Allow(VerdictNotPod)
	}
	pod, err := review.DecodePod(req.Object, req.Namespace)
	if err != nil {
		return review.Invalid(VerdictInvalid, err.Error())
	}
	if nodemark.IsMirrorPod(pod) {
		// The kubelet owns mirror pods and they are never evicted.
		return review.Allow(VerdictMirror)
	}
	if v, ok := pod.Annotations[nodemark.AnnotationDrainOrder]; ok {
		if _, err := nodemark.ParseDrainOrder(v); err != nil {
			return review.Invalid(VerdictRejected, "annotation "+nodemark.AnnotationDrainOrder+": "+err.Error())
		}
		return review.Allow(VerdictKept)
	}
	order := nodemark.DefaultDrainOrder(pod, g.effect).String()
	resp := review.Allow(VerdictStamped)
	resp.Patch = patch(pod.Annotations == nil, order)
	return resp
}

type operation struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// patch adds the annotation; when the pod has no annotations map the map
// itself must be added, since a JSON patch cannot create parents.
func patch(noAnnotations bool, order string) []byte {
	op := operation{Op: "add", Path: "/metadata/annotations/" + escape(nodemark.AnnotationDefaultDrainOrder), Value: order}
	if noAnnotations {
		op = operation{Op: "add", Path: "/metadata/annotations", Value: map[string]string{nodemark.AnnotationDefaultDrainOrder: order}}
	}
	b, _ := json.Marshal([]operation{op}) // strings and a string map always marshal
	return b
}

// escape encodes a JSON pointer token (RFC 6901).
func escape(token string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(token)
}
