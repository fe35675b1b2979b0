// Package pinnedgate refuses pods created with spec.nodeName already set
// onto a terminating node. Such pods skip the scheduler and the bind, and the
// kubelet only rejects untolerated NoExecute taints, so without this gate a
// controller that pins pods (or a user) could keep landing work on a node
// that is about to vanish. The registration's matchConditions send only
// pinned pods here; every other pod creation never calls the webhook.
//
// A mirror pod (annotation kubernetes.io/config.mirror) is the API copy of a
// static pod its kubelet already runs, so only the node itself may bring one
// past the gate. Any user allowed to create pods can set the annotation; a
// tenant's "mirror" pod is a pinned pod like any other.
package pinnedgate

import (
	"context"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

// Name labels the gate in metrics and logs.
const Name = "pinned-pod"

// Verdicts, the metric label values this gate uses.
const (
	VerdictNotPinned      = "allowed-not-pinned"
	VerdictMirror         = "allowed-mirror"
	VerdictNotTerminating = review.VerdictNotTerminating
	VerdictUnconfirmed    = review.VerdictUnconfirmed
	VerdictRefusedUnconf  = review.VerdictRefusedUnconf
	VerdictUnknownNode    = review.VerdictUnknownNode
	VerdictTolerates      = "allowed-tolerates"
	VerdictDenied         = "denied"
	VerdictInvalid        = "invalid"
)

// Options configure the gate.
type Options struct {
	// TaintEffect is the termination taint's effect, which decides which
	// tolerations count.
	TaintEffect corev1.TaintEffect
	// RefuseUnconfirmed refuses a pinned pod onto a node whose fresh read
	// failed, instead of allowing it on the cache's word.
	RefuseUnconfirmed bool
}

// Gate is the pinned-pod gate.
type Gate struct {
	nodes review.NodeCheck
	opts  Options
}

var _ review.Gate = (*Gate)(nil)

// New returns the gate; metrics may be nil.
func New(nodes nodecache.Lookup, opts Options, metrics *review.GateMetrics) *Gate {
	check := review.NodeCheck{Nodes: nodes, RefuseUnconfirmed: opts.RefuseUnconfirmed, Metrics: metrics}
	return &Gate{nodes: check, opts: opts}
}

// Name implements review.Gate.
func (g *Gate) Name() string { return Name }

// Admit implements review.Gate.
func (g *Gate) Admit(ctx context.Context, req *review.Request) review.Response {
	if req.Operation != review.OperationCreate || req.SubResource != "" {
		return review.Allow(VerdictNotPinned)
	}
	pod, err := review.DecodePod(req.Object, req.Namespace)
	if err != nil {
		return review.Invalid(VerdictInvalid, err.Error())
	}
	if pod.Spec.NodeName == "" {
		return review.Allow(VerdictNotPinned)
	}
	// Mirror pods stand for static pods the kubelet already runs; refusing
	// them hides those pods without stopping them. Only the node's own
	// identity creates real ones (NodeRestriction lets a node create mirror
	// pods of itself only).
	if nodemark.IsMirrorPod(pod) && isNodeItself(req.UserInfo.Username, pod.Spec.NodeName) {
		return review.Allow(VerdictMirror)
	}
	node, resp, decided := g.nodes.Check(ctx, pod.Spec.NodeName, req.DryRun, "create the pod again")
	if decided {
		return resp
	}
	if nodemark.Tolerates(pod, g.opts.TaintEffect) {
		return review.Allow(VerdictTolerates)
	}
	return review.Deny(VerdictDenied, nodemark.Refusal(pod.Spec.NodeName, node.Mark, g.opts.TaintEffect))
}

// nodeUserPrefix starts the user name of a kubelet's node credentials; the
// Node authorizer and the NodeRestriction admission plugin identify nodes by
// it.
const nodeUserPrefix = "system:node:"

// isNodeItself reports whether username is node's own identity.
func isNodeItself(username, node string) bool {
	name, ok := strings.CutPrefix(username, nodeUserPrefix)
	return ok && name != "" && name == node
}
