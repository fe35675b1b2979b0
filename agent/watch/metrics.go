package watch

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the metadata watch.
type Metrics struct {
	responses     *prometheus.CounterVec
	watchErrors   *prometheus.CounterVec
	invalidValues *prometheus.CounterVec
}

// NewMetrics creates the watch's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "metadata_responses_total",
			Help: "HTTP responses from the GCE metadata server, by status code (0 = transport error). The client retries 5xx and 429 itself.",
		}, []string{"code"}),
		watchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "metadata_errors_total",
			Help: "Metadata watches that failed after the client's own retries and were restarted with backoff, by key.",
		}, []string{"key"}),
		invalidValues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "metadata_invalid_values_total",
			Help: "Metadata values the agent could not parse, by key: ignored, or for upcoming-maintenance read as no window.",
		}, []string{"key"}),
	}
	for _, c := range []prometheus.Collector{m.responses, m.watchErrors, m.invalidValues} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metadata watch metrics: %w", err)
		}
	}
	return m, nil
}

// instrument counts every response the metadata client gets, including the
// ones its internal retries hide.
func (m *Metrics) instrument(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := next.RoundTrip(r)
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		m.responses.WithLabelValues(strconv.Itoa(code)).Inc()
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
