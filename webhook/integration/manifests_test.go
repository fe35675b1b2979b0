package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/cluster"
)

// kubectl runs the repository's kubectl (the control-plane binary) against
// the local cluster.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), filepath.Join(root, "bin", "kubectl"), append([]string{"--kubeconfig", env.Kubeconfig}, args...)...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// certManagerCRDs is the CRD folder of the cert-manager module in the build.
func certManagerCRDs(t *testing.T) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager").Output()
	if err != nil {
		t.Fatalf("locate cert-manager module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "deploy", "crds")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("cert-manager CRDs: %v", err)
	}
	return dir
}

func TestEveryOverlayPassesServerSideDryRun(t *testing.T) {
	kubectl(t, "apply", "--server-side", "--field-manager=termgate-test", "-f", certManagerCRDs(t))
	kubectl(t, "wait", "--for=condition=Established", "--timeout=30s",
		"crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io")
	// Namespaced objects need their namespace to exist for real.
	_, err := env.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "termgate"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, overlay := range []string{"self-managed", "cert-manager"} {
		t.Run(overlay, func(t *testing.T) {
			built := renameWebhookConfigurations(kubectl(t, "kustomize", filepath.Join("manifests", "overlays", overlay)))
			file := filepath.Join(t.TempDir(), overlay+".yaml")
			if err := os.WriteFile(file, []byte(built), 0o600); err != nil {
				t.Fatal(err)
			}
			out := kubectl(t, "apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=termgate-test", "-f", file)
			for _, want := range []string{
				"deployment.apps/termgate-webhook", "validatingwebhookconfiguration.admissionregistration.k8s.io/termgate-dry-run",
				"mutatingwebhookconfiguration.admissionregistration.k8s.io/termgate-dry-run", "validatingadmissionpolicy.admissionregistration.k8s.io/termgate-agent-node",
				"poddisruptionbudget.policy/termgate-webhook", "priorityclass.scheduling.k8s.io/termgate-webhook",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("dry run did not apply %s:\n%s", want, out)
				}
			}
			if overlay == "cert-manager" && !strings.Contains(out, "certificate.cert-manager.io/termgate-webhook-serving") {
				t.Errorf("dry run did not apply the serving Certificate:\n%s", out)
			}
		})
	}
}

// renameWebhookConfigurations gives the built webhook configurations another
// name: the shared cluster already holds "termgate" pointed at the test
// server by URL, and applying the Service form over it would merge both.
func renameWebhookConfigurations(built string) string {
	docs := strings.Split(built, "\n---\n")
	for i, d := range docs {
		if strings.Contains(d, "kind: ValidatingWebhookConfiguration\n") || strings.Contains(d, "kind: MutatingWebhookConfiguration\n") {
			docs[i] = strings.Replace(d, "\n  name: termgate\n", "\n  name: termgate-dry-run\n", 1)
		}
	}
	return strings.Join(docs, "\n---\n")
}
