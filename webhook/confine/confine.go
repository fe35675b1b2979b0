// Package confine keeps termgate's agent to its own node: the agent's
// service account may evict or delete only pods that run on the node its
// token is bound to. The API server puts that node in the request's user
// extra (authentication.kubernetes.io/node-name) for tokens bound to a pod.
// The registration's matchConditions call this gate only for the agent's
// account, so nobody else's evictions pay for it.
package confine

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/webhook/review"
)

// Name labels the gate in metrics and logs.
const Name = "agent"

// ExtraNodeName is the user-extra key that carries a bound token's node.
const ExtraNodeName = "authentication.kubernetes.io/node-name"

// Verdicts, the metric label values this gate uses.
const (
	VerdictOwnNode      = "allowed-own-node"
	VerdictPodGone      = "allowed-pod-gone"
	VerdictNotOurs      = "allowed-not-agent-request"
	VerdictUnreadable   = "allowed-pod-unreadable"
	VerdictOtherNode    = "denied-other-node"
	VerdictUnbound      = "denied-unbound-token"
	VerdictDeniedUnread = "denied-pod-unreadable"
	VerdictInvalid      = "invalid"
)

// Options configure the gate.
type Options struct {
	// Username is the agent's service-account user name; requests by anyone
	// else are allowed (the registration should not send them).
	Username string
	// DenyOnError refuses when the pod cannot be read (fail closed). The
	// default allows, so a broken API read never blocks a drain.
	DenyOnError bool
}

// Gate is the agent-confinement gate.
type Gate struct {
	opts    Options
	pods    review.PodGetter
	metrics *review.GateMetrics
}

var _ review.Gate = (*Gate)(nil)

// New returns the gate; metrics may be nil.
func New(opts Options, pods review.PodGetter, metrics *review.GateMetrics) *Gate {
	return &Gate{opts: opts, pods: pods, metrics: metrics}
}

// Name implements review.Gate.
func (g *Gate) Name() string { return Name }

// Admit implements review.Gate.
func (g *Gate) Admit(ctx context.Context, req *review.Request) review.Response {
	if req.UserInfo.Username != g.opts.Username {
		return review.Allow(VerdictNotOurs)
	}
	isEviction := req.Operation == review.OperationCreate && req.SubResource == "eviction"
	isDelete := req.Operation == review.OperationDelete && req.SubResource == ""
	if !isEviction && !isDelete {
		return review.Allow(VerdictNotOurs)
	}
	own := tokenNode(req)
	if own == "" {
		return review.Deny(VerdictUnbound, "the agent's token is not bound to a pod on a node (no "+ExtraNodeName+" in its user info): it may not evict or delete pods")
	}
	podNode, resp, done := g.podNode(ctx, req, isDelete)
	if done {
		return resp
	}
	if podNode != own {
		return review.Deny(VerdictOtherNode, "the agent on node "+own+" may not evict or delete pod "+req.Namespace+"/"+req.Name+" on node "+nodeOrNone(podNode))
	}
	return review.Allow(VerdictOwnNode)
}

// podNode finds the node of the pod the request is about: a DELETE carries
// the pod as oldObject; an eviction names it, so the pod is read.
func (g *Gate) podNode(ctx context.Context, req *review.Request, isDelete bool) (string, review.Response, bool) {
	if isDelete {
		pod, err := review.DecodePod(req.OldObject, req.Namespace)
		if err != nil {
			return "", review.Invalid(VerdictInvalid, err.Error()), true
		}
		return pod.Spec.NodeName, review.Response{}, false
	}
	pod, err := g.pods.GetPod(ctx, req.Namespace, req.Name)
	g.metrics.PodRead(err)
	switch {
	case apierrors.IsNotFound(err):
		return "", review.Allow(VerdictPodGone), true
	case err != nil:
		log.FromContext(ctx).Error(err, "Read pod to confine the agent", "namespace", req.Namespace, "pod", req.Name)
		if g.opts.DenyOnError {
			return "", review.Deny(VerdictDeniedUnread, "cannot read pod "+req.Namespace+"/"+req.Name+" to check its node: "+err.Error()), true
		}
		return "", review.Allow(VerdictUnreadable), true
	}
	return pod.Spec.NodeName, review.Response{}, false
}

func tokenNode(req *review.Request) string {
	if v := req.UserInfo.Extra[ExtraNodeName]; len(v) == 1 {
		return v[0]
	}
	return ""
}

func nodeOrNone(n string) string {
	if n == "" {
		return "(none: not scheduled)"
	}
	return n
}
