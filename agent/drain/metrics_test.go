package drain

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func newTestMetrics(t *testing.T) (*prometheus.Registry, *Metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatalf("NewMetrics: %v", err)
	}
	return reg, m
}

// counterValue reads one labelled counter from reg; 0 if absent.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestMetricsAreRecordedOnTheGivenRegistry(t *testing.T) {
	k := newKit(t, pod("web"))
	k.hook("web", fail(pdbRefusal()))
	reg, m := newTestMetrics(t)
	_, err := k.drive(k.drainer(Config{Metrics: m}), testMark, runOpts{})
	expectNoError(t, err)

	if got := counterValue(t, reg, "termgate_drain_evictions_total", "result", "blocked"); got != 1 {
		t.Errorf("blocked evictions %v, want 1", got)
	}
	if got := counterValue(t, reg, "termgate_drain_evictions_total", "result", "accepted"); got != 1 {
		t.Errorf("accepted evictions %v, want 1", got)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var drains uint64
	for _, f := range families {
		if f.GetName() == "termgate_drain_duration_seconds" {
			for _, m := range f.GetMetric() {
				drains += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if drains != 1 {
		t.Errorf("duration histogram has %d samples, want 1", drains)
	}
}

func TestRegisteringTheMetricsTwiceIsAnErrorNotAPanic(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("second registration succeeded")
	}
}

// The alerts' series exist before their first event, at zero: a series
// born at 1 shows Prometheus no increase.
func TestTheAlertedSeriesExistAtZeroFromTheStart(t *testing.T) {
	reg, _ := newTestMetrics(t)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		`termgate_drain_duration_seconds{outcome="deadline"}`: false,
		`termgate_drain_evictions_total{result="throttled"}`:  false,
		`termgate_drain_pods_escalated_total{wave="regular"}`: false,
		`termgate_drain_pods_escalated_total{wave="system"}`:  false,
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				key := f.GetName() + "{" + l.GetName() + `="` + l.GetValue() + `"}`
				if _, ok := want[key]; ok {
					want[key] = true
				}
			}
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("%s is not exposed before its first event", k)
		}
	}
}
