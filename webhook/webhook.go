// Package webhook wires termgate's admission gates into one HTTPS server.
// Each gate lives in its own package; this file is the only place that
// chooses which gates exist and which path serves each.
package webhook

import (
	"context"
	"net/http"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/webhook/bindgate"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/drainorder"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/pinnedgate"
	"termgate.dev/termgate/webhook/review"
)

// Paths the webhook configurations in manifests/base call.
const (
	PathBinding    = "/validate-binding"
	PathPinnedPod  = "/validate-pinned-pod"
	PathDrainOrder = "/mutate-drain-order"
	PathAgent      = "/validate-agent"
)

// Config is what the gates need.
type Config struct {
	// Nodes answers the bind and pinned-pod gates: in the binary a
	// nodecache.Confirmer in front of the node cache.
	Nodes nodecache.Lookup
	// Pods serves the bind gate's slow path.
	Pods review.PodGetter
	// AgentPods serves the confinement gate's reads of pods the locator
	// does not hold; give it a client of its own so confinement and the
	// bind gate never wait on each other's budget. Nil uses Pods.
	AgentPods review.PodGetter
	// AgentPodLocator answers where a pod runs from memory (nodepods.Cache);
	// nil reads every evicted pod through AgentPods.
	AgentPodLocator confine.PodLocator
	// TaintEffect is the effect of the termination taint the agent writes.
	TaintEffect corev1.TaintEffect
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
	agentPods := cfg.AgentPods
	if agentPods == nil {
		agentPods = cfg.Pods
	}
	gates := map[string]review.Gate{
		PathBinding:    bindgate.New(cfg.Nodes, cfg.Pods, cfg.TaintEffect, m.ForGate(bindgate.Name)),
		PathPinnedPod:  pinnedgate.New(cfg.Nodes, cfg.TaintEffect, m.ForGate(pinnedgate.Name)),
		PathDrainOrder: drainorder.New(cfg.TaintEffect),
		PathAgent:      confine.New(cfg.Agent, cfg.AgentPodLocator, agentPods, m.ForGate(confine.Name)),
	}
	mux := http.NewServeMux()
	for path, gate := range gates {
		mux.Handle(path, review.NewHandler(gate, cfg.Log, cfg.Clock, m).WithMaxBodyBytes(cfg.MaxBodyBytes))
	}
	return mux
}

// APIPods reads pods through the API server (the gates' slow paths).
type APIPods struct{ Client kubernetes.Interface }

// GetPod implements review.PodGetter.
func (p APIPods) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return p.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}
