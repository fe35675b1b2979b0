package agent

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"termgate.dev/termgate/nodemark"
)

// Metrics of the agent's decisions. The watch and the drain have their own.
type Metrics struct {
	notices      *prometheus.CounterVec
	noticeToMark prometheus.Histogram
	restored     prometheus.Counter
}

// NewMetrics creates the agent's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "notices_total",
			Help: "Termination notices acted on (node marked), by reason and state (advance or terminating).",
		}, []string{"reason", "state"}),
		noticeToMark: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "notice_to_mark_seconds",
			Help:    "Time from receiving a metadata notice to the Node patch being accepted.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		restored: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "restored_total",
			Help: "Nodes unmarked because the notice was withdrawn or the VM came back with a new boot ID.",
		}),
	}
	for _, c := range []prometheus.Collector{m.notices, m.noticeToMark, m.restored} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register agent metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) observeMark(mk nodemark.Mark, latency time.Duration) {
	m.notices.WithLabelValues(string(mk.Reason), string(mk.State)).Inc()
	// A re-mark after a restart measures the restart, not the agent's speed.
	if latency >= 0 && latency < time.Minute {
		m.noticeToMark.Observe(latency.Seconds())
	}
}
