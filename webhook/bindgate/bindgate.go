// Package bindgate refuses scheduler binds onto nodes that termgate marked as
// terminating. It sees pods/binding CREATE: the review holds only the
// Binding, so the target node comes from the object and the node's state
// from the in-memory node cache. The common case, a node that is not
// terminating, is answered without any API call.
package bindgate

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/log"
	strictjson "sigs.k8s.io/json"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

// Name labels the gate in metrics and logs.
const Name = "bind"

// Verdicts, the metric label values this gate uses.
const (
	VerdictNotTerminating = review.VerdictNotTerminating
	VerdictUnconfirmed    = review.VerdictUnconfirmed
	VerdictRefusedUnconf  = review.VerdictRefusedUnconf
	VerdictUnknownNode    = review.VerdictUnknownNode
	VerdictTolerates      = "allowed-tolerates"
	VerdictPodGone        = "allowed-pod-gone"
	VerdictNotBinding     = "allowed-not-binding"
	VerdictDenied         = "denied"
	VerdictPodUnreadable  = "denied-pod-unreadable"
	VerdictInvalid        = "invalid"
)

// Options configure the gate.
type Options struct {
	// TaintEffect is the termination taint's effect, which decides which
	// tolerations count.
	TaintEffect corev1.TaintEffect
	// RefuseUnconfirmed refuses a bind onto a node whose fresh read failed
	// (the scheduler retries it after its backoff), instead of allowing it
	// on the cache's word.
	RefuseUnconfirmed bool
}

// Gate is the bind gate.
type Gate struct {
	nodes   review.NodeCheck
	pods    review.PodGetter
	opts    Options
	metrics *review.GateMetrics
}

var _ review.Gate = (*Gate)(nil)

// New returns the gate; metrics may be nil.
func New(nodes nodecache.Lookup, pods review.PodGetter, opts Options, metrics *review.GateMetrics) *Gate {
	check := review.NodeCheck{Nodes: nodes, RefuseUnconfirmed: opts.RefuseUnconfirmed, Metrics: metrics}
	return &Gate{nodes: check, pods: pods, opts: opts, metrics: metrics}
}

// Name implements review.Gate.
func (g *Gate) Name() string { return Name }

// binding is the part of a v1 Binding the gate reads.
type binding struct {
	Target struct {
		Kind string `json:"kind"`
		Name string `json:"name"`
	} `json:"target"`
}

// Admit implements review.Gate.
func (g *Gate) Admit(ctx context.Context, req *review.Request) review.Response {
	if req.SubResource != "binding" || req.Operation != review.OperationCreate {
		// Registered for pods/binding CREATE only; anything else is a
		// misconfiguration that must not block the cluster.
		return review.Allow(VerdictNotBinding)
	}
	var b binding
	if err := strictjson.UnmarshalCaseSensitivePreserveInts(req.Object, &b); err != nil {
		return review.Invalid(VerdictInvalid, "decode Binding: "+err.Error())
	}
	if b.Target.Name == "" || (b.Target.Kind != "" && b.Target.Kind != "Node") {
		return review.Invalid(VerdictInvalid, "binding target must name a Node")
	}
	node, resp, decided := g.nodes.Check(ctx, b.Target.Name, req.DryRun, "the bind is retried")
	if decided {
		return resp
	}
	return g.slowPath(ctx, req, b.Target.Name, node)
}

// slowPath reads the pod to see whether it tolerates the termination taint.
// It runs only for binds onto a terminating node, which are rare.
func (g *Gate) slowPath(ctx context.Context, req *review.Request, nodeName string, node nodecache.Node) review.Response {
	pod, err := g.pods.GetPod(ctx, req.Namespace, req.Name)
	g.metrics.PodRead(err)
	switch {
	case apierrors.IsNotFound(err):
		// The bind itself will fail; nothing to protect.
		return review.Allow(VerdictPodGone)
	case err != nil:
		// The node is going away within seconds: refusing is the safer
		// guess, and the scheduler retries the pod after a short backoff.
		log.FromContext(ctx).Error(err, "Read pod to check its tolerations", "namespace", req.Namespace, "pod", req.Name)
		return review.Deny(VerdictPodUnreadable, nodemark.Refusal(nodeName, node.Mark, g.opts.TaintEffect)+" (its tolerations could not be read: "+err.Error()+")")
	}
	if nodemark.Tolerates(pod, g.opts.TaintEffect) {
		return review.Allow(VerdictTolerates)
	}
	return review.Deny(VerdictDenied, nodemark.Refusal(nodeName, node.Mark, g.opts.TaintEffect))
}
