package install

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	sigsyaml "sigs.k8s.io/yaml"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/testenv"
)

// policyPropagation bounds how long the API server takes to enforce a
// newly created ValidatingAdmissionPolicy: its informer delivers the policy
// within a second on this cluster; ten leave room for a loaded machine.
const policyPropagation = 10 * time.Second

// renamedOverlay writes, next to a copy of the repository's manifests, an
// overlay of overlays/self-managed the way a user renames termgate's
// namespaces: a patch of each Namespace object's name, plus the identity
// transformer after them. A name suffix keeps its cluster-wide objects apart
// from the ones the shared cluster already holds (and renames the service
// accounts as well).
func renamedOverlay(t *testing.T, names renamed) string {
	return renamedOverlayOf(t, "self-managed", names)
}

// renamed is what a user's overlay renames: the webhook's namespace, the
// agent's namespace and a name suffix.
type renamed struct{ webhookNamespace, agentNamespace, suffix string }

// renamedOverlayOf renames overlays/<of>, listing the transformers the
// documentation (docs/security.md) tells users to list for it.
func renamedOverlayOf(t *testing.T, of string, names renamed) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "manifests")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(root, "manifests"))); err != nil {
		t.Fatalf("copy manifests: %v", err)
	}
	overlay := filepath.Join(dir, "overlays", "renamed-"+of)
	kustomization := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
nameSuffix: ` + names.suffix + `
resources:
- ../` + of + `
patches:
- target: {kind: Namespace, name: ` + localrun.WebhookNamespace + `}
  patch: |-
    - {op: replace, path: /metadata/name, value: ` + names.webhookNamespace + `}
- target: {kind: Namespace, name: ` + localrun.AgentNamespace + `}
  patch: |-
    - {op: replace, path: /metadata/name, value: ` + names.agentNamespace + `}
