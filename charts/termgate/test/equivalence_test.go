package charttest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/kio"
)

// A difference between the chart's default render and the kustomize install
// that the equivalence test allows. Every one is listed here (and in
// docs/install.md): nothing else may differ, object by object.
type difference struct {
	what string
	// chart and manifests normalise one object of each side in place; nil
	// leaves that side as it is. Each returns an error when the object does
	// not hold what the difference says it holds, so that a stale entry
	// fails too.
	chart, manifests func(o object) error
	// both, when set, sees the two sides of one object (chart first).
	both func(chart, manifests object) error
}

// helmLabels are the labels the chart adds to every object's metadata
// (never to selectors or pod templates).
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

var differences = []difference{
	{
		what: "Helm's standard labels (helm.sh/chart, app.kubernetes.io/managed-by, instance, version) on every object's metadata",
		chart: func(o object) error {
			labels, _ := get(o, "metadata", "labels").(map[string]any)
			for _, k := range helmLabels {
				if _, ok := labels[k]; !ok {
					return fmt.Errorf("label %s missing", k)
				}
				delete(labels, k)
			}
			return nil
		},
	},
}

// kustomize renders a kustomization as `kubectl apply -k` does, as
// test/manifestcheck does.
func kustomize(t *testing.T, dir string) []object {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var out []object
	for _, r := range res.Resources() {
		out = append(out, toObject(t, r.MarshalJSON))
	}
	return out
}

// toObject decodes what marshal writes (a kustomize resource or YAML node)
// into an object.
func toObject(t *testing.T, marshal func() ([]byte, error)) object {
	t.Helper()
	b, err := marshal()
	if err != nil {
		t.Fatal(err)
	}
	var o object
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// withComponents writes a kustomization of an overlay plus components, as
// a user's own would be, and returns its folder.
func withComponents(t *testing.T, overlay string, components ...string) string {
	t.Helper()
	dir := t.TempDir()
	manifests := filepath.Join(repoRoot(t), "manifests")
	rel := func(p string) string {
		r, err := filepath.Rel(dir, filepath.Join(manifests, p))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- " + rel(overlay) + "\ncomponents:\n"
	for _, c := range components {
		k += "- " + rel(c) + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// parseLikeKustomize reads the chart's manifest with kustomize's own YAML
// library, so that both sides of the comparison come from one parser: Helm's
// (yaml.v2) and kustomize's (yaml.v3) read a folded scalar with
// more-indented lines differently (the policies' CEL), and the text itself
// is what must be the same.
func parseLikeKustomize(t *testing.T, manifest string) []object {
	t.Helper()
	nodes, err := (&kio.ByteReader{Reader: strings.NewReader(manifest), OmitReaderAnnotations: true}).Read()
	if err != nil {
		t.Fatalf("read the chart's manifest: %v", err)
	}
	var out []object
	for _, n := range nodes {
		out = append(out, toObject(t, n.MarshalJSON))
	}
	return out
}

// jsonRoundTrip makes the chart's objects the same Go shapes as
// kustomize's (numbers as float64).
func jsonRoundTrip(t *testing.T, objs []object) []object {
	t.Helper()
	b, err := json.Marshal(objs)
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func byID(t *testing.T, side string, objs []object) map[string]object {
	t.Helper()
	m := map[string]object{}
	for _, o := range objs {
		if _, dup := m[id(o)]; dup {
			t.Errorf("%s renders %s twice", side, id(o))
		}
		m[id(o)] = o
	}
	return m
}

func TestTheDefaultRenderIsTheKustomizeInstall(t *testing.T) {
	for _, tc := range []struct {
		name, values  string
		kustomization string
	}{
		{"selfManaged", "", filepath.Join(repoRoot(t), "manifests", "overlays", "self-managed")},
		{"certManager", "certificates: {mode: certManager}\n", filepath.Join(repoRoot(t), "manifests", "overlays", "cert-manager")},
		{"selfManaged with the notifier and the drain-order policy",
			"notifier: {enabled: true}\ndrainOrderPolicy: {enabled: true}\n",
			"components"},
		{"certManager with the notifier",
			"certificates: {mode: certManager}\nnotifier: {enabled: true}\n",
			"cert-manager+notifier"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.kustomization
			switch dir {
			case "components":
				dir = withComponents(t, "overlays/self-managed", "components/notifier", "components/drain-order-policy")
			case "cert-manager+notifier":
				dir = withComponents(t, "overlays/cert-manager", "components/notifier")
			}
			want := byID(t, "kustomize", kustomize(t, dir))
			got := byID(t, "the chart", parseLikeKustomize(t, renderManifest(t, values(t, required+tc.values))))
			compareInstalls(t, got, want)
		})
	}
}

func compareInstalls(t *testing.T, got, want map[string]object) {
	t.Helper()
	var ids []string
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("the kustomize install has %s, the chart does not render it", k)
			continue
		}
		ids = append(ids, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("the chart renders %s, which the kustomize install does not have", k)
		}
	}
	sort.Strings(ids)
	for _, k := range ids {
		g, w := got[k], want[k]
		for _, d := range differences {
			if d.chart != nil {
				if err := d.chart(g); err != nil {
					t.Errorf("%s: the chart side of %q: %v", k, d.what, err)
				}
			}
			if d.manifests != nil {
				if err := d.manifests(w); err != nil {
					t.Errorf("%s: the manifests' side of %q: %v", k, d.what, err)
				}
			}
			if d.both != nil {
				if err := d.both(g, w); err != nil {
					t.Errorf("%s: %q: %v", k, d.what, err)
				}
			}
		}
		if diffs := diff("", g, w); len(diffs) > 0 {
			t.Errorf("%s differs between the chart (got) and the kustomize install (want):\n  %s", k, strings.Join(diffs, "\n  "))
		}
	}
}

// diff lists the paths where a and b differ.
func diff(path string, a, b any) []string {
	if reflect.DeepEqual(a, b) {
		return nil
	}
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for k := range av {
			keys[k] = true
		}
		for k := range bv {
			keys[k] = true
		}
		var sorted []string
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		var out []string
		for _, k := range sorted {
			out = append(out, diff(path+"."+k, av[k], bv[k])...)
		}
		return out
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			break
		}
		var out []string
		for i := range av {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), av[i], bv[i])...)
		}
		return out
	}
	ga, _ := json.Marshal(a)
	gb, _ := json.Marshal(b)
	return []string{fmt.Sprintf("%s: got %s, want %s", path, ga, gb)}
}
