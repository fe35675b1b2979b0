package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// impersonating returns a client acting as user (in groups) through the
// admin's right to impersonate.
func impersonating(t *testing.T, user string, groups ...string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tenantOf returns a client of a service account that may create pods in ns
// and nothing more, the way a team's deploy account is set up.
func tenantOf(t *testing.T, ns string) kubernetes.Interface {
	t.Helper()
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "deployer", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns}},
	}
	if _, err := env.Client.RbacV1().RoleBindings(ns).Create(ctx(t), binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("tenant's role binding: %v", err)
	}
	tenant := impersonating(t, "system:serviceaccount:"+ns+":default", "system:serviceaccounts", "system:serviceaccounts:"+ns, "system:authenticated")
	// The API server's RBAC authorizer learns of the binding through its
	// own informer, a moment after the create returns: until then the
	// tenant's creations are forbidden, which is not what the tests ask.
	// The authorizer's own answer says when it has the binding.
	testenv.Eventually(t, rbacPropagation, "the tenant's role binding in force", func(ctx context.Context) (bool, string, error) {
		review, err := tenant.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: "create", Resource: "pods",
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			return false, "", fmt.Errorf("access review: %w", err)
		}
		return review.Status.Allowed, review.Status.Reason, nil
	})
	return tenant
}

// rbacPropagation bounds the wait for the API server's RBAC informer to see
// a new binding: a watch event on a loopback server, well under a second in
// every run; the budget leaves room for a loaded machine.
const rbacPropagation = 30 * time.Second

// mirrorPod is what a kubelet posts for a static pod: the mirror annotation,
// the node's name, the Node as owner, no service account token
// (NodeRestriction insists on the last two).
func mirrorPod(t *testing.T, ns, name, node string) *corev1.Pod {
	t.Helper()
	n := getNode(t, env.Client, node)
	p := kit.Pod(ns, name, kit.OnNode(node))
	p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "static-hash"}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID, Controller: ptr.To(true)}}
	p.Spec.AutomountServiceAccountToken = ptr.To(false)
	return p
}

// refusal returns the API server's text for err with the pod's own name
// taken out, so refusals of two pods compare.
func refusal(err error, podName string) string {
	return strings.ReplaceAll(err.Error(), `"`+podName+`"`, `"POD"`)
}

func TestOnlyTheNodeItselfBringsAMirrorPodOntoATerminatingNode(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	names := nodeNames(t)
	dying, healthy := names[0], names[1]
	markNode(t, dying, true)
	tenant := tenantOf(t, ns)

	_, pinnedErr := tenant.CoreV1().Pods(ns).Create(ctx(t), kit.Pod(ns, "pinned", kit.OnNode(dying)), metav1.CreateOptions{})
	if pinnedErr == nil || !strings.Contains(pinnedErr.Error(), "node "+dying+" is terminating") {
		t.Fatalf("tenant's pinned pod: got %v, want a refusal naming the node", pinnedErr)
	}

	// The annotation is only a claim: a tenant setting it gets the refusal
	// any pinned pod gets, word for word.
	_, err := tenant.CoreV1().Pods(ns).Create(ctx(t), mirrorPod(t, ns, "fake-mirror", dying), metav1.CreateOptions{})
	if err == nil {
		t.Fatal("a tenant's mirror-annotated pod was admitted onto a terminating node")
	}
	if got, want := refusal(err, "fake-mirror"), refusal(pinnedErr, "pinned"); got != want {
		t.Fatalf("tenant's mirror pod refused with\n  %s\nwant the pinned pod's refusal\n  %s", got, want)
	}

	// Nor does another node's identity help (NodeRestriction would refuse
	// it as well; termgate's gate must not be what lets it through).
	other := impersonating(t, "system:node:"+healthy, "system:nodes", "system:authenticated")
	if _, err := other.CoreV1().Pods(ns).Create(ctx(t), mirrorPod(t, ns, "foreign-mirror", dying), metav1.CreateOptions{}); err == nil {
		t.Fatal("node " + healthy + " created a mirror pod on " + dying)
	}

	// The terminating node's own kubelet still posts its static pods.
	kubelet := impersonating(t, "system:node:"+dying, "system:nodes", "system:authenticated")
	if _, err := kubelet.CoreV1().Pods(ns).Create(ctx(t), mirrorPod(t, ns, "static-web-"+dying, dying), metav1.CreateOptions{}); err != nil {
		t.Fatalf("the node's own mirror pod was refused: %v", err)
	}
	// And a tenant's mirror-annotated pod onto a healthy node is not this
	// gate's business.
	if _, err := tenant.CoreV1().Pods(ns).Create(ctx(t), mirrorPod(t, ns, "fake-mirror-healthy", healthy), metav1.CreateOptions{}); err != nil {
		t.Fatalf("tenant's mirror-annotated pod onto a healthy node refused: %v", err)
	}
}
