package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/notifier/sink"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

// kubectl runs the repository's kubectl against the local cluster.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	return testenv.Kubectl(t, env, args...)
}

// withNotifier returns an overlay of the self-managed install that adds the
// notifier component, as the component's comment tells users to.
func withNotifier(t *testing.T) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "manifests")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(root, "manifests"))); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "overlays", "with-notifier")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../self-managed\ncomponents:\n- ../../components/notifier\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o600); err != nil {
		t.Fatal(err)
	}
	return overlay
}

// notifierDocs keeps the notifier's objects of a kustomize build.
func notifierDocs(built string) []string {
	var out []string
	for _, d := range strings.Split(built, "\n---\n") {
		if strings.Contains(d, "name: termgate-notifier") {
			out = append(out, d)
		}
	}
	return out
}

func TestTheNotifierIsOffByDefaultAndItsComponentApplies(t *testing.T) {
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, overlay := range []string{"self-managed", "cert-manager"} {
		if docs := notifierDocs(kubectl(t, "kustomize", filepath.Join(root, "manifests", "overlays", overlay))); len(docs) != 0 {
			t.Errorf("overlay %s installs the notifier without the component: %d objects", overlay, len(docs))
		}
	}
	docs := notifierDocs(kubectl(t, "kustomize", withNotifier(t)))
	file := filepath.Join(t.TempDir(), "notifier.yaml")
	if err := os.WriteFile(file, []byte(strings.Join(docs, "\n---\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	out := kubectl(t, "apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=termgate-test", "-f", file)
	for _, want := range []string{"deployment.apps/termgate-notifier", "serviceaccount/termgate-notifier", "clusterrole.rbac.authorization.k8s.io/termgate-notifier",
		"role.rbac.authorization.k8s.io/termgate-notifier", "configmap/termgate-notifier", "poddisruptionbudget.policy/termgate-notifier"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run did not apply %s:\n%s", want, out)
		}
	}
	// The shipped sinks configuration is one the notifier accepts.
	for _, d := range docs {
		var cm corev1.ConfigMap
		if strings.Contains(d, "kind: ConfigMap") && yaml.Unmarshal([]byte(d), &cm) == nil {
			f, err := sink.ParseFile([]byte(cm.Data["config.yaml"]))
			if err == nil {
				err = sink.Validate(f)
			}
			if err != nil {
				t.Errorf("shipped config.yaml: %v", err)
			}
		}
	}
}

func TestTheNotifiersPodPassesTheRestrictedPodSecurityStandard(t *testing.T) {
	var dep appsv1.Deployment
	for _, d := range notifierDocs(kubectl(t, "kustomize", withNotifier(t))) {
		if strings.Contains(d, "kind: Deployment") {
			if err := yaml.UnmarshalStrict([]byte(d), &dep); err != nil {
				t.Fatal(err)
			}
		}
	}
	if dep.Name == "" {
		t.Fatal("no notifier Deployment in the build")
	}
	ctx := context.Background()
	ns := testenv.Namespace(t, env.Client)
	if _, err := env.Client.CoreV1().Namespaces().Patch(ctx, ns, "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"restricted"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(mutate func(*corev1.PodSpec)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "notifier-" + rand.String(5), Namespace: ns, Labels: dep.Spec.Template.Labels},
			Spec: *dep.Spec.Template.Spec.DeepCopy()}
		// The namespace's default account and no PriorityClass (the install's
		// termgate-webhook is not applied here): only the security context
		// is on trial.
		p.Spec.ServiceAccountName, p.Spec.PriorityClassName = "", ""
		mutate(&p.Spec)
		return p
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod(func(*corev1.PodSpec) {}), dryRun); err != nil {
		t.Errorf("the shipped pod is refused under restricted: %v", err)
	}
	// The namespace enforces: the same pod allowed to escalate is refused.
	_, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod(func(s *corev1.PodSpec) {
		s.Containers[0].SecurityContext.AllowPrivilegeEscalation = ptr.To(true)
	}), dryRun)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "restricted") {
		t.Errorf("a pod that may escalate was not refused under restricted: %v", err)
	}
}

func TestTheNotifiersAccountReadsOnlyItsOwnSecret(t *testing.T) {
	ctx := context.Background()
	if err := localrun.PutSinksSecret(ctx, env.Client, map[string]string{"events.url": "https://example.com/x"}); err != nil {
		t.Fatal(err)
	}
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unrelated-" + rand.String(5), Namespace: localrun.NotifierNamespace}}
	if _, err := env.Client.CoreV1().Secrets(other.Namespace).Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Secrets(other.Namespace).Delete(context.Background(), other.Name, metav1.DeleteOptions{})
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", notifierKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	as := kubernetes.NewForConfigOrDie(cfg)
	secrets := as.CoreV1().Secrets(localrun.NotifierNamespace)
	if _, err := secrets.Get(ctx, localrun.NotifierSinksSecret, metav1.GetOptions{}); err != nil {
		t.Errorf("the notifier cannot read its sinks Secret: %v", err)
	}
	if _, err := secrets.Get(ctx, other.Name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the notifier read another Secret of its namespace: %v", err)
	}
	if _, err := secrets.List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the notifier listed Secrets: %v", err)
	}
	if _, err := as.CoreV1().Nodes().Patch(ctx, "any", "application/merge-patch+json", []byte(`{}`), metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the notifier may patch Nodes: %v", err)
	}
}
