package install

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/testenv"
)

// Marks an administrator put on the node before the agent touches it, so
// that every check below also proves the agent cannot disturb them.
const (
	foreignAnnotation = "example.com/owner"
	foreignLabel      = "example.com/pool"
	foreignTaintKey   = "example.com/dedicated"
)

// withForeignMarks gives node an annotation, a label and a taint that are
// not termgate's, and removes them when the test ends.
func withForeignMarks(t *testing.T, node string) {
	t.Helper()
	patchNode(t, node, func(n *corev1.Node) {
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		n.Annotations[foreignAnnotation] = "ops"
		n.Labels[foreignLabel] = "batch"
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: foreignTaintKey, Value: "batch", Effect: corev1.TaintEffectPreferNoSchedule})
	})
	t.Cleanup(func() {
		patchNode(t, node, func(n *corev1.Node) {
			delete(n.Annotations, foreignAnnotation)
			delete(n.Labels, foreignLabel)
			n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == foreignTaintKey })
		})
	})
}

// The patches below have the shapes agent/mark writes (webhook/ may not
// import agent/): one strategic-merge patch guarded by resourceVersion with
// annotations, the LB label and the whole taint list; the condition as a
// status patch; the unmark as the same patch with nulls and the condition's
// $patch: delete.

func agentMarkPatch(t *testing.T, n *corev1.Node, m nodemark.Mark) []byte {
	t.Helper()
	annotations := map[string]any{}
	for k, v := range m.Annotations() {
		annotations[k] = v
	}
	labels := map[string]any{}
	if _, has := n.Labels[nodemark.LabelExcludeFromLB]; !has {
		labels[nodemark.LabelExcludeFromLB] = "true"
		annotations[nodemark.AnnotationLBLabelAdded] = "true"
	}
	taints := append(withoutTermgateTaint(n.Spec.Taints), corev1.Taint{Key: nodemark.TaintKey, Value: string(m.Reason), Effect: corev1.TaintEffectNoSchedule})
	return agentNodePatch(t, n, annotations, labels, taints)
}

func agentUnmarkPatch(t *testing.T, n *corev1.Node) []byte {
	t.Helper()
	annotations := map[string]any{}
	for _, k := range append(slices.Clone(nodemark.AnnotationKeys), nodemark.AnnotationLBLabelAdded) {
		if _, ok := n.Annotations[k]; ok {
			annotations[k] = nil
		}
	}
	labels := map[string]any{}
	if n.Annotations[nodemark.AnnotationLBLabelAdded] == "true" {
		labels[nodemark.LabelExcludeFromLB] = nil
	}
	return agentNodePatch(t, n, annotations, labels, withoutTermgateTaint(n.Spec.Taints))
}

func agentNodePatch(t *testing.T, n *corev1.Node, annotations, labels map[string]any, taints []corev1.Taint) []byte {
	t.Helper()
	if taints == nil {
		taints = []corev1.Taint{}
	}
	return mustJSON(t, map[string]any{
		"metadata": map[string]any{"resourceVersion": n.ResourceVersion, "annotations": annotations, "labels": labels},
		"spec":     map[string]any{"taints": taints},
	})
}

func agentConditionPatch(t *testing.T, m nodemark.Mark, now time.Time) []byte {
	t.Helper()
	return mustJSON(t, map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: nodemark.ConditionType, Status: corev1.ConditionTrue, Reason: string(m.Reason),
		Message:           "Preempted: node terminating; deadline " + m.Deadline.UTC().Format(time.RFC3339),
		LastHeartbeatTime: metav1.NewTime(now), LastTransitionTime: metav1.NewTime(now),
	}}}})
}

func agentConditionRemoval(t *testing.T) []byte {
	t.Helper()
	return mustJSON(t, map[string]any{"status": map[string]any{"conditions": []map[string]any{
		{"type": nodemark.ConditionType, "$patch": "delete"},
	}}})
}

