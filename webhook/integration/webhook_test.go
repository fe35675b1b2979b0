package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

// The scheduler retries a refused pod after at most 10 s of backoff; budgets
// below leave room for two retries.
const scheduleBudget = 30 * time.Second

func tlsDial(addr string) (*tls.Conn, error) {
	return tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only reads the served leaf
}

func ctx(t *testing.T) context.Context { return t.Context() }

// nodeNames returns the cluster's nodes in a stable order.
func nodeNames(t *testing.T) []string { return testenv.NodeNames(t, env.Client, 3) }

// markNode marks node as terminating the way the agent does (annotations
// from nodemark, optionally the taint) and unmarks it when the test ends.
// It waits until the webhook's cache has seen the mark.
func markNode(t *testing.T, node string, taint bool) nodemark.Mark {
	t.Helper()
	m := testenv.WriteMark(t, env.Client, node, taint)
	t.Cleanup(func() { unmarkNode(t, node) })
	testenv.Eventually(t, 10*time.Second, "webhook cache sees "+node+" terminating", func(ctx context.Context) (bool, string, error) {
		n, _ := wh.nodes.Lookup(ctx, node)
		return n.Terminating(), "not yet", nil
	})
	return m
}

func taintNode(t *testing.T, node string) {
	t.Helper()
	patchNode(t, node, func(n *corev1.Node) {
		n.Spec.Taints = append(n.Spec.Taints, nodemark.Taint(corev1.TaintEffectNoSchedule))
	})
}

func unmarkNode(t *testing.T, node string) {
	t.Helper()
	testenv.RemoveMark(t, env.Client, node)
	testenv.Eventually(t, 10*time.Second, "webhook cache sees "+node+" unmarked", func(ctx context.Context) (bool, string, error) {
		n, _ := wh.nodes.Lookup(ctx, node)
		return !n.Terminating(), "still terminating", nil
	})
}

func patchNode(t *testing.T, name string, mutate func(*corev1.Node)) {
	t.Helper()
	testenv.UpdateNode(t, env.Client, name, mutate)
}

func preferNode(node string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{
				Weight: 100,
				Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{node},
				}}},
			}},
		}}
	}
}

func createPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	return testenv.CreatePod(t, env.Client, pod)
}

func expectBound(t *testing.T, ns, name string, budget time.Duration) string {
	t.Helper()
	var node string
	testenv.Eventually(t, budget, "pod "+name+" bound", func(ctx context.Context) (bool, string, error) {
		p, err := env.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		node = p.Spec.NodeName
		return node != "", "unscheduled", nil
	})
	return node
}

func TestSchedulerBindOntoATerminatingNodeIsRefusedAndThePodLandsElsewhere(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	dying := nodeNames(t)[0]
	// The mark without the taint: the scheduler still likes the node, so
	// only the webhook stands between the pod and the node.
	markNode(t, dying, false)
	createPod(t, kit.Pod(ns, "web", preferNode(dying)))

	testenv.Eventually(t, scheduleBudget, "a FailedScheduling event naming the terminating node", func(ctx context.Context) (bool, string, error) {
		evs, err := env.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=web"})
		if err != nil {
			return false, "", err
		}
		var seen []string
		for _, e := range evs.Items {
			if e.Reason == "FailedScheduling" && strings.Contains(e.Message, "node "+dying+" is terminating") && strings.Contains(e.Message, "Preempted") {
				return true, "", nil
			}
			seen = append(seen, e.Reason+": "+e.Message)
		}
		return false, strings.Join(seen, " | "), nil
	})
	if p, _ := env.Client.CoreV1().Pods(ns).Get(ctx(t), "web", metav1.GetOptions{}); p.Spec.NodeName == dying {
		t.Fatalf("pod bound to the terminating node %s", dying)
	}
	// The agent's taint then steers the scheduler away.
	taintNode(t, dying)
	if node := expectBound(t, ns, "web", scheduleBudget); node == dying {
		t.Fatalf("pod bound to the terminating node %s", dying)
	}
}

func TestAPodThatToleratesTheTaintBindsOntoATerminatingNode(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	dying := nodeNames(t)[0]
	markNode(t, dying, true)
	createPod(t, kit.Pod(ns, "keeper",
		kit.NodeSelector(map[string]string{"kubernetes.io/hostname": dying}),
		kit.Tolerating(corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists})))
	if node := expectBound(t, ns, "keeper", scheduleBudget); node != dying {
		t.Fatalf("bound to %s, want %s", node, dying)
	}
}

