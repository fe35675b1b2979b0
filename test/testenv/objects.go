package testenv

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
)

// NodeNames returns the cluster's nodes in a stable order, failing the test
// when it has fewer than atLeast.
func NodeNames(t testing.TB, client kubernetes.Interface, atLeast int) []string {
	t.Helper()
	list, err := client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range list.Items {
		names = append(names, n.Name)
	}
	if len(names) < atLeast {
		t.Fatalf("need %d nodes, have %v", atLeast, names)
	}
	return names
}

// GetNode reads a node or fails the test.
func GetNode(t testing.TB, client kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node %s: %v", name, err)
	}
	return n
}

// UpdateNode applies mutate to the node and updates it, again on conflicts.
func UpdateNode(t testing.TB, client kubernetes.Interface, name string, mutate func(*corev1.Node)) {
	t.Helper()
	Eventually(t, 10*time.Second, "update node "+name, func(ctx context.Context) (bool, string, error) {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		mutate(n)
		_, err = client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return false, "conflict", nil
		}
		return err == nil, "", err
	})
}

// CreatePod creates a pod or fails the test.
func CreatePod(t testing.TB, client kubernetes.Interface, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	got, err := client.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	return got
}

// Evict evicts pod ns/name as c, with the pod's UID as a precondition, as
// the agent sends its evictions (the UID read by admin first; a pod that
// does not exist is evicted without one).
func Evict(admin, c kubernetes.Interface, ns, name string) error {
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if pod, err := admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{}); err == nil {
		ev.DeleteOptions = &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}}
	}
	return c.PolicyV1().Evictions(ns).Evict(context.Background(), ev)
}

// AgentIdentity is an agent's pod-bound identity on node, made under the
// shipped agent RBAC and policies (localrun.NewAgentIdentity).
func AgentIdentity(t testing.TB, c *cluster.Cluster, node string) *localrun.AgentIdentity {
	t.Helper()
	id, err := localrun.NewAgentIdentity(context.Background(), localrun.IdentitySpec{Admin: c.Client, AdminConfig: c.Config, Dir: t.TempDir(), Node: node})
	if err != nil {
		t.Fatalf("agent identity on %s: %v", node, err)
	}
	return id
}

// AgentClient is a client of the agent on node, with its pod-bound token.
func AgentClient(t testing.TB, c *cluster.Cluster, node string) kubernetes.Interface {
	t.Helper()
	client, err := kubernetes.NewForConfig(AgentIdentity(t, c, node).Config)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// AgentTokenBoundTo returns a client of the agent's service account whose
// token is bound to ref (nil: to nothing), not to a pod of the agent.
func AgentTokenBoundTo(t testing.TB, c *cluster.Cluster, ref *authenticationv1.BoundObjectReference) kubernetes.Interface {
	t.Helper()
	tr, err := c.Client.CoreV1().ServiceAccounts(localrun.AgentNamespace).CreateToken(context.Background(), localrun.AgentServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600), BoundObjectRef: ref},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	return TokenClient(t, c, tr.Status.Token)
}

// TokenClient returns a client of the cluster that authenticates with token
// alone.
func TokenClient(t testing.TB, c *cluster.Cluster, token string) kubernetes.Interface {
	t.Helper()
	cfg := rest.AnonymousClientConfig(c.Config)
	cfg.BearerToken = token
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// Kubectl runs the repository's kubectl against the cluster and returns
// its output, or fails the test.
func Kubectl(t testing.TB, c *cluster.Cluster, args ...string) string {
	t.Helper()
	out, err := c.Kubectl(context.Background(), args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// MustJSON marshals v or fails the test.
func MustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WriteMark writes a terminating mark onto node as the agent writes it (the
// annotations from nodemark, with the taint when taint is set) and returns
// it; the caller waits for whatever must see it.
func WriteMark(t testing.TB, client kubernetes.Interface, node string, taint bool) nodemark.Mark {
	t.Helper()
	now := time.Now()
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(30 * time.Second), BootID: "test"}
	UpdateNode(t, client, node, func(n *corev1.Node) {
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		maps.Copy(n.Annotations, m.Annotations())
		if taint {
			n.Spec.Taints = append(n.Spec.Taints, nodemark.Taint(corev1.TaintEffectNoSchedule))
		}
	})
	return m
}

// RemoveMark removes termgate's annotations and taint from node.
func RemoveMark(t testing.TB, client kubernetes.Interface, node string) {
	t.Helper()
	UpdateNode(t, client, node, func(n *corev1.Node) {
		for _, k := range nodemark.AnnotationKeys {
			delete(n.Annotations, k)
		}
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == nodemark.TaintKey })
	})
}