func withoutTermgateTaint(taints []corev1.Taint) []corev1.Taint {
	return slices.DeleteFunc(slices.Clone(taints), func(tn corev1.Taint) bool { return tn.Key == nodemark.TaintKey })
}

// patchAs patches node (or its status) with the agent's field manager.
func patchAs(t *testing.T, c kubernetes.Interface, node string, pt types.PatchType, body []byte, subresources ...string) (*corev1.Node, error) {
	t.Helper()
	return c.CoreV1().Nodes().Patch(ctx(t), node, pt, body, metav1.PatchOptions{FieldManager: nodemark.FieldManager}, subresources...)
}

func TestTheAgentsOwnMarkConditionAndUnmarkPassThePolicy(t *testing.T) {
	own := nodeNames(t)[2]
	withForeignMarks(t, own)
	agent := agentClient(t, own)
	t.Cleanup(func() { unmarkNode(t, own) })
	now := time.Now()
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(30 * time.Second), BootID: "vap-test"}

	// The agent works from its own (informer) copy, read with its own token.
	before := getNode(t, agent, own)
	marked, err := patchAs(t, agent, own, types.StrategicMergePatchType, agentMarkPatch(t, before, m))
	if err != nil {
		t.Fatalf("the agent's mark was refused: %v", err)
	}
	if !slices.ContainsFunc(marked.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == nodemark.TaintKey }) ||
		!slices.ContainsFunc(marked.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == foreignTaintKey }) ||
		marked.Labels[nodemark.LabelExcludeFromLB] != "true" || marked.Annotations[nodemark.AnnotationState] != string(nodemark.StateTerminating) {
		t.Fatalf("mark not written as sent: taints %v, labels %v, annotations %v", marked.Spec.Taints, marked.Labels, marked.Annotations)
	}
	// The condition, then the same condition with a later heartbeat, as a
	// restarted agent writes it.
	for i := range 2 {
		if _, err := patchAs(t, agent, own, types.StrategicMergePatchType, agentConditionPatch(t, m, now.Add(time.Duration(i)*time.Second)), "status"); err != nil {
			t.Fatalf("the agent's condition (write %d) was refused: %v", i+1, err)
		}
	}
	// A mark computed from a stale copy: the API server's 409, not the
	// policy, must answer it, so the agent re-reads and retries.
	if _, err := patchAs(t, agent, own, types.StrategicMergePatchType, agentMarkPatch(t, before, m)); err == nil || !strings.Contains(err.Error(), "the object has been modified") {
		t.Fatalf("stale mark: got %v, want the API server's conflict", err)
	}

	unmarked, err := patchAs(t, agent, own, types.StrategicMergePatchType, agentUnmarkPatch(t, getNode(t, agent, own)))
	if err != nil {
		t.Fatalf("the agent's unmark was refused: %v", err)
	}
	if _, err := patchAs(t, agent, own, types.StrategicMergePatchType, agentConditionRemoval(t), "status"); err != nil {
		t.Fatalf("the agent's condition removal was refused: %v", err)
	}
	after := getNode(t, env.Client, own)
	if slices.ContainsFunc(unmarked.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == nodemark.TaintKey }) ||
		!slices.ContainsFunc(after.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == foreignTaintKey }) ||
		slices.ContainsFunc(after.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == nodemark.ConditionType }) {
		t.Fatalf("unmark left taints %v, conditions %v", after.Spec.Taints, after.Status.Conditions)
	}
	if _, has := after.Labels[nodemark.LabelExcludeFromLB]; has || after.Annotations[nodemark.AnnotationState] != "" {
		t.Fatalf("unmark left label or annotations: %v %v", after.Labels, after.Annotations)
	}
}

