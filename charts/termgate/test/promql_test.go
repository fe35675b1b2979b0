package charttest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	promql "github.com/prometheus/prometheus/promql/parser"
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
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b := readFile(t, filepath.Join(chartDir(t), "files", "dashboard.json"))
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard without uid or panels")
	}
	defined := definedMetrics(t)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			checkNames(t, "panel "+p.Title, grafanaVariables.Replace(tg.Expr), defined)
		}
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
				names = append(names, baseName(m.Value))
			}
		}
	}
	sort.Strings(names)
	return slices.Compact(names), nil
}

func baseName(n string) string {
	for _, s := range []string{"_bucket", "_count", "_sum"} {
		if b, ok := strings.CutSuffix(n, s); ok && strings.HasSuffix(b, "_seconds") {
			return b
		}
	}
	return n
}

// definedMetrics reads the Prometheus options literals (Namespace:
// "termgate", Subsystem, Name) of the product's non-test Go files: the
// metrics the code defines, whether or not a process has exposed them yet.
// The end-to-end test checks them against a real scrape.
func definedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, dir := range []string{"agent", "webhook", "cmd", "certs", "nodemark", "notifier"} {
		err := filepath.WalkDir(filepath.Join(repoRoot(t), dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if lit, ok := n.(*ast.CompositeLit); ok {
					if name := optsName(lit); name != "" {
						out[name] = true
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(out) < 10 {
		t.Fatalf("%d metric definitions found: the reader no longer matches the code", len(out))
	}
	return out
}

func optsName(lit *ast.CompositeLit) string {
	fields := map[string]string{}
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		key, ok1 := kv.Key.(*ast.Ident)
		val, ok2 := kv.Value.(*ast.BasicLit)
		if ok1 && ok2 && val.Kind == token.STRING {
			fields[key.Name], _ = strconv.Unquote(val.Value)
		}
	}
	if fields["Namespace"] != "termgate" || fields["Name"] == "" {
		return ""
	}
	parts := []string{"termgate"}
	if fields["Subsystem"] != "" {
		parts = append(parts, fields["Subsystem"])
	}
	return strings.Join(append(parts, fields["Name"]), "_")
}
