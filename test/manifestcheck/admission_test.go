package manifestcheck_test

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"termgate.dev/termgate/nodemark"
)

// TestEveryAdmissionRegistrationFailsTheWayItMust: the pod paths fail open
// (a webhook that is down must never stop scheduling), the agent's
// evictions and every ValidatingAdmissionPolicy fail closed (confinement
// must hold with the webhook down), each policy is bound to deny, and the
// stamping answers within its one second.
func TestEveryAdmissionRegistrationFailsTheWayItMust(t *testing.T) {
	forEachInstall(t, func(t *testing.T, objs []*unstructured.Unstructured) {
		var v admissionregistrationv1.ValidatingWebhookConfiguration
		convert(t, find(t, objs, "ValidatingWebhookConfiguration", "termgate"), &v)
		for _, w := range v.Webhooks {
			want := admissionregistrationv1.Ignore
			if w.Name == "agent.termgate.dev" {
				want = admissionregistrationv1.Fail
				checkAgentWebhook(t, w)
			}
			if w.FailurePolicy == nil || *w.FailurePolicy != want {
				t.Errorf("webhook %s: failurePolicy %v, want %s", w.Name, w.FailurePolicy, want)
			}
			if w.TimeoutSeconds == nil || *w.TimeoutSeconds > 2 {
				t.Errorf("webhook %s: timeout %v, want at most 2 s", w.Name, w.TimeoutSeconds)
			}
		}
		var m admissionregistrationv1.MutatingWebhookConfiguration
		convert(t, find(t, objs, "MutatingWebhookConfiguration", "termgate"), &m)
		for _, w := range m.Webhooks {
			if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore {
				t.Errorf("webhook %s: failurePolicy %v, want Ignore", w.Name, w.FailurePolicy)
			}
			if w.TimeoutSeconds == nil || *w.TimeoutSeconds != 1 {
				t.Errorf("webhook %s: timeout %v, want 1 s (it calls no API)", w.Name, w.TimeoutSeconds)
			}
		}
		bound := map[string]bool{}
		for _, o := range ofKind(objs, "ValidatingAdmissionPolicyBinding") {
			var b admissionregistrationv1.ValidatingAdmissionPolicyBinding
			convert(t, o, &b)
			if !slices.Equal(b.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) {
				t.Errorf("binding %s: actions %v, want [Deny]", b.Name, b.Spec.ValidationActions)
			}
			bound[b.Spec.PolicyName] = true
		}
		for _, o := range ofKind(objs, "ValidatingAdmissionPolicy") {
			var p admissionregistrationv1.ValidatingAdmissionPolicy
			convert(t, o, &p)
			if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionregistrationv1.Fail {
				t.Errorf("policy %s: failurePolicy %v, want Fail", p.Name, p.Spec.FailurePolicy)
			}
			if !bound[p.Name] {
				t.Errorf("policy %s has no binding: it would never run", p.Name)
			}
		}
	})
}

// checkAgentWebhook: agent.termgate.dev sees the agent's evictions and
// nothing else (it fails closed, so anything more would be blocked while
// the webhook is down; deletes belong to the delete policy).
func checkAgentWebhook(t *testing.T, w admissionregistrationv1.ValidatingWebhook) {
	t.Helper()
	if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Resources, []string{"pods/eviction"}) ||
		!slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) {
		t.Errorf("webhook %s rules %+v, want pods/eviction CREATE only", w.Name, w.Rules)
	}
	if len(w.MatchConditions) != 1 || !strings.Contains(w.MatchConditions[0].Expression, "request.userInfo.username ==") {
		t.Errorf("webhook %s must match the agent's user only: %+v", w.Name, w.MatchConditions)
	}
}

func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
		t.Fatalf("%s: %v", id(o), err)
	}
}

// policy returns a rendered ValidatingAdmissionPolicy and its variables.
func policy(t *testing.T, objs []*unstructured.Unstructured, name string) (admissionregistrationv1.ValidatingAdmissionPolicy, map[string]string) {
	t.Helper()
	var p admissionregistrationv1.ValidatingAdmissionPolicy
	convert(t, find(t, objs, "ValidatingAdmissionPolicy", name), &p)
	vars := map[string]string{}
	for _, v := range p.Spec.Variables {
		vars[v.Name] = v.Expression
	}
	return p, vars
}

var quoted = regexp.MustCompile(`'([^']*)'`)

