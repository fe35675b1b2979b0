// Package confine keeps termgate's agent to its own node: the agent's
// service account may evict or delete only pods that run on the node its
// token is bound to. For a token bound to a pod the API server puts that
// pod's node and name in the request's user extra
// (authentication.kubernetes.io/node-name and .../pod-name); the gate
// requires both, so a token bound to a Node object (which carries the node
// but no pod) is refused. The registration's matchConditions call this gate
// only for the agent's account, so nobody else's evictions pay for it.
//
// Where a pod runs comes, for evictions, from the pods of marked nodes held
// in memory (package nodepods): the agent evicts only on the node it marked,
// so a drain is answered without any API read. A pod the cache does not
// hold is read through the API on the confinement's own client budget.
package confine

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/webhook/review"
)

// Name labels the gate in metrics and logs.
const Name = "agent"

// User-extra keys of a token bound to a pod: the pod's node and name.
const (
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
)

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

// PodLocator answers "which node runs this pod" from memory, looking at
// node first. found false means "not known here", never "not on node".
type PodLocator interface {
	Locate(ctx context.Context, namespace, name, node string) (where string, found bool)
}

// Gate is the agent-confinement gate.
type Gate struct {
	opts    Options
	locator PodLocator
	pods    review.PodGetter
	metrics *review.GateMetrics
}

var _ review.Gate = (*Gate)(nil)

// New returns the gate. locator may be nil (every eviction reads the pod);
// pods should use a client budget of its own, so a burst of confinement
// reads never delays the bind gate's; metrics may be nil.
func New(opts Options, locator PodLocator, pods review.PodGetter, metrics *review.GateMetrics) *Gate {
	return &Gate{opts: opts, locator: locator, pods: pods, metrics: metrics}
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
		return review.Deny(VerdictUnbound, "the agent's token is not bound to a pod on a node (it needs both "+ExtraNodeName+" and "+ExtraPodName+" in its user info): it may not evict or delete pods")
	}
	podNode, resp, done := g.podNode(ctx, req, isDelete, own)
	if done {
		return resp
	}
	if podNode != own {
		return review.Deny(VerdictOtherNode, "the agent on node "+own+" may not evict or delete pod "+req.Namespace+"/"+req.Name+" on node "+nodeOrNone(podNode))
	}
	return review.Allow(VerdictOwnNode)
}

// podNode finds the node of the pod the request is about: a DELETE carries
// the pod as oldObject; an eviction names it, so the pod is looked up in
// memory, then read through the API. own is the agent's node.
//
// A pod found in memory on the agent's node is allowed at once. The one
// stale answer this can give: the pod was deleted and a new pod of the same
// name was bound to another node, and the cache has not yet seen the delete
// (watch latency, milliseconds). The agent itself lists its node's pods
// through a watch of the same age, so it cannot target such a pod any
// earlier than this cache forgets the old one.
func (g *Gate) podNode(ctx context.Context, req *review.Request, isDelete bool, own string) (string, review.Response, bool) {
	if isDelete {
		pod, err := review.DecodePod(req.OldObject, req.Namespace)
		if err != nil {
			return "", review.Invalid(VerdictInvalid, err.Error()), true
		}
		return pod.Spec.NodeName, review.Response{}, false
	}
	if g.locator != nil {
		if where, found := g.locator.Locate(ctx, req.Namespace, req.Name, own); found {
			g.metrics.PodCacheAnswer()
			return where, review.Response{}, false
		}
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

// tokenNode returns the node of a token bound to a pod, or "" for any other
// token: one without the node, or bound to the Node object itself (node
// name without a pod name), or with more than one value where the API
// server writes one.
func tokenNode(req *review.Request) string {
	node, pod := req.UserInfo.Extra[ExtraNodeName], req.UserInfo.Extra[ExtraPodName]
	if len(node) != 1 || len(pod) != 1 || node[0] == "" || pod[0] == "" {
		return ""
	}
	return node[0]
}

func nodeOrNone(n string) string {
	if n == "" {
		return "(none: not scheduled)"
	}
	return n
}