// TestThePolicyRefusesEveryOtherNodeChangeByTheAgent: every case but one
// must be refused with the policy's message for what it touches. The one
// that passes, a plain merge patch of a termgate annotation and the
// LB-exclusion label, has the shape of the refused foreign annotation and
// label cases, so those are refused for what they set, not how.
func TestThePolicyRefusesEveryOtherNodeChangeByTheAgent(t *testing.T) {
	names := nodeNames(t)
	own, other := names[2], names[1]
	withForeignMarks(t, own)
	agent := agentClient(t, own)
	t.Cleanup(func() { unmarkNode(t, own) })
	// unmarkNode leaves labels: drop the one the passing case sets.
	t.Cleanup(func() {
		patchNode(t, own, func(n *corev1.Node) {
			delete(n.Labels, nodemark.LabelExcludeFromLB)
			delete(n.Annotations, nodemark.AnnotationLBLabelAdded)
		})
	})
	now := time.Now()
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(30 * time.Second), BootID: "vap-test"}
	merge := func(v map[string]any) func(*testing.T, *corev1.Node) []byte {
		return func(t *testing.T, _ *corev1.Node) []byte { return mustJSON(t, v) }
	}
	const (
		otherNode   = "only the node its token is bound to"
		annotations = "only termgate's own annotations"
		longValue   = "at most 63 characters"
		labels      = "exclude-from-external-load-balancers label"
		lbLabel     = "add the load-balancer exclusion label only"
		lbRecord    = "set termgate.dev/lb-label-added"
		oneTaint    = "at most one termgate.dev/terminating taint"
		metadata    = "no node metadata but termgate's"
		spec        = "nothing else in its spec"
		status      = "nothing else in its status"
	)
	tests := map[string]struct {
		node   string
		status bool            // patch nodes/status instead of nodes
		pt     types.PatchType // strategic merge unless set
		patch  func(*testing.T, *corev1.Node) []byte
		// wantErr is part of the refusal; empty: the patch passes.
		wantErr string
	}{
		// Termgate's own marks pass.
		"A plain merge patch of a termgate annotation and the LB-exclusion label with its record passes.": {
			node: own, pt: types.MergePatchType, patch: merge(map[string]any{"metadata": map[string]any{
				"annotations": map[string]any{nodemark.AnnotationState: "advance", nodemark.AnnotationLBLabelAdded: "true"},
				"labels":      map[string]any{nodemark.LabelExcludeFromLB: "true"},
			}}),
		},
		// Another node.
		"The agent's own mark on another node is refused.": {
			node: other, patch: func(t *testing.T, n *corev1.Node) []byte { return agentMarkPatch(t, n, m) }, wantErr: otherNode,
		},
		"The agent's condition on another node is refused.": {
			node: other, status: true, patch: func(t *testing.T, _ *corev1.Node) []byte { return agentConditionPatch(t, m, now) }, wantErr: otherNode,
		},
		// Metadata.
		"A foreign annotation is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"annotations": map[string]any{"example.com/x": "y"}}}), wantErr: annotations,
		},
		"A termgate.dev/ annotation that termgate does not write is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"annotations": map[string]any{"termgate.dev/payload": "x"}}}), wantErr: annotations,
		},
		"A termgate annotation longer than 63 characters is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"annotations": map[string]any{nodemark.AnnotationReason: strings.Repeat("x", 64)}}}), wantErr: longValue,
		},
		"The LB-exclusion label without termgate's record is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"labels": map[string]any{nodemark.LabelExcludeFromLB: "true"}}}), wantErr: lbLabel,
		},
		"The LB-exclusion label with another value is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{
				"annotations": map[string]any{nodemark.AnnotationLBLabelAdded: "true"},
				"labels":      map[string]any{nodemark.LabelExcludeFromLB: "false"},
			}}), wantErr: lbLabel,
		},
		"termgate's record without the label it records is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"annotations": map[string]any{nodemark.AnnotationLBLabelAdded: "true"}}}), wantErr: lbRecord,
		},
		"Removing an administrator's annotation is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"annotations": map[string]any{foreignAnnotation: nil}}}), wantErr: annotations,
		},
		"A foreign label is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"labels": map[string]any{"role": "x"}}}), wantErr: labels,
		},
		"Changing an administrator's label is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"labels": map[string]any{foreignLabel: "web"}}}), wantErr: labels,
		},
		"A finalizer is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"finalizers": []string{"example.com/hold"}}}), wantErr: metadata,
		},
		"An owner reference is refused.": {
			node: own, patch: merge(map[string]any{"metadata": map[string]any{"ownerReferences": []map[string]any{
				{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "6b1f7c2e-0000-4000-8000-000000000001"},
			}}}), wantErr: metadata,
		},
		// Spec.
		"Cordoning is refused.": {
			node: own, patch: merge(map[string]any{"spec": map[string]any{"unschedulable": true}}), wantErr: spec,
		},
		"A foreign taint is refused.": {
			node: own, patch: func(t *testing.T, n *corev1.Node) []byte {
				return agentNodePatch(t, n, map[string]any{}, map[string]any{}, append(slices.Clone(n.Spec.Taints), corev1.Taint{Key: "example.com/x", Effect: corev1.TaintEffectNoSchedule}))
			}, wantErr: spec,
		},
		"A second termgate taint is refused.": {
			node: own, patch: func(t *testing.T, n *corev1.Node) []byte {
				return agentNodePatch(t, n, map[string]any{}, map[string]any{}, append(withoutTermgateTaint(n.Spec.Taints),
					corev1.Taint{Key: nodemark.TaintKey, Value: string(nodemark.ReasonPreempted), Effect: corev1.TaintEffectNoSchedule},
					corev1.Taint{Key: nodemark.TaintKey, Value: string(nodemark.ReasonPreempted), Effect: corev1.TaintEffectNoExecute}))
			}, wantErr: oneTaint,
		},
		"Removing an administrator's taint is refused.": {
			node: own, patch: func(t *testing.T, n *corev1.Node) []byte {
				return agentNodePatch(t, n, map[string]any{}, map[string]any{}, slices.DeleteFunc(slices.Clone(n.Spec.Taints), func(tn corev1.Taint) bool { return tn.Key == foreignTaintKey }))
			}, wantErr: spec,
		},
		"Setting a pod CIDR is refused.": {
			node: own, patch: merge(map[string]any{"spec": map[string]any{"podCIDR": "10.250.0.0/24", "podCIDRs": []string{"10.250.0.0/24"}}}), wantErr: spec,
		},
		// Status.
		"Declaring volumes in use is refused.": {
			node: own, status: true, patch: merge(map[string]any{"status": map[string]any{"volumesInUse": []string{"kubernetes.io/csi/pd^disk-1"}}}), wantErr: status,
		},
		"Changing capacity is refused.": {
			node: own, status: true, patch: merge(map[string]any{"status": map[string]any{"capacity": map[string]any{"pods": "1"}}}), wantErr: status,
		},
		"Changing addresses is refused.": {
			node: own, status: true, patch: merge(map[string]any{"status": map[string]any{"addresses": []map[string]any{{"type": "ExternalIP", "address": "203.0.113.9"}}}}), wantErr: status,
		},
		"Declaring attached volumes is refused.": {
			node: own, status: true, patch: merge(map[string]any{"status": map[string]any{"volumesAttached": []map[string]any{{"name": "kubernetes.io/csi/pd^disk-1", "devicePath": "/dev/sdb"}}}}), wantErr: status,
		},
		"Flipping another condition is refused.": {
			node: own, status: true, patch: merge(map[string]any{"status": map[string]any{"conditions": []map[string]any{
				{"type": "Ready", "status": "False", "reason": "Forged", "lastHeartbeatTime": now.UTC().Format(time.RFC3339), "lastTransitionTime": now.UTC().Format(time.RFC3339)},
			}}}), wantErr: status,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// The passing case leaves the label and its record; every
			// case starts without them, as a node termgate has not
			// marked.
			patchNode(t, own, func(n *corev1.Node) {
				delete(n.Labels, nodemark.LabelExcludeFromLB)
				delete(n.Annotations, nodemark.AnnotationLBLabelAdded)
			})
			before := getNode(t, env.Client, tc.node)
			var sub []string
			if tc.status {
				sub = []string{"status"}
			}
			pt := tc.pt
			if pt == "" {
				pt = types.StrategicMergePatchType
			}
			_, err := patchAs(t, agent, tc.node, pt, tc.patch(t, before), sub...)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want a refusal containing %q", err, tc.wantErr)
			}
		})
	}
}