// literals returns the quoted strings of a CEL expression, in order.
func literals(expr string) []string {
	var out []string
	for _, m := range quoted.FindAllStringSubmatch(expr, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestTheNodePolicyNamesWhatNodemarkWrites keeps the Node policy and
// nodemark, the contract the agent writes by, in step: the annotation keys
// the policy allows are nodemark.OwnedAnnotationKeys, its label, record,
// taint and condition are nodemark's, and the longest value the agent
// writes into an annotation fits the policy's size limit.
func TestTheNodePolicyNamesWhatNodemarkWrites(t *testing.T) {
	objs := installs(t)["self-managed"]
	p, vars := policy(t, objs, "termgate-agent-node")
	if got := literals(vars["ownedAnnotations"]); !slices.Equal(got, nodemark.OwnedAnnotationKeys) {
		t.Errorf("the policy allows annotations %v, nodemark.OwnedAnnotationKeys is %v", got, nodemark.OwnedAnnotationKeys)
	}
	for name, want := range map[string]string{"lbLabel": nodemark.LabelExcludeFromLB, "lbRecord": nodemark.AnnotationLBLabelAdded} {
		if got := literals(vars[name]); !slices.Equal(got, []string{want}) {
			t.Errorf("policy variable %s is %v, want %q", name, got, want)
		}
	}
	for _, name := range []string{"oldTaints", "newTaints", "termgateTaints"} {
		if got := literals(vars[name]); !slices.Equal(got, []string{nodemark.TaintKey}) {
			t.Errorf("policy variable %s filters taints %v, want %q", name, got, nodemark.TaintKey)
		}
	}
	for _, name := range []string{"oldConditions", "newConditions"} {
		if got := literals(vars[name]); !slices.Equal(got, []string{string(nodemark.ConditionType)}) {
			t.Errorf("policy variable %s filters conditions %v, want %q", name, got, nodemark.ConditionType)
		}
	}

	// The size limit, and the longest values the agent writes.
	limit := 0
	for _, v := range p.Spec.Validations {
		if m := regexp.MustCompile(`size\(variables\.newAnnotations\[k\]\) <= (\d+)`).FindStringSubmatch(v.Expression); m != nil {
			limit = atoi(t, m[1])
		}
	}
	if limit == 0 {
		t.Fatal("the policy has no size limit on termgate's annotations")
	}
	far := time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC)
	m := nodemark.Mark{
		State: nodemark.StateTerminating, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: far, Deadline: far,
		BootID: "8f14e45f-ceea-467f-a6b3-2d3f4e5b6c7d", // /proc/sys/kernel/random/boot_id, as the node reports it
	}
	for k, v := range m.Annotations() {
		if len(v) > limit {
			t.Errorf("the agent writes %d characters into %s, above the policy's limit of %d", len(v), k, limit)
		}
	}
}

// TestTheDrainOrderPolicyNamesWhatNodemarkReads: the optional policy
// refuses the overrides nodemark honours, by nodemark's keys.
func TestTheDrainOrderPolicyNamesWhatNodemarkReads(t *testing.T) {
	objs := installs(t)["self-managed + drain-order-policy"]
	_, vars := policy(t, objs, "termgate-drain-order-overrides")
	if got := slices.DeleteFunc(literals(vars["order"]), func(s string) bool { return s == "" }); !slices.Equal(got, []string{nodemark.AnnotationDrainOrder, nodemark.AnnotationDrainOrder}) {
		t.Errorf("the policy reads drain orders from %v, nodemark from %q", got, nodemark.AnnotationDrainOrder)
	}
	if got := literals(vars["tolerating"]); !slices.Contains(got, nodemark.TaintKey) {
		t.Errorf("the policy looks for tolerations of %v, nodemark's taint is %q", got, nodemark.TaintKey)
	}
	for _, wave := range []nodemark.Wave{nodemark.WaveSystem, nodemark.WaveKeep} {
		if _, err := nodemark.ParseDrainOrder(string(wave)); err != nil {
			t.Errorf("nodemark no longer knows the wave %q the policy refuses: %v", wave, err)
		}
	}
	agentNS := find(t, objs, "DaemonSet", "termgate-agent").GetNamespace()
	for _, ns := range ofKind(objs, "Namespace") {
		if ns.GetName() == agentNS && ns.GetLabels()["termgate.dev/drain-order-overrides"] != "allowed" {
			t.Errorf("the agent's namespace %s is not allowed to override: its DaemonSet tolerates every taint and would be refused", agentNS)
		}
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTheWebhookExpectsCallsFromTheNetworkPolicysControlPlaneRange: the
// webhook counts calls from outside the control plane's range, and the
// NetworkPolicy admits the control plane by that range. The two must say
// the same thing in every install, so that changing the one
// docs/security.md tells users to set, and not the other, is caught here.
func TestTheWebhookExpectsCallsFromTheNetworkPolicysControlPlaneRange(t *testing.T) {
	forEachInstall(t, func(t *testing.T, objs []*unstructured.Unstructured) {
		var np networkingv1.NetworkPolicy
		convert(t, find(t, objs, "NetworkPolicy", "termgate-webhook"), &np)
		var ranges []string
		for _, rule := range np.Spec.Ingress {
			for _, from := range rule.From {
				if from.IPBlock != nil {
					ranges = append(ranges, from.IPBlock.CIDR)
				}
			}
		}
		var d appsv1.Deployment
		convert(t, find(t, objs, "Deployment", "termgate-webhook"), &d)
		var expected []string
		for _, a := range d.Spec.Template.Spec.Containers[0].Args {
			if v, ok := strings.CutPrefix(a, "--expected-peer-cidrs="); ok {
				expected = strings.Split(v, ",")
			}
		}
		slices.Sort(ranges)
		slices.Sort(expected)
		if len(ranges) == 0 || !slices.Equal(ranges, expected) {
			t.Fatalf("the NetworkPolicy admits %v by address, the Deployment's --expected-peer-cidrs lists %v", ranges, expected)
		}
	})
}
