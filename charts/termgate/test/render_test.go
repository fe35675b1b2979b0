// Package charttest checks charts/termgate with Helm's own Go SDK, offline:
// lint with every ci/*-values.yaml, the schema's refusals, a matrix of
// renders decoded strictly into typed objects, invariants over every
// render, and the equivalence of the default render with the kustomize
// install (manifests/overlays/*), so that the chart and the manifests
// cannot drift apart.
package charttest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"sigs.k8s.io/yaml"
)

// kubeVersion is the Kubernetes version renders assume: the local
// cluster's (the Makefile's K8S_VERSION).
const kubeVersion = "v1.37.2"

// releaseNamespace holds the release record; the chart's objects go to
// global.namespace and global.agentNamespace.
const releaseNamespace = "default"

// repoRoot is the repository's top folder.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the repository")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

func chartDir(t testing.TB) string { return filepath.Join(repoRoot(t), "charts", "termgate") }

var loaded struct {
	once  sync.Once
	chart *chart.Chart
	err   error
}

// loadChart loads the chart once; every render copies nothing from it but
// reads it, which Helm's install does not change.
func loadChart(t testing.TB) *chart.Chart {
	t.Helper()
	loaded.once.Do(func() { loaded.chart, loaded.err = loader.Load(chartDir(t)) })
	if loaded.err != nil {
		t.Fatalf("load the chart: %v", loaded.err)
	}
	return loaded.chart
}

// renderChart renders the chart as `helm install --dry-run=client` (and
// `helm template`) would: the schema, the kubeVersion constraint and
// templates/validate.yaml all apply. It returns the manifest.
func renderChart(t testing.TB, vals map[string]any) (string, error) {
	t.Helper()
	install := action.NewInstall(action.NewConfiguration())
	install.DryRunStrategy = action.DryRunClient
	install.ReleaseName = "termgate"
	install.Namespace = releaseNamespace
	install.Replace = true
	kv, err := common.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	if vals == nil {
		vals = map[string]any{}
	}
	r, err := install.Run(loadChart(t), vals)
	if err != nil {
		return "", err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return "", fmt.Errorf("install returned a %T", r)
	}
	if len(rel.Hooks) > 0 {
		return "", fmt.Errorf("the chart renders %d hooks; the tests expect none", len(rel.Hooks))
	}
	return rel.Manifest, nil
}

// object is one rendered object as generic JSON-shaped maps.
type object = map[string]any

// splitDocs parses a multi-document YAML stream into objects, skipping
// empty documents.
func splitDocs(manifest string) ([][]byte, error) {
	var docs [][]byte
	for _, d := range strings.Split("\n"+manifest, "\n---") {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		only := true
		for _, line := range strings.Split(d, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				only = false
				break
			}
		}
		if only {
			continue
		}
		docs = append(docs, []byte(d))
	}
	return docs, nil
}

func parseObjects(manifest string) ([]object, error) {
	docs, err := splitDocs(manifest)
	if err != nil {
		return nil, err
	}
	var out []object
	for i, d := range docs {
		var o object
		if err := yaml.UnmarshalStrict(d, &o); err != nil {
			return nil, fmt.Errorf("document %d: %w\n%s", i, err, d)
		}
		out = append(out, o)
	}
	return out, nil
}

// render renders and parses, failing the test on any error.
func render(t testing.TB, vals map[string]any) []object {
	t.Helper()
	m, err := renderChart(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	objs, err := parseObjects(m)
	if err != nil {
		t.Fatalf("parse the render: %v", err)
	}
	return objs
}

// renderManifest renders, failing the test on any error.
func renderManifest(t testing.TB, vals map[string]any) string {
	t.Helper()
	m, err := renderChart(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return m
}

// values builds chart values from YAML.
func values(t testing.TB, doc string) map[string]any {
	t.Helper()
	v := map[string]any{}
	if err := yaml.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatalf("test values: %v", err)
	}
	return v
}

// required is the one value a user must give: the manifests' placeholder
// range, so that renders compare with the kustomize install.
const required = "networkPolicy:\n  controlPlaneCIDRs: [172.16.0.0/28]\n"

func str(o object, path ...string) string {
	v, _ := get(o, path...).(string)
	return v
}

func get(o any, path ...string) any {
	for _, p := range path {
		m, ok := o.(map[string]any)
		if !ok {
			return nil
		}
		o = m[p]
	}
	return o
}

func id(o object) string {
	if ns := str(o, "metadata", "namespace"); ns != "" {
		return str(o, "kind") + "/" + ns + "/" + str(o, "metadata", "name")
	}
	return str(o, "kind") + "/" + str(o, "metadata", "name")
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