// Fields the API server guards itself: it drops the kubelet config sources
// unless that feature is in use, and refuses to change IDs once set. The
// policy need not answer these first, but the agent must not get them
// through: asserted on the stored Node, so a server that stopped guarding
// one would fail here.
func TestTheAgentCannotSetFieldsTheAPIServerGuards(t *testing.T) {
	own := nodeNames(t)[2]
	agent := agentClient(t, own)
	before := getNode(t, env.Client, own)
	tests := map[string]struct {
		status bool
		patch  map[string]any
		stored func(*corev1.Node) bool
	}{
		"spec.externalID": {
			patch:  map[string]any{"spec": map[string]any{"externalID": "i-0123"}},
			stored: func(n *corev1.Node) bool { return n.Spec.DoNotUseExternalID != before.Spec.DoNotUseExternalID },
		},
		"spec.providerID": {
			patch:  map[string]any{"spec": map[string]any{"providerID": "gce://project/zone/forged"}},
			stored: func(n *corev1.Node) bool { return n.Spec.ProviderID != before.Spec.ProviderID },
		},
		"spec.configSource": {
			patch:  map[string]any{"spec": map[string]any{"configSource": map[string]any{"configMap": map[string]any{"name": "kc", "namespace": "kube-system", "kubeletConfigKey": "kubelet"}}}},
			stored: func(n *corev1.Node) bool { return n.Spec.ConfigSource != nil },
		},
		"status.config": {
			status: true,
			patch:  map[string]any{"status": map[string]any{"config": map[string]any{"error": "forged"}}},
			stored: func(n *corev1.Node) bool { return n.Status.Config != nil },
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var sub []string
			if tc.status {
				sub = []string{"status"}
			}
			_, err := patchAs(t, agent, own, types.StrategicMergePatchType, mustJSON(t, tc.patch), sub...)
			if err == nil && tc.stored(getNode(t, env.Client, own)) {
				t.Fatalf("the agent set %s", name)
			}
		})
	}
}

