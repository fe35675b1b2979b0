package watch

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The metric names are documented in docs/reference.md and dashboards use them.
func TestMetricNamesAreStableAndRegisteringTwiceIsAnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.responses.WithLabelValues("200").Inc()
	m.watchErrors.WithLabelValues(string(KeyPreempted)).Inc()
	m.invalidValues.WithLabelValues(string(KeyUpcomingMaintenance)).Inc()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	for _, want := range []string{"termgate_agent_metadata_responses_total", "termgate_agent_metadata_errors_total", "termgate_agent_metadata_invalid_values_total"} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s missing; have %v", want, names)
		}
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("second registration succeeded")
	}
}