transformers:
- ../../identity
`
	if of == "cert-manager" {
		kustomization += "- ../cert-manager/identity\n"
	}
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kustomization), 0o600); err != nil {
		t.Fatal(err)
	}
	return overlay
}

// builtObjects splits kustomize's output into objects.
func builtObjects(t *testing.T, built string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := manifest.Decode(strings.NewReader(built))
	if err != nil {
		t.Fatalf("parse built manifests: %v", err)
	}
	return objs
}

func findObject(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	o := manifest.Find(objs, kind, name)
	if o == nil {
		t.Fatalf("built manifests hold no %s %s", kind, name)
	}
	return o
}

// writeObjects writes objs as one multi-document YAML file.
func writeObjects(t *testing.T, file string, objs ...*unstructured.Unstructured) {
	t.Helper()
	var b bytes.Buffer
	for _, o := range objs {
		y, err := sigsyaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	if err := os.WriteFile(file, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// agentUsernameFlag returns the webhook's --agent-username as its container
// will see it: the rendered argument with $(VAR) expanded from the
// container's env, as the kubelet does.
func agentUsernameFlag(t *testing.T, deployment *unstructured.Unstructured) string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(deployment.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		c, _ := c.(map[string]any)
		if c["name"] != "webhook" {
			continue
		}
		for _, a := range localrun.ExpandedArgs(c) {
			if strings.HasPrefix(a, "--agent-username=") {
				return a
			}
		}
	}
	t.Fatal("the webhook container has no --agent-username argument")
	return ""
}

// flowSchemaAccount returns namespace/name of the one service account a
// FlowSchema's first rule names.
func flowSchemaAccount(t *testing.T, fs *unstructured.Unstructured) string {
	t.Helper()
	rules, _, _ := unstructured.NestedSlice(fs.Object, "spec", "rules")
	if len(rules) == 0 {
		t.Fatalf("FlowSchema %s has no rules", fs.GetName())
	}
	subjects, _, _ := unstructured.NestedSlice(rules[0].(map[string]any), "subjects")
	if len(subjects) != 1 {
		t.Fatalf("FlowSchema %s: %d subjects, want 1", fs.GetName(), len(subjects))
	}
	ns, _, _ := unstructured.NestedString(subjects[0].(map[string]any), "serviceAccount", "namespace")
	name, _, _ := unstructured.NestedString(subjects[0].(map[string]any), "serviceAccount", "name")
	return ns + "/" + name
}

// podBoundClient returns a client with a token of serviceAccount bound to
// pod, as the kubelet projects it.
func podBoundClient(t *testing.T, pod *corev1.Pod) kubernetes.Interface {
	t.Helper()
	tr, err := env.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx(t), pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for pod %s: %v", pod.Name, err)
	}
	return tokenClient(t, tr.Status.Token)
}

func TestARenamedNamespaceKeepsTheAgentConfined(t *testing.T) {
	id := rand.String(5)
	ns, agentNS, suffix := "tg-ops-"+id, "tg-ops-agent-"+id, "-"+id
	agentSA, agentUser := "termgate-agent"+suffix, "system:serviceaccount:"+agentNS+":termgate-agent"+suffix
	names := nodeNames(t)
	own, other := names[2], names[1]

	built := kubectl(t, "kustomize", renamedOverlay(t, renamed{webhookNamespace: ns, agentNamespace: agentNS, suffix: suffix}))
	objs := builtObjects(t, built)

	// The one place the identity lives reached every copy of it.
	if got := agentUsernameFlag(t, findObject(t, objs, "Deployment", "termgate-webhook"+suffix)); got != "--agent-username="+agentUser {
		t.Fatalf("webhook flag %s, want --agent-username=%s", got, agentUser)
	}

	// Both FlowSchemas put the renamed accounts ahead in API priority.
	for schema, account := range map[string]string{
		"termgate-agent-node-marks" + suffix: agentNS + "/" + agentSA, "termgate-webhook-reads" + suffix: ns + "/termgate-webhook" + suffix,
	} {
		if got := flowSchemaAccount(t, findObject(t, objs, "FlowSchema", schema)); got != account {
			t.Errorf("FlowSchema %s matches service account %s, want %s", schema, got, account)
		}
	}

	// The whole rendered overlay passes the API server's checks.
	for _, n := range []string{ns, agentNS} {
		if err := kit.EnsureNamespace(ctx(t), env.Client, n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Namespaces().Delete(context.Background(), n, metav1.DeleteOptions{})
		})
	}
	all := filepath.Join(t.TempDir(), "renamed.yaml")
	if err := os.WriteFile(all, []byte(built), 0o600); err != nil {
		t.Fatal(err)
	}
	out := kubectl(t, "apply", "--server-side", "--dry-run=server", "--field-manager=termgate-test", "-f", all)
	for _, want := range []string{
		"deployment.apps/termgate-webhook" + suffix, "daemonset.apps/termgate-agent" + suffix,
		"networkpolicy.networking.k8s.io/termgate-webhook" + suffix, "resourcequota/termgate-critical-pods" + suffix,
		"validatingadmissionpolicy.admissionregistration.k8s.io/termgate-agent-node" + suffix,
		"validatingadmissionpolicy.admissionregistration.k8s.io/termgate-agent-pod-deletes" + suffix,
		"flowschema.flowcontrol.apiserver.k8s.io/termgate-webhook-reads" + suffix,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run did not apply %s:\n%s", want, out)
		}
	}

	// Install the agent's side for real: account, RBAC, Node and delete
	// policies.
	agentSide := filepath.Join(t.TempDir(), "agent.yaml")
	writeObjects(t, agentSide,
		findObject(t, objs, "ServiceAccount", agentSA),
		findObject(t, objs, "ClusterRole", "termgate-agent"+suffix),
		findObject(t, objs, "ClusterRoleBinding", "termgate-agent"+suffix),
		findObject(t, objs, "ValidatingAdmissionPolicy", "termgate-agent-node"+suffix),
		findObject(t, objs, "ValidatingAdmissionPolicyBinding", "termgate-agent-node"+suffix),
		findObject(t, objs, "ValidatingAdmissionPolicy", "termgate-agent-pod-deletes"+suffix),
		findObject(t, objs, "ValidatingAdmissionPolicyBinding", "termgate-agent-pod-deletes"+suffix))
	kubectl(t, "apply", "--server-side", "--field-manager=termgate-test", "-f", agentSide)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rb, adm := env.Client.RbacV1(), env.Client.AdmissionregistrationV1()
		_ = rb.ClusterRoleBindings().Delete(ctx, "termgate-agent"+suffix, metav1.DeleteOptions{})
		_ = rb.ClusterRoles().Delete(ctx, "termgate-agent"+suffix, metav1.DeleteOptions{})
		for _, p := range []string{"termgate-agent-node" + suffix, "termgate-agent-pod-deletes" + suffix} {
			_ = adm.ValidatingAdmissionPolicyBindings().Delete(ctx, p, metav1.DeleteOptions{})
			_ = adm.ValidatingAdmissionPolicies().Delete(ctx, p, metav1.DeleteOptions{})
		}
	})

	// A stand-in DaemonSet pod of the renamed agent, and its token.
	agentPod := kit.Pod(agentNS, "agent", kit.OnNode(own), kit.Tolerating(corev1.Toleration{Operator: corev1.TolerationOpExists}))
	agentPod.Spec.ServiceAccountName = agentSA
	agentPod, err := env.Client.CoreV1().Pods(agentNS).Create(ctx(t), agentPod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent := podBoundClient(t, agentPod)

	// Node confinement: the renamed policy matches the renamed account.
	// Dry runs go through admission without writing anything.
	dryRun := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}, FieldManager: nodemark.FieldManager}
	annotate := mustJSON(t, map[string]any{"metadata": map[string]any{"annotations": map[string]any{nodemark.AnnotationState: "advance"}}})
	testenv.Eventually(t, policyPropagation, "the renamed policy refusing a patch of another node", func(ctx context.Context) (bool, string, error) {
		_, err := agent.CoreV1().Nodes().Patch(ctx, other, types.MergePatchType, annotate, dryRun)
		if err == nil {
			return false, "patch of " + other + " allowed", nil
		}
		return strings.Contains(err.Error(), "only the node its token is bound to"), err.Error(), nil
	})
	if _, err := agent.CoreV1().Nodes().Patch(ctx(t), own, types.MergePatchType, annotate, dryRun); err != nil {
		t.Fatalf("the renamed agent may not mark its own node: %v", err)
	}
	foreign := mustJSON(t, map[string]any{"metadata": map[string]any{"labels": map[string]any{"role": "x"}}})
	if _, err := agent.CoreV1().Nodes().Patch(ctx(t), own, types.MergePatchType, foreign, dryRun); err == nil || !strings.Contains(err.Error(), "exclude-from-external-load-balancers") {
		t.Fatalf("foreign label by the renamed agent: got %v, want a refusal", err)
	}

	// Eviction confinement: the rendered webhook configurations (their
	// matchCondition) and the rendered flag, served by termgate's binary.
	configs := t.TempDir()
	writeObjects(t, filepath.Join(configs, "webhook-configurations.yaml"),
		findObject(t, objs, "ValidatingWebhookConfiguration", "termgate"+suffix),
		findObject(t, objs, "MutatingWebhookConfiguration", "termgate"+suffix))
	w, err := localrun.StartWebhook(ctx(t), localrun.WebhookSpec{
		Binary: termgateBinary(t), Dir: t.TempDir(), Kubeconfig: env.Kubeconfig, Client: env.Client,
		Manifests: configs, Namespace: ns, Flags: []string{agentUsernameFlag(t, findObject(t, objs, "Deployment", "termgate-webhook"+suffix))},
	})
	if err != nil {
		t.Fatalf("start the webhook with the rendered configurations: %v", err)
	}
	t.Cleanup(w.Stop)

	work := testenv.Namespace(t, env.Client)
	createPod(t, kit.Pod(work, "here", kit.OnNode(own)))
	createPod(t, kit.Pod(work, "there", kit.OnNode(other)))
	createPod(t, kit.Pod(work, "here-too", kit.OnNode(own)))
	// The agent evicts only while its node drains.
	markNode(t, own, false)
	err = evict(agent, t, work, "there")
	if err == nil || !strings.Contains(err.Error(), "does not run on that node") {
		t.Fatalf("renamed agent's eviction on another node: got %v, want a refusal", err)
	}
	if err := evict(agent, t, work, "here"); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("renamed agent's eviction on its own node refused: %v", err)
	}

	// Delete confinement: the renamed delete policy matches the renamed
	// account (dry runs: admission decides, nothing is deleted).
	dryDelete := metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}
	testenv.Eventually(t, policyPropagation, "the renamed delete policy refusing a delete on another node", func(ctx context.Context) (bool, string, error) {
		err := agent.CoreV1().Pods(work).Delete(ctx, "there", dryDelete)
		if err == nil {
			return false, "delete on " + other + " allowed", nil
		}
		return strings.Contains(err.Error(), "may delete only pods on the node its token is bound to"), err.Error(), nil
	})
	if err := agent.CoreV1().Pods(work).Delete(ctx(t), "here-too", dryDelete); err != nil {
		t.Fatalf("renamed agent's delete on its own node refused: %v", err)
	}
}

// TestRenamedOverlaysKeepEveryNameInStep renders both overlays with another
// namespace and a name suffix, as a user's overlay does, and checks every
// place that repeats a renamed object's name inside a string or a field
// kustomize does not know: a miss there breaks the webhook's certificate
// (self-managed: the CA bundle cannot be written; cert-manager: nothing is
// issued or injected) without any error at apply time.
func TestRenamedOverlaysKeepEveryNameInStep(t *testing.T) {
	const ns, suffix = "ops-termgate", "-prod"
	names := renamed{webhookNamespace: ns, agentNamespace: "ops-termgate-agent", suffix: suffix}
	t.Run("self-managed", func(t *testing.T) {
		objs := builtObjects(t, kubectl(t, "kustomize", renamedOverlayOf(t, "self-managed", names)))
		expectNamespacesInStep(t, objs, names)
		config := findObject(t, objs, "ValidatingWebhookConfiguration", "termgate"+suffix).GetName()
		findObject(t, objs, "MutatingWebhookConfiguration", config)
		deployment := findObject(t, objs, "Deployment", "termgate-webhook"+suffix)
		expectString(t, "--webhook-config-name", containerEnv(t, deployment, "WEBHOOK_CONFIG_NAME"), config)
		expectString(t, "the certificate source's grant on the configurations",
			nestedString(t, findObject(t, objs, "ClusterRole", "termgate-webhook-certs"+suffix), "rules", 0, "resourceNames", 0), config)
	})
	t.Run("cert-manager", func(t *testing.T) {
		objs := builtObjects(t, kubectl(t, "kustomize", renamedOverlayOf(t, "cert-manager", names)))
		expectNamespacesInStep(t, objs, names)
		serving := findObject(t, objs, "Certificate", "termgate-webhook-serving"+suffix)
		ca := findObject(t, objs, "Certificate", "termgate-webhook-ca"+suffix)
		deployment := findObject(t, objs, "Deployment", "termgate-webhook"+suffix)
		expectString(t, "--certificate-name", containerEnv(t, deployment, "CERTIFICATE_NAME"), serving.GetName())
		expectString(t, "the webhook's grant on its Certificate",
			nestedString(t, findObject(t, objs, "Role", "termgate-webhook-certificate"+suffix), "rules", 0, "resourceNames", 0), serving.GetName())
		for _, kind := range []string{"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"} {
			expectString(t, kind+" inject-ca-from", findObject(t, objs, kind, "termgate"+suffix).GetAnnotations()["cert-manager.io/inject-ca-from"], ns+"/"+serving.GetName())
		}
		expectString(t, "the CA Certificate's issuer", nestedString(t, ca, "spec", "issuerRef", "name"), findObject(t, objs, "Issuer", "termgate-selfsigned"+suffix).GetName())
		expectString(t, "the serving Certificate's issuer", nestedString(t, serving, "spec", "issuerRef", "name"), findObject(t, objs, "Issuer", "termgate-ca"+suffix).GetName())
		expectString(t, "the serving Certificate's DNS name", nestedString(t, serving, "spec", "dnsNames", 0), "termgate-webhook"+suffix+"."+ns+".svc")
	})
}

// expectNamespacesInStep checks that a renamed render keeps the two parts
// apart and together: the agent's DaemonSet and account in the agent's
// namespace, everything else namespaced in the webhook's, every binding's
// service account rendered in the namespace it names, the webhook
// configurations calling the Service where it is, and no string left
// naming a default namespace.
func expectNamespacesInStep(t *testing.T, objs []*unstructured.Unstructured, names renamed) {
	t.Helper()
	agentSide := map[string]bool{"ServiceAccount/termgate-agent" + names.suffix: true, "DaemonSet/termgate-agent" + names.suffix: true,
		"ResourceQuota/termgate-critical-pods" + names.suffix: true}
	accounts := map[string]bool{}
	namespaces := map[string]bool{}
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			namespaces[o.GetName()] = true
		}
		if o.GetKind() == "ServiceAccount" {
			accounts[o.GetNamespace()+"/"+o.GetName()] = true
		}
	}
	if !namespaces[names.webhookNamespace] || !namespaces[names.agentNamespace] || len(namespaces) != 2 {
		t.Errorf("rendered Namespaces %v, want %s and %s", namespaces, names.webhookNamespace, names.agentNamespace)
	}
	var service string
	for _, o := range objs {
		id := o.GetKind() + "/" + o.GetName()
		if o.GetKind() == "Service" {
			service = o.GetNamespace()
		}
		if ns := o.GetNamespace(); ns != "" {
			want := names.webhookNamespace
			if agentSide[id] {
				want = names.agentNamespace
			}
			expectString(t, id+" namespace", ns, want)
		}
		subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
		for _, sub := range subjects {
			sub, _ := sub.(map[string]any)
			if sub["kind"] == "ServiceAccount" {
				if ref := fmt.Sprint(sub["namespace"], "/", sub["name"]); !accounts[ref] {
					t.Errorf("%s binds service account %s, which the render does not hold", id, ref)
				}
			}
		}
	}
	for _, kind := range []string{"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"} {
		webhooks, _, _ := unstructured.NestedSlice(findObject(t, objs, kind, "termgate"+names.suffix).Object, "webhooks")
		for _, w := range webhooks {
			ns, _, _ := unstructured.NestedString(w.(map[string]any), "clientConfig", "service", "namespace")
			expectString(t, kind+" service namespace", ns, service)
		}
	}
	all, err := sigsyaml.Marshal(objs)
	if err != nil {
		t.Fatal(err)
	}
	for _, stale := range []string{
		"system:serviceaccount:" + localrun.WebhookNamespace + ":", "system:serviceaccount:" + localrun.AgentNamespace + ":",
		"'" + localrun.WebhookNamespace + "'", "'" + localrun.AgentNamespace + "'", "." + localrun.WebhookNamespace + ".svc",
	} {
		if strings.Contains(string(all), stale) {
			t.Errorf("the render still names a default namespace: %q", stale)
		}
	}
}

func expectString(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s: %q, want %q", what, got, want)
	}
}

// nestedString reads a string at a path of map keys and list indexes.
func nestedString(t *testing.T, obj *unstructured.Unstructured, path ...any) string {
	t.Helper()
	var cur any = obj.Object
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := cur.(map[string]any)
			cur = m[k]
		case int:
			l, _ := cur.([]any)
			if k >= len(l) {
				t.Fatalf("%s %s: no element %d at %v", obj.GetKind(), obj.GetName(), k, path)
			}
			cur = l[k]
		}
	}
	v, ok := cur.(string)
	if !ok {
		t.Fatalf("%s %s: no string at %v", obj.GetKind(), obj.GetName(), path)
	}
	return v
}

// containerEnv returns the value of the webhook container's env var name.
func containerEnv(t *testing.T, deployment *unstructured.Unstructured, name string) string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(deployment.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		c, _ := c.(map[string]any)
		env, _, _ := unstructured.NestedSlice(c, "env")
		for _, e := range env {
			if e, _ := e.(map[string]any); e["name"] == name {
				v, _ := e["value"].(string)
				return v
			}
		}
	}
	t.Fatalf("Deployment %s has no env %s", deployment.GetName(), name)
	return ""
}
