package delivery

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the delivery side's, labelled by sink.
type Metrics struct {
	sent            *prometheus.CounterVec
	depth           *prometheus.GaugeVec
	latency         *prometheus.HistogramVec
	requestDuration *prometheus.HistogramVec
}

// NewMetrics registers the delivery metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "sent_total",
			Help: "Delivery attempts and drops by sink and result: delivered, retried (408, 429, 5xx, network, timeout), rejected (other answers, not retried), dropped (oldest out of a full queue), unsent (could not be rendered).",
		}, []string{"sink", "result"}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "queue_depth",
			Help: "Notifications waiting for the sink, the one in flight included.",
		}, []string{"sink"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "delivery_latency_seconds",
			Help:    "From when a notification occurred (by the agent's clock) to the sink accepting it, retries included.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800},
		}, []string{"sink"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "request_duration_seconds",
			Help:    "Duration of each delivery request, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10),
		}, []string{"sink"}),
	}
	for _, c := range []prometheus.Collector{m.sent, m.depth, m.latency, m.requestDuration} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register notifier delivery metrics: %w", err)
		}
	}
	return m, nil
}
