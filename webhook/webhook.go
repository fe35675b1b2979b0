// Package webhook wires termgate's admission gates into one HTTPS server.
// Each gate lives in its own package; this file is the only place that
// chooses which gates exist and which path serves each.
package webhook

import (
	"context"
	"errors"
	"net/http"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/webhook/bindgate"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/drainorder"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/nodepods"
	"termgate.dev/termgate/webhook/pinnedgate"
	"termgate.dev/termgate/webhook/review"
)

// Paths the webhook configurations in manifests/static/self-managed call.
const (
	PathBinding    = "/validate-binding"
	PathPinnedPod  = "/validate-pinned-pod"
	PathDrainOrder = "/mutate-drain-order"
	PathAgent      = "/validate-agent"
)

// Config is what the gates need; New builds it from the clients, unit
// tests and the throughput benchmark from in-memory stand-ins.
type Config struct {
	// Nodes answers the bind gate (in a replica: a nodecache.Confirmer in
	// front of the node cache), and the pinned-pod gate when PinnedNodes
	// is nil.
	Nodes       nodecache.Lookup
	PinnedNodes nodecache.Lookup
	// Pods serves the bind gate's slow path.
	Pods review.PodGetter
	// AgentMarks and AgentPods answer the confinement: whether the agent's
	// node is terminating, and whether a pod runs there. Without them every
	// agent eviction is refused as unchecked.
	AgentMarks confine.MarkReader
	AgentPods  confine.PodLocator
	// TaintEffect is the effect of the termination taint the agent writes.
	TaintEffect corev1.TaintEffect
	// RefuseUnconfirmed refuses binds, and RefuseUnconfirmedPinned pinned
	// pods, onto nodes whose re-read failed.
	RefuseUnconfirmed       bool
	RefuseUnconfirmedPinned bool
	// Agent configures the confinement of the agent's service account.
	Agent confine.Options
	// MaxBodyBytes bounds a review body (413 beyond); 0 means
	// review.MaxBodyBytes.
	MaxBodyBytes int64
	// Metrics may be nil.
	Metrics *review.Metrics
	Log     logr.Logger
	Clock   clock.PassiveClock
}

// Handler returns the mux serving every gate at its path.
func Handler(cfg Config) http.Handler {
	m := cfg.Metrics
	pinnedNodes := cfg.PinnedNodes
	if pinnedNodes == nil {
		pinnedNodes = cfg.Nodes
	}
	marks, pods := cfg.AgentMarks, cfg.AgentPods
	if marks == nil || pods == nil {
		marks, pods = unchecked{}, unchecked{}
	}
	gates := map[string]review.Gate{
		PathBinding: bindgate.New(cfg.Nodes, cfg.Pods,
			bindgate.Options{TaintEffect: cfg.TaintEffect, RefuseUnconfirmed: cfg.RefuseUnconfirmed}, m.ForGate(bindgate.Name)),
		PathPinnedPod: pinnedgate.New(pinnedNodes,
			pinnedgate.Options{TaintEffect: cfg.TaintEffect, RefuseUnconfirmed: cfg.RefuseUnconfirmedPinned}, m.ForGate(pinnedgate.Name)),
		PathDrainOrder: drainorder.New(cfg.TaintEffect),
		PathAgent:      confine.New(cfg.Agent, marks, pods, m.ForGate(confine.Name)),
	}
	mux := http.NewServeMux()
	for path, gate := range gates {
		mux.Handle(path, review.NewHandler(gate, cfg.Log, cfg.Clock, m).WithMaxBodyBytes(cfg.MaxBodyBytes))
	}
	return mux
}

// unchecked stands in for the confinement's state when none was given:
// every agent eviction is refused.
type unchecked struct{}

var errNoConfinementState = errors.New("the webhook was built without the confinement's state")

func (unchecked) Terminating(context.Context, string) (bool, error) {
	return false, errNoConfinementState
}

func (unchecked) Locate(context.Context, string, string, string, types.UID) (nodepods.Located, error) {
	return nodepods.Located{}, errNoConfinementState
}

// APIPods reads pods through the API server (the gates' slow paths).
type APIPods struct{ Client kubernetes.Interface }

// GetPod implements review.PodGetter.
func (p APIPods) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return p.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}
