package manifestcheck_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// allowedGrants is everything termgate's roles may do, one grant a line:
// "group/resource[names] verb" ("core" for the core group; [names] only
// where the rule is limited by name). A ClusterRole's grants hold in every
// namespace: adding one here is the review of a cluster-wide power.
var allowedGrants = map[string][]string{
	// The agent: its own Node (the Node policy confines the patches to
	// termgate's marks on it), the pods to drain (list/watch by node; the
	// delete policy confines deletes to its node, the webhook evictions),
	// and events. To wait for load balancers (docs/load-balancers.md):
	// Services, read (list/watch, no get: the cache answers), and the core
	// events of the service controller on them, read only while a drain
	// waits (list/watch by field selector; RBAC cannot narrow it further).
	"ClusterRole/termgate-agent": {
		"core/nodes get", "core/nodes list", "core/nodes watch", "core/nodes patch",
		"core/nodes/status patch",
		"core/pods list", "core/pods watch", "core/pods delete",
		"core/pods/eviction create",
		"core/events create", "core/events patch", "events.k8s.io/events create", "events.k8s.io/events patch",
		"core/services list", "core/services watch",
		"core/events list", "core/events watch",
	},
	// The webhook: node and pod metadata for its caches and reads.
	"ClusterRole/termgate-webhook": {
		"core/nodes get", "core/nodes list", "core/nodes watch",
		"core/pods get", "core/pods list", "core/pods watch",
	},
	// Self-managed certificates: the CA bundle of termgate's two webhook
	// configurations (the CA-bundle policy limits the patches to it).
	"ClusterRole/termgate-webhook-certs": {
		"admissionregistration.k8s.io/validatingwebhookconfigurations[termgate] get",
		"admissionregistration.k8s.io/validatingwebhookconfigurations[termgate] patch",
		"admissionregistration.k8s.io/mutatingwebhookconfigurations[termgate] get",
		"admissionregistration.k8s.io/mutatingwebhookconfigurations[termgate] patch",
	},
	// Self-managed certificates, in the webhook's namespace only: its two
	// Secrets and its Lease (create cannot be limited by name).
	"Role/termgate/termgate-webhook-certs": {
		"core/secrets create",
		"core/secrets[termgate-webhook-ca,termgate-webhook-certs] get", "core/secrets[termgate-webhook-ca,termgate-webhook-certs] update",
		"coordination.k8s.io/leases create",
		"coordination.k8s.io/leases[termgate-webhook-certs] get", "coordination.k8s.io/leases[termgate-webhook-certs] update",
	},
	// For users to bind to their Prometheus: reading the agent's and the
	// webhook's /metrics, which ask the API server (TokenReview and
	// SubjectAccessReview) whether the scraper holds this.
	"ClusterRole/termgate-metrics-reader": {
		"nonResourceURLs[/metrics] [get]",
	},
	// cert-manager: the status of the one serving Certificate.
	"Role/termgate/termgate-webhook-certificate": {
		"cert-manager.io/certificates[termgate-webhook-serving] get", "cert-manager.io/certificates[termgate-webhook-serving] watch",
	},
}

// allowedBindings is who holds each role: one service account of termgate.
var allowedBindings = map[string]string{
	"ClusterRoleBinding/termgate-agent":         "ClusterRole/termgate-agent -> termgate-agent/termgate-agent",
	"ClusterRoleBinding/termgate-webhook":       "ClusterRole/termgate-webhook -> termgate/termgate-webhook",
	"ClusterRoleBinding/termgate-webhook-certs": "ClusterRole/termgate-webhook-certs -> termgate/termgate-webhook",
	// The built-in role that creates TokenReviews and SubjectAccessReviews,
	// nothing else: how the metrics servers authenticate and authorize
	// scrapers.
	"ClusterRoleBinding/termgate-agent-auth-delegator":   "ClusterRole/system:auth-delegator -> termgate-agent/termgate-agent",
	"ClusterRoleBinding/termgate-webhook-auth-delegator": "ClusterRole/system:auth-delegator -> termgate/termgate-webhook",
	"RoleBinding/termgate/termgate-webhook-certs":        "Role/termgate-webhook-certs -> termgate/termgate-webhook",
	"RoleBinding/termgate/termgate-webhook-certificate":  "Role/termgate-webhook-certificate -> termgate/termgate-webhook",
}

// grants flattens a role's rules into allowedGrants' lines.
func grants(t *testing.T, o *unstructured.Unstructured) []string {
	t.Helper()
	var role rbacv1.ClusterRole // Role has the same rules
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
		t.Fatalf("%s: %v", id(o), err)
	}
	if role.AggregationRule != nil {
		t.Errorf("%s aggregates other roles: its grants would not be in the manifest", id(o))
	}
	var out []string
	for _, r := range role.Rules {
		if len(r.NonResourceURLs) > 0 {
			out = append(out, fmt.Sprintf("nonResourceURLs%v %v", r.NonResourceURLs, r.Verbs))
		}
		names := ""
		if len(r.ResourceNames) > 0 {
			sorted := slices.Sorted(slices.Values(r.ResourceNames))
			names = "[" + strings.Join(sorted, ",") + "]"
		}
		for _, g := range r.APIGroups {
			if g == "" {
				g = "core"
			}
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out = append(out, g+"/"+res+names+" "+v)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestEveryRoleGrantsOnlyWhatItsAllowListSays fails when a role gains a
// verb, a resource, a wildcard, or loses a resourceNames limit, and when a
// role or binding appears that the lists do not know.
func TestEveryRoleGrantsOnlyWhatItsAllowListSays(t *testing.T) {
	forEachInstall(t, func(t *testing.T, objs []*unstructured.Unstructured) {
		for _, o := range ofKind(objs, "ClusterRole", "Role") {
			want, known := allowedGrants[id(o)]
			if !known {
				t.Errorf("%s is not in the allow-list: add its grants to allowedGrants, with why", id(o))
				continue
			}
			got := grants(t, o)
			want = slices.Sorted(slices.Values(want))
			for _, g := range got {
				if strings.Contains(g, "*") {
					t.Errorf("%s grants a wildcard: %s", id(o), g)
				}
				if !slices.Contains(want, g) {
					t.Errorf("%s grants %q, which the allow-list does not", id(o), g)
				}
			}
			for _, w := range want {
				if !slices.Contains(got, w) {
					t.Errorf("%s no longer grants %q: drop it from the allow-list", id(o), w)
				}
			}
		}
		for _, o := range ofKind(objs, "ClusterRoleBinding", "RoleBinding") {
			var b rbacv1.RoleBinding // ClusterRoleBinding has the same fields
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &b); err != nil {
				t.Fatalf("%s: %v", id(o), err)
			}
			var subjects []string
			for _, s := range b.Subjects {
				if s.Kind != rbacv1.ServiceAccountKind {
					t.Errorf("%s binds %s %s: only termgate's service accounts may hold its roles", id(o), s.Kind, s.Name)
				}
				subjects = append(subjects, s.Namespace+"/"+s.Name)
			}
			got := b.RoleRef.Kind + "/" + b.RoleRef.Name + " -> " + strings.Join(subjects, ",")
			if want, known := allowedBindings[id(o)]; !known || got != want {
				t.Errorf("%s binds %s, want %q", id(o), got, want)
			}
		}
	})
}