func TestPinnedPodsOntoATerminatingNode(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	dying := nodeNames(t)[0]
	markNode(t, dying, true)

	_, err := env.Client.CoreV1().Pods(ns).Create(ctx(t), kit.Pod(ns, "pinned", kit.OnNode(dying)), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "node "+dying+" is terminating") {
		t.Fatalf("pinned pod: got %v, want a refusal naming the node", err)
	}
	// The node's own kubelet still brings its static pods' mirrors.
	kubelet := impersonating(t, "system:node:"+dying, "system:nodes")
	if _, err := kubelet.CoreV1().Pods(ns).Create(ctx(t), mirrorPod(t, ns, "mirror", dying), metav1.CreateOptions{}); err != nil {
		t.Fatalf("the node's own mirror pod refused: %v", err)
	}
	tolerating := kit.Pod(ns, "tolerating", kit.OnNode(dying), kit.Tolerating(corev1.Toleration{Operator: corev1.TolerationOpExists}))
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx(t), tolerating, metav1.CreateOptions{}); err != nil {
		t.Fatalf("tolerating pinned pod refused: %v", err)
	}
}

func TestDrainOrderIsStamped(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	plain := createPod(t, kit.Pod(ns, "plain"))
	if got := plain.Annotations[nodemark.AnnotationDefaultDrainOrder]; got != "regular" {
		t.Fatalf("plain pod stamped %q, want regular", got)
	}
	late := createPod(t, kit.Pod(ns, "late", kit.Tolerating(corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists,
		Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](15)})))
	if got := late.Annotations[nodemark.AnnotationDefaultDrainOrder]; got != "delayed:15s" {
		t.Fatalf("pod tolerating the taint for 15s stamped %q, want delayed:15s", got)
	}
	keeper := createPod(t, kit.Pod(ns, "keeper", kit.Tolerating(corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists})))
	if got := keeper.Annotations[nodemark.AnnotationDefaultDrainOrder]; got != "keep" {
		t.Fatalf("tolerating pod stamped %q, want keep", got)
	}
	owned := kit.Pod(ns, "owned")
	owned.Annotations = map[string]string{nodemark.AnnotationDrainOrder: "system"}
	if got := createPod(t, owned).Annotations[nodemark.AnnotationDrainOrder]; got != "system" {
		t.Fatalf("owner's value replaced by %q", got)
	}
	bad := kit.Pod(ns, "bad")
	bad.Annotations = map[string]string{nodemark.AnnotationDrainOrder: "first"}
	_, err := env.Client.CoreV1().Pods(ns).Create(ctx(t), bad, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), `drain order "first"`) {
		t.Fatalf("invalid drain order: got %v, want the parser's message", err)
	}
}

func TestWithTheWebhookUnreachablePodsStillScheduleAndCreate(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	dying := nodeNames(t)[0]
	markNode(t, dying, false)
	// Point every registration at a port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if err := wh.register(ctx(t), closed, wh.caPEM); err != nil {
		t.Fatal(err)
	}
	wh.restoreRegistrationsAtEnd(t)
	createPod(t, kit.Pod(ns, "scheduled"))
	expectBound(t, ns, "scheduled", scheduleBudget)
	// Even the pinned pod onto the marked node passes: failurePolicy Ignore.
	p := createPod(t, kit.Pod(ns, "pinned", kit.OnNode(dying)))
	if _, stamped := p.Annotations[nodemark.AnnotationDefaultDrainOrder]; stamped {
		t.Fatal("pod stamped although the webhook is unreachable")
	}
}

func TestARotatedCertificateIsServedWithoutRestart(t *testing.T) {
	before := servedCert(t, wh.addr)
	pems, err := selfmanaged.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFiles(wh.certDir, pems.Cert, pems.Key); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the new certificate served", func(context.Context) (bool, string, error) {
		return !bytes.Equal(servedCert(t, wh.addr), before), "old certificate", nil
	})
	// Trust only the new CA: stamping works only if the new pair is served.
	wh.caPEM = pems.CA
	if err := wh.register(ctx(t), wh.addr, pems.CA); err != nil {
		t.Fatal(err)
	}
	if err := wh.waitStamping(ctx(t)); err != nil {
		t.Fatalf("API server cannot call the webhook with the new CA: %v", err)
	}
}

// agentClient returns a client of the agent on node, authenticated as the
// shipped DaemonSet's pods are: the shipped RBAC and policy and a
// service-account token bound to a stand-in agent pod on node
// (localrun.NewAgentIdentity).
func agentClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	return testenv.AgentClient(t, env, node)
}

func agentIdentity(t *testing.T, node string) *localrun.AgentIdentity {
	t.Helper()
	return testenv.AgentIdentity(t, env, node)
}

// agentTokenBoundTo returns a client of the agent's service account whose
// token is bound to ref, not to a pod of the agent.
func agentTokenBoundTo(t *testing.T, ref *authenticationv1.BoundObjectReference) kubernetes.Interface {
	t.Helper()
	return testenv.AgentTokenBoundTo(t, env, ref)
}

func getNode(t *testing.T, c kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	return testenv.GetNode(t, c, name)
}

// evict evicts pod ns/name as c, as the agent sends its evictions
// (testenv.Evict).
func evict(c kubernetes.Interface, t *testing.T, ns, name string) error {
	return testenv.Evict(env.Client, c, ns, name)
}
