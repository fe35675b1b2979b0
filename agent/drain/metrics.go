package drain

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"termgate.dev/termgate/nodemark"
)

// Metrics are the drain's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	evictions   *prometheus.CounterVec
	escalations *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	lbWait      *prometheus.HistogramVec
	lbPending   prometheus.Gauge
	remaining   prometheus.Gauge
	deadline    prometheus.Gauge
	window      prometheus.Gauge
}

// Outcomes of the wait for load balancers, the label of its histogram.
const (
	lbOutcomeDrained = "drained" // the node left every load balancer
	lbOutcomeCapped  = "capped"  // the cap came first
)

// Drain outcomes, the label of the duration histogram.
const (
	outcomeComplete  = "complete"
	outcomeDeadline  = "deadline"
	outcomeCancelled = "cancelled"
)

// NewMetrics creates the drain metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "drain", Name: "evictions_total",
			Help: "Eviction requests by result: accepted, gone (404 or pod replaced), blocked (a PodDisruptionBudget refused it), throttled (429 from the API server's own load shedding), server_error (5xx), error.",
		}, []string{"result"}),
		escalations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "drain", Name: "pods_escalated_total",
			Help: "Pods deleted with a grace period clamped to the deadline because they were still present at their wave's cut-off.",
		}, []string{"wave"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "termgate", Subsystem: "drain", Name: "duration_seconds",
			Help: "Time from the start of a drain run until it ended, by outcome: complete, deadline, cancelled.",
			// From sub-second drains of small nodes to hour-long maintenance notices.
			Buckets: []float64{0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 900, 3600},
		}, []string{"outcome"}),
		lbWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "lb_wait_seconds",
			Help:    "Time from the notice until the backends of node-level load balancers were let go, by outcome: drained (the node left every load balancer) or capped.",
			Buckets: []float64{1, 2, 4, 6, 8, 10, 12, 15, 20, 30, 60, 120, 300},
		}, []string{"outcome"}),
		lbPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "lb_services_pending",
			Help: "Load-balancer Services the draining node is not yet confirmed gone from (0 outside a drain).",
		}),
		// The two gauges put a drain's progress beside its deadline on a
		// dashboard while it runs, where the histograms only tell of it
		// once it ended.
		remaining: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "drain", Name: "pods_remaining",
			Help: "Pods the running drain has still to move off the node (0 outside a drain).",
		}),
		deadline: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "drain", Name: "deadline_timestamp_seconds",
			Help: "Unix time of the running drain's deadline (0 outside a drain).",
		}),
		// Beside evictions_total{result="throttled"}: how far the agent
		// backed off for the API server, and whether it has grown back.
		window: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "drain", Name: "eviction_window",
			Help: "Eviction calls the last drain may have in flight at once: --eviction-concurrency at its start, halved each time the API server throttles or fails its calls, one more per window's worth of accepted calls.",
		}),
	}
	for _, c := range []prometheus.Collector{m.evictions, m.escalations, m.duration, m.lbWait, m.lbPending, m.remaining, m.deadline, m.window} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register drain metrics: %w", err)
		}
	}
	m.exposeAtZero()
	return m, nil
}

// exposeAtZero creates the series the chart's alerts read before their
// first event: Prometheus' increase() over a series that appears with its
// first event at 1 sees no increase, so the first missed deadline of an
// agent would never alert.
func (m *Metrics) exposeAtZero() {
	for _, o := range []string{outcomeComplete, outcomeDeadline, outcomeCancelled} {
		m.duration.WithLabelValues(o)
	}
	for _, o := range []outcome{outcomeAccepted, outcomeGone, outcomeBlocked, outcomeThrottled, outcomeServerError, outcomeError} {
		m.evictions.WithLabelValues(string(o))
	}
	for _, w := range []nodemark.Wave{nodemark.WaveRegular, nodemark.WaveSystem} {
		m.escalations.WithLabelValues(string(w))
	}
}

func (m *Metrics) observeEviction(out outcome) {
	if m != nil {
		m.evictions.WithLabelValues(string(out)).Inc()
	}
}

func (m *Metrics) observeEscalation(wave nodemark.Wave) {
	if m != nil {
		m.escalations.WithLabelValues(string(wave)).Inc()
	}
}

func (m *Metrics) observeDuration(outcome string, d time.Duration) {
	if m != nil {
		m.duration.WithLabelValues(outcome).Observe(d.Seconds())
	}
}

func (m *Metrics) observeLBWait(outcome string, d time.Duration) {
	if m != nil {
		m.lbWait.WithLabelValues(outcome).Observe(d.Seconds())
	}
}

// setProgress shows a running drain: its pods left and its deadline; a
// zero deadline says no drain runs.
func (m *Metrics) setProgress(remaining int, deadline time.Time) {
	if m == nil {
		return
	}
	m.remaining.Set(float64(remaining))
	if deadline.IsZero() {
		m.deadline.Set(0)
		return
	}
	m.deadline.Set(float64(deadline.UnixMilli()) / 1000)
}

func (m *Metrics) setEvictionWindow(n int) {
	if m != nil {
		m.window.Set(float64(n))
	}
}

func (m *Metrics) setLBPending(n int) {
	if m != nil {
		m.lbPending.Set(float64(n))
	}
}
