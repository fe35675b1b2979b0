package notice

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of a notice source's reads. One source runs per agent, so the
// families carry no source label; their names predate the other clouds.
type Metrics struct {
	// Responses counts HTTP responses from the metadata service, by status
	// code (0 = transport error), retries included.
	Responses *prometheus.CounterVec
	// Errors counts reads that failed after the client's own retries, by
	// channel (metadata key or path).
	Errors *prometheus.CounterVec
	// Invalid counts values that could not be read, by channel.
	Invalid *prometheus.CounterVec
}

// NewMetrics creates the source metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "metadata_responses_total",
			Help: "HTTP responses from the cloud's metadata service (GCE metadata server, EC2 IMDS, Azure Scheduled Events), by status code (0 = transport error), the clients' own retries included.",
		}, []string{"code"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "metadata_errors_total",
			Help: "Metadata reads that failed after the client's own retries and were tried again later, by key or path.",
		}, []string{"key"}),
		Invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "agent", Name: "metadata_invalid_values_total",
			Help: "Metadata values the agent could not read, by key or path: ignored (the other notices still count), or for GCE's upcoming-maintenance read as no window.",
		}, []string{"key"}),
	}
	for _, c := range []prometheus.Collector{m.Responses, m.Errors, m.Invalid} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metadata metrics: %w", err)
		}
	}
	return m, nil
}

// Instrument counts every response a metadata client gets, including the
// ones its internal retries hide.
func (m *Metrics) Instrument(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := next.RoundTrip(r)
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		m.Responses.WithLabelValues(strconv.Itoa(code)).Inc()
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// DirectTransport is an HTTP transport for link-local metadata services:
// never through a proxy (HTTP(S)_PROXY must not see, or break, the path to
// 169.254.169.254), short dial and header time-outs, as the service is on
// the host.
func DirectTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return t
}
