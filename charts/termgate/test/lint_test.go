package charttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
)

// ciValues are the chart's ci/*-values.yaml files, each a supported way to
// install it: lint and every render test go through all of them.
func ciValues(t *testing.T) map[string]map[string]any {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir(t), "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no ci/*-values.yaml in the chart")
	}
	out := map[string]map[string]any{}
	for _, f := range files {
		out[strings.TrimSuffix(filepath.Base(f), "-values.yaml")] = values(t, string(readFile(t, f)))
	}
	return out
}

// helm lint --strict with each ci values file: templates, schema and
// Chart.yaml, with warnings counted as failures.
func TestTheChartLintsCleanWithEveryCIValuesFile(t *testing.T) {
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for name, vals := range ciValues(t) {
		t.Run(name, func(t *testing.T) {
			lint := action.NewLint()
			lint.Strict = true
			lint.Namespace = releaseNamespace
			lint.KubeVersion = kv
			res := lint.Run([]string{chartDir(t)}, vals)
			if res.TotalChartsLinted != 1 {
				t.Fatalf("linted %d charts, errors %v", res.TotalChartsLinted, res.Errors)
			}
			for _, m := range res.Messages {
				if m.Severity > support.InfoSev {
					t.Errorf("%s: %v", m.Path, m.Err)
				}
			}
			for _, err := range res.Errors {
				t.Errorf("lint: %v", err)
			}
		})
	}
}

// The ci values files must themselves be covered: each one renders, and
// the chart ships none that the render tests skip.
func TestEveryCIValuesFileRenders(t *testing.T) {
	for name, vals := range ciValues(t) {
		t.Run(name, func(t *testing.T) {
			objs := decodeRender(t, vals)
			if len(objs) < 20 {
				t.Errorf("%d objects rendered; termgate needs at least its agent, webhook, RBAC and registrations", len(objs))
			}
		})
	}
	if _, err := os.Stat(filepath.Join(chartDir(t), "ci", "default-values.yaml")); err != nil {
		t.Errorf("ci/default-values.yaml (the smallest install) is missing: %v", err)
	}
}