func TestAnAgentTokenNotBoundToItsPodIsRefused(t *testing.T) {
	own := nodeNames(t)[2]
	// Makes sure the shipped RBAC and policy are in place.
	agentClient(t, own)
	node := getNode(t, env.Client, own)
	tests := map[string]*authenticationv1.BoundObjectReference{
		// Carries the node-name extra the policy checks, but no pod.
		"A token bound to the Node object is refused.": {Kind: "Node", APIVersion: "v1", Name: node.Name, UID: node.UID},
		"An unbound token is refused.":                 nil,
	}
	for name, ref := range tests {
		t.Run(name, func(t *testing.T) {
			c := agentTokenBoundTo(t, ref)
			body := mustJSON(t, map[string]any{"metadata": map[string]any{"annotations": map[string]any{nodemark.AnnotationState: "advance"}}})
			_, err := patchAs(t, c, own, types.MergePatchType, body)
			if err == nil || !strings.Contains(err.Error(), "token bound to its own pod") {
				t.Fatalf("got %v, want a refusal asking for a pod-bound token", err)
			}
		})
	}
}

// webhookAccount installs the webhook's account with the self-managed
// overlay's grants on termgate's webhook configurations and the policy
// limiting them to the CA bundle, and returns a client of that account.
func webhookAccount(t *testing.T) kubernetes.Interface {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{
		filepath.Join(manifest.StaticDir, "namespace.yaml"),
		filepath.Join(manifest.StaticDir, "webhook-rbac.yaml"),
		filepath.Join(manifest.StaticDir, "certificates-self-managed.yaml"),
		filepath.Join(manifest.StaticDir, "webhook-ca-bundle-policy.yaml"),
	} {
		if err := manifest.ApplyFile(ctx(t), env.Config, filepath.Join(root, "manifests", f)); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		adm := env.Client.AdmissionregistrationV1()
		_ = adm.ValidatingAdmissionPolicyBindings().Delete(context.Background(), "termgate-webhook-ca-bundle", metav1.DeleteOptions{})
		_ = adm.ValidatingAdmissionPolicies().Delete(context.Background(), "termgate-webhook-ca-bundle", metav1.DeleteOptions{})
	})
	tr, err := env.Client.CoreV1().ServiceAccounts(localrun.WebhookNamespace).CreateToken(ctx(t), localrun.WebhookServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("webhook token: %v", err)
	}
	return tokenClient(t, tr.Status.Token)
}

