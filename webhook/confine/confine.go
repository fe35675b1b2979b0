// Package confine keeps termgate's agent to its own node: the agent's
// service account may evict only pods that run on the node its token is
// bound to, and only while that node is marked terminating. For a token
// bound to a pod the API server puts that pod's node and name in the
// request's user extra (authentication.kubernetes.io/node-name and
// .../pod-name); the gate requires both, so a token bound to a Node object
// (which carries the node but no pod) is refused. The registration's
// matchConditions call this gate only for the agent's account, so nobody
// else's evictions pay for it.
//
// The gate fails closed: an eviction it cannot check is refused, and the
// registration uses failurePolicy Fail. That cannot block a drain the agent
// must finish: at its cut-offs the agent deletes what is left, and deletes
// are confined by a ValidatingAdmissionPolicy in the API server itself,
// which holds with the webhook down.
//
// Every answer comes from the state of the agent's own node: its mark (the
// node cache, re-read when the cache has not seen it yet) and the pods known
// to run there (package nodepods, warm from the moment the mark is seen).
// Each eviction must carry a UID precondition, and the pod with that UID
// must run on the node: a pod deleted and recreated elsewhere under the same
// name has another UID, so the precondition makes the API server refuse the
// eviction even if the answer here were stale.
package confine

import (
	"context"
	"errors"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"
	strictjson "sigs.k8s.io/json"

	"termgate.dev/termgate/webhook/nodepods"
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
	VerdictOwnNode     = "allowed-own-node"
	VerdictNotOurs     = "allowed-not-agent-request"
	VerdictOtherNode   = "denied-other-node"
	VerdictOtherUID    = "denied-other-uid"
	VerdictUnbound     = "denied-unbound-token"
	VerdictNoUID       = "denied-no-uid-precondition"
	VerdictNotDraining = "denied-node-not-terminating"
	VerdictUnchecked   = "denied-unchecked"
	VerdictInvalid     = "invalid"
)

// Options configure the gate.
type Options struct {
	// Username is the agent's service-account user name; requests by anyone
	// else are allowed (the registration should not send them).
	Username string
}

// MarkReader says whether a node is marked terminating now.
type MarkReader interface {
	Terminating(ctx context.Context, node string) (bool, error)
}

// PodLocator says whether a pod, by name and UID, runs on a node.
type PodLocator interface {
	Locate(ctx context.Context, node, namespace, name string, uid types.UID) (nodepods.Located, error)
}

// Gate is the agent-confinement gate.
type Gate struct {
	opts    Options
	marks   MarkReader
	pods    PodLocator
	metrics *review.GateMetrics
}

var _ review.Gate = (*Gate)(nil)

// New returns the gate; metrics may be nil.
func New(opts Options, marks MarkReader, pods PodLocator, metrics *review.GateMetrics) *Gate {
	return &Gate{opts: opts, marks: marks, pods: pods, metrics: metrics}
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
	if isDelete {
		// Deletes are confined by the API server's own policy; an older
		// registration that still sends them gets the same answer here,
		// from the pod the review carries.
		return g.deletion(req, own)
	}
	return g.eviction(ctx, req, own)
}

// eviction answers an agent's eviction from its own node's state.
func (g *Gate) eviction(ctx context.Context, req *review.Request, own string) review.Response {
	uid, err := preconditionUID(req.Object)
	if err != nil {
		return review.Invalid(VerdictInvalid, "decode Eviction: "+err.Error())
	}
	if uid == "" {
		return review.Deny(VerdictNoUID, "an eviction by termgate's agent must carry the pod's UID as a precondition (deleteOptions.preconditions.uid)")
	}
	logger := log.FromContext(ctx).WithValues("node", own, "namespace", req.Namespace, "pod", req.Name)
	// A dry run changes nothing: the agent's --dry-run mode evicts this
	// way without marking its node, so only the pod's place is checked.
	if !req.DryRun {
		draining, err := g.marks.Terminating(ctx, own)
		if err != nil {
			logger.Error(err, "Read the agent's node to confine its eviction")
			return review.Deny(VerdictUnchecked, "cannot tell whether node "+own+" is terminating: "+err.Error())
		}
		if !draining {
			return review.Deny(VerdictNotDraining, "node "+own+" is not marked terminating: termgate's agent evicts only on its own node while it drains")
		}
	}
	where, err := g.pods.Locate(ctx, own, req.Namespace, req.Name, uid)
	if where.Read {
		g.metrics.PodRead(err)
	} else if err == nil {
		g.metrics.PodCacheAnswer()
	}
	if err != nil {
		if !errors.Is(err, nodepods.ErrBudget) {
			logger.Error(err, "Locate the pod of the agent's eviction")
		}
		return review.Deny(VerdictUnchecked, "cannot check that pod "+req.Namespace+"/"+req.Name+" runs on node "+own+": "+err.Error())
	}
	switch where.Placement {
	case nodepods.OnNode:
		return review.Allow(VerdictOwnNode)
	case nodepods.OtherUID:
		return review.Deny(VerdictOtherUID, "pod "+req.Namespace+"/"+req.Name+" on node "+own+" has another UID than "+string(uid)+": the pod asked for is gone")
	}
	return review.Deny(VerdictOtherNode, "the agent on node "+own+" may not evict pod "+req.Namespace+"/"+req.Name+": it does not run on that node")
}

// deletion answers a DELETE from the pod in the review.
func (g *Gate) deletion(req *review.Request, own string) review.Response {
	pod, err := review.DecodePod(req.OldObject, req.Namespace)
	if err != nil {
		return review.Invalid(VerdictInvalid, err.Error())
	}
	if pod.Spec.NodeName != own {
		return review.Deny(VerdictOtherNode, "the agent on node "+own+" may not delete pod "+req.Namespace+"/"+req.Name+" on node "+nodeOrNone(pod.Spec.NodeName))
	}
	return review.Allow(VerdictOwnNode)
}

// eviction is the part of a policy/v1 Eviction the gate reads.
type evictionBody struct {
	DeleteOptions *struct {
		Preconditions *struct {
			UID *types.UID `json:"uid"`
		} `json:"preconditions"`
	} `json:"deleteOptions"`
}

// preconditionUID returns the UID precondition of an Eviction, "" if none.
func preconditionUID(raw []byte) (types.UID, error) {
	if len(raw) == 0 {
		return "", errors.New("the review carries no Eviction")
	}
	var e evictionBody
	if err := strictjson.UnmarshalCaseSensitivePreserveInts(raw, &e); err != nil {
		return "", err
	}
	if e.DeleteOptions == nil || e.DeleteOptions.Preconditions == nil || e.DeleteOptions.Preconditions.UID == nil {
		return "", nil
	}
	return *e.DeleteOptions.Preconditions.UID, nil
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
