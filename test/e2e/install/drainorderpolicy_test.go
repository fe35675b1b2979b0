package install

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

const overridesLabel = "termgate.dev/drain-order-overrides"

// installDrainOrderPolicy renders the self-managed overlay with the
// drain-order component, as a user's overlay lists it, and installs the
// component's policy and binding. The binding is limited to namespaces
// labelled scope, so the tests running beside this one never meet it; the
// policy's own namespace selector (allowed namespaces, kube-system) is the
// shipped one. It returns the rendered Namespace of the agent.
func installDrainOrderPolicy(t *testing.T, scope string) *corev1.Namespace {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "manifests")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(root, "manifests"))); err != nil {
		t.Fatalf("copy manifests: %v", err)
	}
	overlay := filepath.Join(dir, "overlays", "with-drain-order-policy")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	kustomization := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../self-managed\ncomponents:\n- ../../components/drain-order-policy\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kustomization), 0o600); err != nil {
		t.Fatal(err)
	}
	objs := builtObjects(t, kubectl(t, "kustomize", overlay))
	policy := findObject(t, objs, "ValidatingAdmissionPolicy", "termgate-drain-order-overrides")
	binding := findObject(t, objs, "ValidatingAdmissionPolicyBinding", "termgate-drain-order-overrides")
	policy.SetName(policy.GetName() + "-" + scope)
	binding.SetName(binding.GetName() + "-" + scope)
	binding.Object["spec"].(map[string]any)["policyName"] = policy.GetName()
	binding.Object["spec"].(map[string]any)["matchResources"] = map[string]any{
		"namespaceSelector": map[string]any{"matchLabels": map[string]any{"termgate.dev/test-scope": scope}},
	}
	file := filepath.Join(t.TempDir(), "drain-order-policy.yaml")
	writeObjects(t, file, policy, binding)
	kubectl(t, "apply", "--server-side", "--field-manager=termgate-test", "-f", file)
	t.Cleanup(func() {
		adm := env.Client.AdmissionregistrationV1()
		_ = adm.ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.GetName(), metav1.DeleteOptions{})
		_ = adm.ValidatingAdmissionPolicies().Delete(context.Background(), policy.GetName(), metav1.DeleteOptions{})
	})
	ns := &corev1.Namespace{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(findObject(t, objs, "Namespace", "termgate-agent").Object, ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

// labelNamespace sets (or, with value "", removes) a label on ns.
func labelNamespace(t *testing.T, ns, key, value string) {
	t.Helper()
	var v any = value
	if value == "" {
		v = nil
	}
	patch := mustJSON(t, map[string]any{"metadata": map[string]any{"labels": map[string]any{key: v}}})
	if _, err := env.Client.CoreV1().Namespaces().Patch(ctx(t), ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func withDrainOrder(order string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Annotations = map[string]string{nodemark.AnnotationDrainOrder: order}
	}
}

// TestTheDrainOrderPolicyKeepsTenantsFromOverridingTheDrain: outside the
// namespaces an administrator allows, the API server refuses the system and
// keep drain orders and tolerations of the termination taint, on creation
// and on the update that adds them; an update that adds nothing is allowed
// even to a pod that holds one; allowed namespaces and every other drain
// order and toleration are untouched.
func TestTheDrainOrderPolicyKeepsTenantsFromOverridingTheDrain(t *testing.T) {
	scope := rand.String(6)
	agentNamespace := installDrainOrderPolicy(t, scope)
	tenant, allowed := testenv.Namespace(t, env.Client), testenv.Namespace(t, env.Client)
	for _, ns := range []string{tenant, allowed} {
		labelNamespace(t, ns, "termgate.dev/test-scope", scope)
	}
	labelNamespace(t, allowed, overridesLabel, "allowed")
	const refused = "reserved for namespaces labelled " + overridesLabel + "=allowed"
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	create := func(ctx context.Context, p *corev1.Pod) error {
		_, err := env.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, dryRun)
		return err
	}
	testenv.Eventually(t, policyPropagation, "the drain-order policy refusing a keep order", func(ctx context.Context) (bool, string, error) {
		err := create(ctx, kit.Pod(tenant, "probe", withDrainOrder("keep")))
		if err == nil {
			return false, "keep allowed", nil
		}
		return strings.Contains(err.Error(), refused), err.Error(), nil
	})

	termgateToleration := corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	everything := corev1.Toleration{Operator: corev1.TolerationOpExists}
	delayed := corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: new(int64)}
	cases := map[string]struct {
		pod     *corev1.Pod
		refused bool
	}{
		"A keep order in a tenant's namespace is refused.":                     {pod: kit.Pod(tenant, "keep", withDrainOrder("keep")), refused: true},
		"A system order in a tenant's namespace is refused.":                   {pod: kit.Pod(tenant, "system", withDrainOrder("system")), refused: true},
		"Tolerating the termination taint in a tenant's namespace is refused.": {pod: kit.Pod(tenant, "tolerates", kit.Tolerating(termgateToleration)), refused: true},
		"Tolerating it for a while is refused too.":                            {pod: kit.Pod(tenant, "delayed-toleration", kit.Tolerating(delayed)), refused: true},
		"Tolerating every taint in a tenant's namespace is refused.":           {pod: kit.Pod(tenant, "everything", kit.Tolerating(everything)), refused: true},
		"A regular order in a tenant's namespace passes.":                      {pod: kit.Pod(tenant, "regular", withDrainOrder("regular"))},
		"A delayed order in a tenant's namespace passes.":                      {pod: kit.Pod(tenant, "delayed", withDrainOrder("delayed:10s"))},
		"Tolerating another taint in a tenant's namespace passes.": {pod: kit.Pod(tenant, "other-taint",
			kit.Tolerating(corev1.Toleration{Key: "example.com/gpu", Operator: corev1.TolerationOpExists}))},
		"A keep order in an allowed namespace passes.":                     {pod: kit.Pod(allowed, "keep", withDrainOrder("keep"))},
		"Tolerating every taint in an allowed namespace passes.":           {pod: kit.Pod(allowed, "everything", kit.Tolerating(everything))},
		"Tolerating the termination taint in an allowed namespace passes.": {pod: kit.Pod(allowed, "tolerates", kit.Tolerating(termgateToleration))},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := create(ctx(t), tc.pod)
			switch {
			case tc.refused && (err == nil || !strings.Contains(err.Error(), refused)):
				t.Fatalf("got %v, want the policy's refusal", err)
			case !tc.refused && err != nil:
				t.Fatalf("refused: %v", err)
			}
		})
	}

	t.Run("An update that adds an override is refused.", func(t *testing.T) {
		createPod(t, kit.Pod(tenant, "plain"))
		for what, patch := range map[string]map[string]any{
			"keep order":             {"metadata": map[string]any{"annotations": map[string]any{nodemark.AnnotationDrainOrder: "keep"}}},
			"termination toleration": {"spec": map[string]any{"tolerations": []corev1.Toleration{termgateToleration}}},
		} {
			_, err := env.Client.CoreV1().Pods(tenant).Patch(ctx(t), "plain", types.StrategicMergePatchType, mustJSON(t, patch), metav1.PatchOptions{})
			if err == nil || !strings.Contains(err.Error(), refused) {
				t.Errorf("adding a %s: got %v, want the policy's refusal", what, err)
			}
		}
	})
	t.Run("An update of a pod that holds an override but adds none passes.", func(t *testing.T) {
		ns := testenv.Namespace(t, env.Client)
		labelNamespace(t, ns, "termgate.dev/test-scope", scope)
		labelNamespace(t, ns, overridesLabel, "allowed")
		testenv.Eventually(t, policyPropagation, "the namespace allowed", func(ctx context.Context) (bool, string, error) {
			_, err := env.Client.CoreV1().Pods(ns).Create(ctx, kit.Pod(ns, "kept", withDrainOrder("keep"), kit.Tolerating(everything)), metav1.CreateOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			return true, "", nil
		})
		labelNamespace(t, ns, overridesLabel, "")
		// Once the namespace is no longer allowed, new overrides are
		// refused there, but the pod that holds one is not stuck.
		testenv.Eventually(t, policyPropagation, "the namespace no longer allowed", func(ctx context.Context) (bool, string, error) {
			err := create(ctx, kit.Pod(ns, "probe", withDrainOrder("keep")))
			return err != nil && strings.Contains(err.Error(), refused), "keep still allowed", nil
		})
		patch := mustJSON(t, map[string]any{"metadata": map[string]any{"labels": map[string]any{"example.com/rollout": "2"}, "finalizers": []string{}}})
		if _, err := env.Client.CoreV1().Pods(ns).Patch(ctx(t), "kept", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatalf("updating a pod whose override predates the policy: %v", err)
		}
	})

	// The component allows termgate's own agent, which tolerates every
	// taint: a namespace labelled as the rendered agent namespace admits
	// the agent's tolerations.
	t.Run("The agent's namespace as rendered admits the agent's tolerations.", func(t *testing.T) {
		ns := testenv.Namespace(t, env.Client)
		labelNamespace(t, ns, "termgate.dev/test-scope", scope)
		for k, v := range agentNamespace.Labels {
			labelNamespace(t, ns, k, v)
		}
		testenv.Eventually(t, policyPropagation, "the agent's tolerations admitted", func(ctx context.Context) (bool, string, error) {
			err := create(ctx, kit.Pod(ns, "agent", kit.Tolerating(everything)))
			if err != nil {
				return false, err.Error(), nil
			}
			return true, "", nil
		})
	})
}