func TestTheWebhookMayChangeOnlyTheCABundleOfItsConfigurations(t *testing.T) {
	whClient := webhookAccount(t)
	pems, err := selfmanaged.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Every patch is a dry run: admission decides, the shared
	// configurations the other tests rely on stay as they are.
	dryRun := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}
	validating := func(ctx context.Context, ops ...map[string]any) error {
		_, err := whClient.AdmissionregistrationV1().ValidatingWebhookConfigurations().Patch(ctx, "termgate", types.JSONPatchType, mustJSON(t, ops), dryRun)
		return err
	}
	mutating := func(ctx context.Context, ops ...map[string]any) error {
		_, err := whClient.AdmissionregistrationV1().MutatingWebhookConfigurations().Patch(ctx, "termgate", types.JSONPatchType, mustJSON(t, ops), dryRun)
		return err
	}
	op := func(kind, path string, value any) map[string]any {
		return map[string]any{"op": kind, "path": path, "value": value}
	}
	const onlyCABundle = "may change only the caBundle"
	widen := op("add", "/webhooks/0/rules/-", map[string]any{
		"apiGroups": []string{"*"}, "apiVersions": []string{"*"}, "operations": []string{"*"}, "resources": []string{"*/*"},
	})
	testenv.Eventually(t, policyPropagation, "the CA bundle policy refusing wider rules", func(ctx context.Context) (bool, string, error) {
		err := validating(ctx, widen)
		if err == nil {
			return false, "wider rules allowed", nil
		}
		return strings.Contains(err.Error(), onlyCABundle), err.Error(), nil
	})

	// What the self-managed rotator sends (certs/selfmanaged): a test of
	// each webhook's name, then its caBundle.
	inject := []map[string]any{op("test", "/webhooks/0/name", "bind.termgate.dev"), op("add", "/webhooks/0/clientConfig/caBundle", pems.CA)}
	if err := validating(ctx(t), inject...); err != nil {
		t.Fatalf("CA injection into the validating configuration refused: %v", err)
	}
	if err := mutating(ctx(t), op("test", "/webhooks/0/name", "drain-order.termgate.dev"), op("add", "/webhooks/0/clientConfig/caBundle", pems.CA)); err != nil {
		t.Fatalf("CA injection into the mutating configuration refused: %v", err)
	}

	tests := map[string]func(context.Context) error{
		"Failing closed is refused.": func(ctx context.Context) error {
			return validating(ctx, op("replace", "/webhooks/0/failurePolicy", "Fail"))
		},
		"Dropping a matchCondition is refused.": func(ctx context.Context) error {
			return validating(ctx, map[string]any{"op": "remove", "path": "/webhooks/1/matchConditions/0"})
		},
		"Removing a webhook is refused.": func(ctx context.Context) error {
			return validating(ctx, map[string]any{"op": "remove", "path": "/webhooks/2"})
		},
		"Pointing a webhook elsewhere is refused.": func(ctx context.Context) error {
			return validating(ctx, op("replace", "/webhooks/0/clientConfig/url", "https://203.0.113.9/validate-binding"))
		},
		"A longer timeout on the mutating webhook is refused.": func(ctx context.Context) error {
			return mutating(ctx, op("replace", "/webhooks/0/timeoutSeconds", 10))
		},
		"A label on the configuration is refused.": func(ctx context.Context) error {
			return mutating(ctx, op("add", "/metadata/labels", map[string]string{"example.com/x": "y"}))
		},
	}
	for name, patch := range tests {
		t.Run(name, func(t *testing.T) {
			if err := patch(ctx(t)); err == nil || !strings.Contains(err.Error(), onlyCABundle) {
				t.Fatalf("got %v, want a refusal containing %q", err, onlyCABundle)
			}
		})
	}
}

