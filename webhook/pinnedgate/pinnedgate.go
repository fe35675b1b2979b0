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
	VerdictNotTerminating = "allowed-not-terminating"
	VerdictUnconfirmed    = "allowed-unconfirmed"
	VerdictUnknownNode    = "allowed-unknown-node"
	VerdictTolerates      = "allowed-tolerates"
	VerdictDenied         = "denied"
	VerdictInvalid        = "invalid"
)

// Gate is the pinned-pod gate.
type Gate struct {
	nodes   nodecache.Lookup
	effect  corev1.TaintEffect
	metrics *review.GateMetrics
}

var _ review.Gate = (*Gate)(nil)

// New returns the gate; metrics may be nil.
func New(nodes nodecache.Lookup, effect corev1.TaintEffect, metrics *review.GateMetrics) *Gate {
	return &Gate{nodes: nodes, effect: effect, metrics: metrics}
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
	node, known := g.nodes.Lookup(ctx, pod.Spec.NodeName)
	if !known {
		g.metrics.CacheMiss()
		return review.Allow(VerdictUnknownNode)
	}
	if !node.Terminating() {
		if node.Unconfirmed {
			// A Spot node whose fresh read failed: the cache's answer
			// stands, counted apart because it may be behind.
			return review.Allow(VerdictUnconfirmed)
		}
		return review.Allow(VerdictNotTerminating)
	}
	if nodemark.Tolerates(pod, g.effect) {
		return review.Allow(VerdictTolerates)
	}
	return review.Deny(VerdictDenied, nodemark.Refusal(pod.Spec.NodeName, node.Mark, g.effect))
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
