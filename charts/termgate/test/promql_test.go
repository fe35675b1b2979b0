package charttest

import (
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	promql "github.com/prometheus/prometheus/promql/parser"

	"termgate.dev/termgate/test/metricref"
)

// upstream are the metrics the alerts and the dashboard read that termgate
// does not define: the API server's own, for what only it can see (calls
// it let past an unreachable webhook, requests its priority and fairness
// rejected), and Prometheus' up. Each is named in docs/install.md.
var upstream = map[string]string{
	"up": "Prometheus: the scrape of an agent or webhook replica answered",
	"apiserver_admission_webhook_fail_open_count":   "kube-apiserver: calls allowed because a webhook with failurePolicy Ignore failed",
	"apiserver_flowcontrol_rejected_requests_total": "kube-apiserver: requests API priority and fairness rejected",
}

var promqlParser = promql.NewParser(promql.Options{})

// The rule file parses and validates with Prometheus' own rule loader
// (expressions, durations, label and annotation templates), and every
// alert names only metrics termgate defines or the listed upstream ones.
func TestTheAlertsParseAndNameOnlyMetricsThatExist(t *testing.T) {
	path := filepath.Join(chartDir(t), "files", "prometheus-rules.yaml")
	groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, promqlParser, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("rules: %v", err)
	}
	if groups == nil {
		t.FailNow()
	}
	defined := definedMetrics(t)
	alerts := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule %q; the file holds alerts only", g.Name, r.Record)
				continue
			}
			alerts++
			if r.Labels["severity"] != "critical" && r.Labels["severity"] != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, r.Labels["severity"])
			}
			for _, k := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[k]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, k)
				}
			}
			checkNames(t, "alert "+r.Alert, r.Expr, defined)
		}
	}
	if alerts < 8 {
		t.Errorf("%d alerts; the file lost some", alerts)
	}
}

// grafanaVariables are the dashboard's variables with values that make an
// expression Prometheus would run.
var grafanaVariables = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"$agent_job", "(.+/)?termgate-agent", "$webhook_job", "(.+/)?termgate-webhook",
)

// Every panel's expression parses once Grafana's variables are filled in,
// and names only metrics that exist.
func TestTheDashboardParsesAndNamesOnlyMetricsThatExist(t *testing.T) {
	queries, err := metricref.DashboardQueries(filepath.Join(chartDir(t), "files", "dashboard.json"), grafanaVariables)
	if err != nil {
		t.Fatal(err)
	}
	defined := definedMetrics(t)
	for where, q := range queries {
		checkNames(t, "panel "+where, q, defined)
	}
}

// checkNames parses expr and checks each metric it selects.
func checkNames(t *testing.T, where, expr string, defined map[string]bool) {
	t.Helper()
	names, err := MetricNames(expr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	for _, n := range names {
		if !defined[n] && upstream[n] == "" {
			t.Errorf("%s names %s, which termgate does not define and which is not a listed upstream metric", where, n)
		}
	}
}

// MetricNames parses a PromQL expression and returns the metric names its
// selectors name, with histogram and summary suffixes taken off.
func MetricNames(expr string) ([]string, error) {
	e, err := promqlParser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, sel := range promql.ExtractSelectors(e) {
		for _, m := range sel {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				names = append(names, metricref.BaseName(m.Value))
			}
		}
	}
	sort.Strings(names)
	return slices.Compact(names), nil
}

// definedMetrics are the metrics the product's code defines (the
// end-to-end test checks them against a real scrape).
func definedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	var dirs []string
	for _, d := range []string{"agent", "webhook", "cmd", "certs", "nodemark", "notifier"} {
		dirs = append(dirs, filepath.Join(repoRoot(t), d))
	}
	names, err := metricref.Defined(dirs...)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 10 {
		t.Fatalf("%d metric definitions found: the reader no longer matches the code", len(names))
	}
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}
