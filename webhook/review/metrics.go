package review

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the webhook's decision metrics, shared by every gate.
type Metrics struct {
	decisions   *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	cacheMisses *prometheus.CounterVec
	podReads    *prometheus.CounterVec
	podCache    *prometheus.CounterVec
	refused     *prometheus.CounterVec
	unexpected  prometheus.Counter
}

// NewMetrics creates the metrics and registers them on reg (in the binary,
// controller-runtime's metrics registry).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "decisions_total",
			Help: "Admission decisions by gate and verdict; verdict rejected counts malformed calls answered with HTTP 4xx.",
		}, []string{"gate", "verdict"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "decision_duration_seconds",
			Help: "Time from receiving a review to writing the answer, by gate.",
			// 25us .. ~0.8s: the bind path sits in the lowest buckets.
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16),
		}, []string{"gate"}),
		cacheMisses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "node_cache_misses_total",
			Help: "Reviews naming a node absent from the node cache; those are allowed (fail open).",
		}, []string{"gate"}),
		podReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "pod_reads_total",
			Help: "Pod reads through the API on the slow path, by gate and result (ok, error).",
		}, []string{"gate", "result"}),
		podCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "pod_cache_answers_total",
			Help: "Pod lookups answered from memory, with no API read, by gate.",
		}, []string{"gate"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "requests_refused_total",
			Help: "Calls refused before any gate saw them, by reason (too-many-requests: answered 429 beyond the in-flight limits; peer-busy: 429, the caller has too many calls still being read; body-too-large: 413).",
		}, []string{"reason"}),
		unexpected: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "unexpected_peer_calls_total",
			Help: "Calls to the admission port from addresses outside --expected-peer-cidrs (the control plane's): above zero, the NetworkPolicy is not enforced or holds the wrong range.",
		}),
	}
	for _, c := range []prometheus.Collector{m.decisions, m.latency, m.cacheMisses, m.podReads, m.podCache, m.refused, m.unexpected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register webhook metrics: %w", err)
		}
	}
	return m, nil
}

// GateMetrics are the metrics of one gate with the gate label bound. A nil
// *GateMetrics records nothing, which keeps unit tests free of registries.
type GateMetrics struct {
	gate      string
	decisions *prometheus.CounterVec
	rejected  prometheus.Counter
	latency   prometheus.Observer
	miss      prometheus.Counter
	readOK    prometheus.Counter
	readErr   prometheus.Counter
	podCache  prometheus.Counter
}

// ForGate binds the gate label once, so the hot path does no label lookups
// except for the verdict.
func (m *Metrics) ForGate(gate string) *GateMetrics {
	if m == nil {
		return nil
	}
	// The verdicts that allow without having checked (the chart's alert
	// on them) exist at zero from the start, so that their first rise
	// counts as an increase.
	for _, v := range []string{VerdictUnconfirmed, VerdictUnknownNode} {
		m.decisions.WithLabelValues(gate, v)
	}
	return &GateMetrics{
		gate:      gate,
		decisions: m.decisions,
		rejected:  m.decisions.WithLabelValues(gate, "rejected"),
		latency:   m.latency.WithLabelValues(gate),
		miss:      m.cacheMisses.WithLabelValues(gate),
		readOK:    m.podReads.WithLabelValues(gate, "ok"),
		readErr:   m.podReads.WithLabelValues(gate, "error"),
		podCache:  m.podCache.WithLabelValues(gate),
	}
}

func (g *GateMetrics) observe(verdict string, allowed bool, d time.Duration) {
	if g == nil {
		return
	}
	if verdict == "" {
		verdict = "denied"
		if allowed {
			verdict = "allowed"
		}
	}
	g.decisions.WithLabelValues(g.gate, verdict).Inc()
	g.latency.Observe(d.Seconds())
}

func (g *GateMetrics) observeRejected() {
	if g != nil {
		g.rejected.Inc()
	}
}

// CacheMiss counts a node missing from the cache.
func (g *GateMetrics) CacheMiss() {
	if g != nil {
		g.miss.Inc()
	}
}

// PodRead counts a pod read through the API and whether it failed.
func (g *GateMetrics) PodRead(err error) {
	if g == nil {
		return
	}
	if err != nil {
		g.readErr.Inc()
		return
	}
	g.readOK.Inc()
}

// PodCacheAnswer counts a pod lookup answered from memory.
func (g *GateMetrics) PodCacheAnswer() {
	if g != nil {
		g.podCache.Inc()
	}
}

// Refused counts a call refused before decoding (reason: too-many-requests
// or body-too-large). A nil *Metrics records nothing.
func (m *Metrics) Refused(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

// UnexpectedPeer counts a call from outside the expected peer ranges. A nil
// *Metrics records nothing.
func (m *Metrics) UnexpectedPeer() {
	if m != nil {
		m.unexpected.Inc()
	}
}
