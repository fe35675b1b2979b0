package watch

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"termgate.dev/termgate/agent/notice"
)

// Metrics of the metadata watch: the notice source metrics, by GCE key.
type Metrics struct {
	responses     *prometheus.CounterVec
	watchErrors   *prometheus.CounterVec
	invalidValues *prometheus.CounterVec
	source        *notice.Metrics
}

// NewMetrics creates the watch's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m, err := notice.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	return MetricsFrom(m), nil
}

// MetricsFrom uses source metrics already registered.
func MetricsFrom(m *notice.Metrics) *Metrics {
	return &Metrics{responses: m.Responses, watchErrors: m.Errors, invalidValues: m.Invalid, source: m}
}

// instrument counts every response the metadata client gets, including the
// ones its internal retries hide.
func (m *Metrics) instrument(next http.RoundTripper) http.RoundTripper {
	return m.source.Instrument(next)
}