// TestTheAgentNeverRemovesALoadBalancerLabelAnAdministratorSet: a node an
// administrator keeps out of load balancers carries the exclusion label
// without termgate's record (termgate.dev/lb-label-added). The agent's own
// mark and unmark leave it alone and pass; a stolen agent token can neither
// remove it, change it, nor claim it by writing the record first.
func TestTheAgentNeverRemovesALoadBalancerLabelAnAdministratorSet(t *testing.T) {
	own := nodeNames(t)[2]
	agent := agentClient(t, own)
	patchNode(t, own, func(n *corev1.Node) { n.Labels[nodemark.LabelExcludeFromLB] = "true" })
	t.Cleanup(func() {
		unmarkNode(t, own)
		patchNode(t, own, func(n *corev1.Node) {
			delete(n.Labels, nodemark.LabelExcludeFromLB)
			delete(n.Annotations, nodemark.AnnotationLBLabelAdded)
		})
	})
	now := time.Now()
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(30 * time.Second), BootID: "vap-lb"}

	marked, err := patchAs(t, agent, own, types.StrategicMergePatchType, agentMarkPatch(t, getNode(t, agent, own), m))
	if err != nil {
		t.Fatalf("the agent's mark of a node with an administrator's label was refused: %v", err)
	}
	if _, recorded := marked.Annotations[nodemark.AnnotationLBLabelAdded]; recorded {
		t.Fatal("the mark recorded an administrator's label as termgate's")
	}
	const refusal = "remove it only where that annotation says termgate added it"
	forged := map[string]map[string]any{
		"Removing the label is refused.": {"metadata": map[string]any{"labels": map[string]any{nodemark.LabelExcludeFromLB: nil}}},
		"Changing the label is refused.": {"metadata": map[string]any{"labels": map[string]any{nodemark.LabelExcludeFromLB: "false"}}},
		"Removing the label with termgate's record is refused.": {"metadata": map[string]any{
			"labels": map[string]any{nodemark.LabelExcludeFromLB: nil}, "annotations": map[string]any{nodemark.AnnotationLBLabelAdded: "true"},
		}},
		"Writing termgate's record is refused.": {"metadata": map[string]any{"annotations": map[string]any{nodemark.AnnotationLBLabelAdded: "true"}}},
	}
	for name, patch := range forged {
		t.Run(name, func(t *testing.T) {
			_, err := patchAs(t, agent, own, types.MergePatchType, mustJSON(t, patch))
			if err == nil || !(strings.Contains(err.Error(), refusal) || strings.Contains(err.Error(), "set termgate.dev/lb-label-added")) {
				t.Fatalf("got %v, want a refusal", err)
			}
		})
	}

	if _, err := patchAs(t, agent, own, types.StrategicMergePatchType, agentUnmarkPatch(t, getNode(t, agent, own))); err != nil {
		t.Fatalf("the agent's unmark was refused: %v", err)
	}
	if got := getNode(t, env.Client, own).Labels[nodemark.LabelExcludeFromLB]; got != "true" {
		t.Fatalf("after the unmark the administrator's label is %q, want true", got)
	}
}
