package install

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/testenv"
)

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
	for _, ns := range []string{localrun.WebhookNamespace, localrun.AgentNamespace} {
		if err := kit.EnsureNamespace(ctx(t), env.Client, ns); err != nil {
			t.Fatal(err)
		}
	}
	for _, overlay := range []string{"self-managed", "cert-manager"} {
		t.Run(overlay, func(t *testing.T) {
			built := renameWebhookConfigurations(kubectl(t, "kustomize", shipped(t, "overlays", overlay)))
			file := filepath.Join(t.TempDir(), overlay+".yaml")
			if err := os.WriteFile(file, []byte(built), 0o600); err != nil {
				t.Fatal(err)
			}
			out := kubectl(t, "apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=termgate-test", "-f", file)
			for _, want := range []string{
				"deployment.apps/termgate-webhook", "validatingwebhookconfiguration.admissionregistration.k8s.io/termgate-dry-run",
				"mutatingwebhookconfiguration.admissionregistration.k8s.io/termgate-dry-run", "validatingadmissionpolicy.admissionregistration.k8s.io/termgate-agent-node",
				"poddisruptionbudget.policy/termgate-webhook", "priorityclass.scheduling.k8s.io/termgate-webhook",
				"networkpolicy.networking.k8s.io/termgate-webhook", "resourcequota/termgate-critical-pods",
				"validatingadmissionpolicy.admissionregistration.k8s.io/termgate-webhook-ca-bundle",
				"validatingadmissionpolicybinding.admissionregistration.k8s.io/termgate-webhook-ca-bundle",
				"validatingadmissionpolicy.admissionregistration.k8s.io/termgate-agent-pod-deletes",
				"validatingadmissionpolicybinding.admissionregistration.k8s.io/termgate-agent-pod-deletes",
				"daemonset.apps/termgate-agent", "namespace/termgate-agent", "namespace/termgate",
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

func TestWebhookReplicasSpreadOverZonesOntoOnDemandNodes(t *testing.T) {
	// The shared cluster has one node per zone, two of them Spot. An
	// on-demand node next to each Spot node gives the scheduler the choice
	// the manifest must steer: in every zone, on-demand over Spot.
	id := rand.String(4)
	extra := []cluster.NodeSpec{
		{Name: "zz-" + id + "-ondemand-a", Zone: "us-central1-a", MachineType: "e2-standard-4"},
		{Name: "zz-" + id + "-ondemand-b", Zone: "us-central1-b", MachineType: "e2-standard-4"},
	}
	if err := env.AddNodes(ctx(t), extra...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range extra {
			_ = env.Client.CoreV1().Nodes().Delete(context.Background(), s.Name, metav1.DeleteOptions{})
		}
	})

	// The shipped Deployment, in a namespace of its own; only its placement
	// is under test (kwok plays the kubelet, the image never runs).
	ns := testenv.Namespace(t, env.Client)
	dep := findObject(t, builtObjects(t, kubectl(t, "kustomize", shipped(t, manifest.StaticDir))), "Deployment", "termgate-webhook")
	dep.SetNamespace(ns)
	deployment := &appsv1.Deployment{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(dep.Object, deployment); err != nil {
		t.Fatal(err)
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := manifest.ApplyFile(ctx(t), env.Config, filepath.Join(root, "manifests", manifest.StaticDir, "webhook-priorityclass.yaml")); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: deployment.Spec.Template.Spec.ServiceAccountName}}
	if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx(t), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.AppsV1().Deployments(ns).Create(ctx(t), deployment, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the shipped webhook Deployment: %v", err)
	}

	replicas := int(*deployment.Spec.Replicas)
	var pods []corev1.Pod
	testenv.Eventually(t, scheduleBudget, "webhook replicas bound", func(ctx context.Context) (bool, string, error) {
		list, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=termgate-webhook"})
		if err != nil {
			return false, "", err
		}
		pods = list.Items
		bound := 0
		for _, p := range pods {
			if p.Spec.NodeName != "" {
				bound++
			}
		}
		return bound == replicas && len(pods) == replicas, fmt.Sprintf("%d of %d bound", bound, replicas), nil
	})
	zones := map[string]string{}
	for _, p := range pods {
		n := getNode(t, env.Client, p.Spec.NodeName)
		if n.Labels[cluster.LabelSpot] == "true" {
			t.Errorf("replica %s placed on Spot node %s although an on-demand node in its zone had room", p.Name, n.Name)
		}
		zone := n.Labels["topology.kubernetes.io/zone"]
		if other, dup := zones[zone]; dup {
			t.Errorf("replicas %s and %s share zone %s", other, p.Name, zone)
		}
		zones[zone] = p.Name
	}
}

// podOf returns a pod of a rendered workload's template in its namespace,
// as its controller would create it.
func podOf(t *testing.T, workload *unstructured.Unstructured, name string) *corev1.Pod {
	t.Helper()
	tmpl, _, err := unstructured.NestedMap(workload.Object, "spec", "template")
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, pod); err != nil {
		t.Fatal(err)
	}
	pod.Name, pod.Namespace = name, workload.GetNamespace()
	return pod
}

// TestTheWebhooksNamespaceAdmitsItsPodsAndRefusesAHostNetworkPod: the
// webhook's namespace enforces the restricted Pod Security Standard, and
// the API server's PodSecurity admission holds it: the shipped webhook pod
// passes, the same pod with the host's network does not, nor does the
// agent's pod, which is admitted only in its own privileged namespace.
func TestTheWebhooksNamespaceAdmitsItsPodsAndRefusesAHostNetworkPod(t *testing.T) {
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	// The namespaces, accounts and PriorityClass as shipped: admission
	// checks the pods' references to them.
	for _, f := range []string{"namespace.yaml", "webhook-rbac.yaml", "webhook-priorityclass.yaml"} {
		if err := manifest.ApplyFile(ctx(t), env.Config, filepath.Join(root, "manifests", manifest.StaticDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := localrun.InstallAgentPermissions(ctx(t), localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config}); err != nil {
		t.Fatal(err)
	}
	objs := builtObjects(t, kubectl(t, "kustomize", shipped(t, "overlays", "self-managed")))
	webhookPod := podOf(t, findObject(t, objs, "Deployment", "termgate-webhook"), "webhook-pss")
	agentPod := podOf(t, findObject(t, objs, "DaemonSet", "termgate-agent"), "agent-pss")
	if webhookPod.Namespace != localrun.WebhookNamespace || agentPod.Namespace != localrun.AgentNamespace {
		t.Fatalf("rendered into %s and %s, want %s and %s", webhookPod.Namespace, agentPod.Namespace, localrun.WebhookNamespace, localrun.AgentNamespace)
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	create := func(p *corev1.Pod) error {
		_, err := env.Client.CoreV1().Pods(p.Namespace).Create(ctx(t), p, dryRun)
		return err
	}
	if err := create(webhookPod); err != nil {
		t.Fatalf("the shipped webhook pod was refused in its namespace: %v", err)
	}
	hostNet := webhookPod.DeepCopy()
	hostNet.Spec.HostNetwork = true
	if err := create(hostNet); err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) || !strings.Contains(err.Error(), "host namespaces") {
		t.Fatalf("a hostNetwork pod in the webhook's namespace: got %v, want PodSecurity's refusal", err)
	}
	agentThere := agentPod.DeepCopy()
	agentThere.Namespace = localrun.WebhookNamespace
	agentThere.Spec.ServiceAccountName = localrun.WebhookServiceAccount
	if err := create(agentThere); err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) {
		t.Fatalf("the agent's pod in the webhook's namespace: got %v, want PodSecurity's refusal", err)
	}
	if err := create(agentPod); err != nil {
		t.Fatalf("the shipped agent pod was refused in its own namespace: %v", err)
	}
}
