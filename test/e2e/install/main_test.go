// Package install checks what a user installs against a real API server:
// every overlay passes the server's dry run, a renamed install keeps every
// name in step and the agent confined, and the shipped policies (the agent's
// Node and delete policies, the webhook's CA-bundle policy, the drain-order
// component) admit and refuse what they must, for tokens bound as the
// DaemonSet's pods get them. termgate's webhook runs beside as a process, as
// its Deployment runs it (the launcher's shipped arguments, its own token).
package install

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/testenv"
)

var (
	env     *cluster.Cluster
	binary  string
	webhook *localrun.Webhook
)

func TestMain(m *testing.M) {
	code := testenv.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(3)}, &env, func(dir string) error {
		ctx := context.Background()
		var err error
		if binary, err = localrun.Build(ctx, dir); err != nil {
			return err
		}
		if webhook, err = localrun.StartWebhookWithOwnIdentity(ctx, env, localrun.WebhookSpec{Binary: binary}); err != nil {
			return err
		}
		for _, f := range []string{"agent-node-policy.yaml", "agent-delete-policy.yaml"} {
			path, err := manifest.Shipped(manifest.StaticDir, f)
			if err != nil {
				return err
			}
			if err := manifest.ApplyFile(ctx, env.Config, path); err != nil {
				return err
			}
		}
		return localrun.WaitAgentPoliciesEnforced(ctx, env)
	})
	if webhook != nil {
		webhook.Stop()
	}
	os.Exit(code)
}

func ctx(t *testing.T) context.Context { return t.Context() }

// The scheduler retries a refused pod after at most 10 s of backoff; the
// budget leaves room for two retries.
const scheduleBudget = 30 * time.Second

// shipped is the path of a file or directory under manifests/.
func shipped(t *testing.T, elem ...string) string {
	t.Helper()
	p, err := manifest.Shipped(elem...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// termgateBinary is termgate's binary, built once for the package.
func termgateBinary(t *testing.T) string {
	t.Helper()
	testenv.NeedCluster(t, env)
	return binary
}

func nodeNames(t *testing.T) []string { return testenv.NodeNames(t, env.Client, 3) }

func createPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	return testenv.CreatePod(t, env.Client, pod)
}

func getNode(t *testing.T, c kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	return testenv.GetNode(t, c, name)
}

func patchNode(t *testing.T, name string, mutate func(*corev1.Node)) {
	t.Helper()
	testenv.UpdateNode(t, env.Client, name, mutate)
}

func mustJSON(t *testing.T, v any) []byte { return testenv.MustJSON(t, v) }

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	return testenv.Kubectl(t, env, args...)
}

func agentClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	return testenv.AgentClient(t, env, node)
}

func agentTokenBoundTo(t *testing.T, ref *authenticationv1.BoundObjectReference) kubernetes.Interface {
	t.Helper()
	return testenv.AgentTokenBoundTo(t, env, ref)
}

func tokenClient(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	return testenv.TokenClient(t, env, token)
}

func evict(c kubernetes.Interface, t *testing.T, ns, name string) error {
	return testenv.Evict(env.Client, c, ns, name)
}

// markNode marks node as terminating the way the agent does (the
// annotations, optionally the taint), waits until the webhook refuses a pod
// pinned there (its cache has seen the mark) and unmarks the node when the
// test ends.
func markNode(t *testing.T, node string, taint bool) nodemark.Mark {
	t.Helper()
	m := testenv.WriteMark(t, env.Client, node, taint)
	t.Cleanup(func() { unmarkNode(t, node) })
	testenv.Eventually(t, 10*time.Second, "the webhook refusing pods pinned onto "+node, func(ctx context.Context) (bool, string, error) {
		err := pinnedDryRun(ctx, node)
		return err != nil, "a pinned pod allowed", nil
	})
	return m
}

// unmarkNode removes termgate's annotations and taint from node and waits
// until the webhook admits a pod pinned there again.
func unmarkNode(t *testing.T, node string) {
	t.Helper()
	testenv.RemoveMark(t, env.Client, node)
	testenv.Eventually(t, 10*time.Second, "the webhook admitting pods pinned onto "+node, func(ctx context.Context) (bool, string, error) {
		err := pinnedDryRun(ctx, node)
		if err == nil {
			return true, "", nil
		}
		return false, err.Error(), nil
	})
}

// pinnedDryRun creates, without storing it, a pod pinned onto node.
func pinnedDryRun(ctx context.Context, node string) error {
	_, err := env.Client.CoreV1().Pods("default").Create(ctx, kit.Pod("default", "pinned-probe", kit.OnNode(node)), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	return err
}

// webhookOutOfThePath points the webhook's registrations at a port nobody
// listens on, as if every replica were stopped, waits until the API server
// stops reaching the webhook (a pod comes back unstamped) and points them
// back when t ends.
func webhookOutOfThePath(t *testing.T, ns string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	path, err := manifest.Shipped(manifest.StaticDir)
	if err != nil {
		t.Fatal(err)
	}
	configs, err := localrun.LoadWebhookConfigurations(path)
	if err != nil {
		t.Fatal(err)
	}
	// The bundle the webhook injected, kept so that pointing back needs no
	// new injection.
	current, err := env.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx(t), configs.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca := current.Webhooks[0].ClientConfig.CABundle
	point := func(ctx context.Context, addr string) error {
		configs.PointAt("https://"+addr, ca)
		return configs.Register(ctx, env.Client)
	}
	t.Cleanup(func() {
		if err := point(context.Background(), webhook.Addr); err != nil {
			t.Errorf("point the registrations back at the webhook: %v", err)
		}
		defer func() {
			if t.Failed() {
				b, _ := os.ReadFile(webhook.LogPath())
				t.Logf("webhook log:\n%s", b[max(0, len(b)-6000):])
			}
		}()
		testenv.Eventually(t, 10*time.Second, "the API server reaching the webhook again", func(ctx context.Context) (bool, string, error) {
			stamped, err := stampedDryRun(ctx, "default")
			return stamped, "not stamped", err
		})
	})
	if err := point(ctx(t), closed); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the API server no longer reaching the webhook", func(ctx context.Context) (bool, string, error) {
		stamped, err := stampedDryRun(ctx, ns)
		return !stamped, "still stamped by the webhook", err
	})
}

// stampedDryRun creates, without storing it, a pod in ns and says whether
// the webhook stamped its drain order.
func stampedDryRun(ctx context.Context, ns string) (bool, error) {
	p, err := env.Client.CoreV1().Pods(ns).Create(ctx, kit.Pod(ns, "probe"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return false, err
	}
	_, stamped := p.Annotations[nodemark.AnnotationDefaultDrainOrder]
	return stamped, nil
}
