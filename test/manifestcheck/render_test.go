// Package manifestcheck_test checks the shipped manifests as kustomize
// renders them for users, without a cluster: what each role may do against
// an explicit allow-list, the limits and security settings of every
// workload, the namespaces' Pod Security levels, how each admission
// registration fails, and that the policies name the same keys as nodemark.
// A change that widens any of these fails here until the lists below are
// changed with it, in review.
package manifestcheck_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// manifests is the repository's manifests folder.
func manifests(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the repository")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "manifests")
}

// render builds a kustomization as `kubectl apply -k` would.
func render(dir string) ([]*unstructured.Unstructured, error) {
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range resources.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("render %s: %w", dir, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("render %s: %w", dir, err)
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// rendered caches installs: every test reads the same renders.
var rendered struct {
	once sync.Once
	objs map[string][]*unstructured.Unstructured
	err  error
}

// installs are what users apply: each overlay, and the self-managed one
// with the optional drain-order policy component.
func installs(t *testing.T) map[string][]*unstructured.Unstructured {
	t.Helper()
	rendered.once.Do(func() { rendered.objs, rendered.err = renderInstalls(manifests(t)) })
	if rendered.err != nil {
		t.Fatal(rendered.err)
	}
	return rendered.objs
}

func renderInstalls(root string) (map[string][]*unstructured.Unstructured, error) {
	// kustomize takes relative paths only.
	withComponent, err := os.MkdirTemp("", "termgate-manifestcheck-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(withComponent)
	rel, err := filepath.Rel(withComponent, root)
	if err != nil {
		return nil, err
	}
	kustomization := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- %s\ncomponents:\n- %s\n",
		filepath.Join(rel, "overlays", "self-managed"), filepath.Join(rel, "components", "drain-order-policy"))
	if err := os.WriteFile(filepath.Join(withComponent, "kustomization.yaml"), []byte(kustomization), 0o600); err != nil {
		return nil, err
	}
	out := map[string][]*unstructured.Unstructured{}
	for name, dir := range map[string]string{
		"self-managed":                      filepath.Join(root, "overlays", "self-managed"),
		"cert-manager":                      filepath.Join(root, "overlays", "cert-manager"),
		"self-managed + drain-order-policy": withComponent,
	} {
		if out[name], err = render(dir); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// forEachInstall runs check on every install as a subtest.
func forEachInstall(t *testing.T, check func(t *testing.T, objs []*unstructured.Unstructured)) {
	t.Helper()
	for name, objs := range installs(t) {
		t.Run(name, func(t *testing.T) { check(t, objs) })
	}
}

func ofKind(objs []*unstructured.Unstructured, kinds ...string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		for _, k := range kinds {
			if o.GetKind() == k {
				out = append(out, o)
			}
		}
	}
	return out
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("the render holds no %s %s", kind, name)
	return nil
}

// id names an object for messages and lists: Kind/name, or
// Kind/namespace/name.
func id(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return o.GetKind() + "/" + ns + "/" + o.GetName()
	}
	return o.GetKind() + "/" + o.GetName()
}
