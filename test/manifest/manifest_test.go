package manifest_test

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"termgate.dev/termgate/test/manifest"
)

func TestDecodeKeepsEveryObjectAndSkipsEmptyDocuments(t *testing.T) {
	objs, err := manifest.Decode(strings.NewReader("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: b, namespace: a}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].GetKind() != "Namespace" || objs[1].GetNamespace() != "a" {
		t.Fatalf("decoded %v", objs)
	}
	if manifest.Find(objs, "ServiceAccount", "b") != objs[1] || manifest.Find(objs, "ServiceAccount", "a") != nil {
		t.Fatal("Find does not match kind and name")
	}
}

func TestDecodeNamesTheDocumentItCannotRead(t *testing.T) {
	_, err := manifest.Decode(strings.NewReader("apiVersion: v1\nkind: Namespace\n---\nkind: [unclosed\n"))
	if err == nil || !strings.Contains(err.Error(), "document 2") {
		t.Fatalf("got %v, want an error naming document 2", err)
	}
}

// A field the type does not have means the harness would read something
// other than what users install: refused, not dropped.
func TestIntoRefusesAFieldTheTypeDoesNotHave(t *testing.T) {
	objs, err := manifest.Decode(strings.NewReader("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {replicas: 2, replica: 3}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := manifest.Into(objs[0], &d); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Fatalf("got %v, want the unknown field refused", err)
	}
}

// Every shipped file reads into its typed objects: what the harness
// installs is what the files say.
func TestEveryShippedBaseFileReads(t *testing.T) {
	for _, f := range []string{"agent-daemonset.yaml", "webhook-deployment.yaml", "webhook-configurations.yaml", "agent-node-policy.yaml"} {
		path, err := manifest.Shipped(manifest.StaticDir, f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := manifest.ReadFile(path)
		if err != nil || len(objs) == 0 {
			t.Errorf("%s: %d objects, %v", f, len(objs), err)
		}
	}
	var d appsv1.Deployment
	path, _ := manifest.Shipped(manifest.StaticDir, "webhook-deployment.yaml")
	objs, _ := manifest.ReadFile(path)
	if o := manifest.Find(objs, "Deployment", "termgate-webhook"); o == nil {
		t.Fatal("no webhook Deployment")
	} else if err := manifest.Into(o, &d); err != nil || len(d.Spec.Template.Spec.Containers) == 0 {
		t.Fatalf("webhook Deployment: %v", err)
	}
}
