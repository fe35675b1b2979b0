// Package realnode_test runs termgate as users run it, on the local
// cluster's real node (kubelet, containerd, runc, CNI bridge): the image
// `make image` builds, installed with `kubectl apply -k` of the shipped
// self-managed overlay plus a test overlay that changes only what a user
// would (overlay/). The agent is the DaemonSet's pod with its projected
// token; the webhook is the Deployment behind its Service, with the
// certificates it makes in the cluster.
package realnode_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
)

const termgateNS = "termgate"

var (
	shared *cluster.Cluster
	node   *cluster.RealNode
	// skipReason is set when this machine cannot run the real node or the
	// image is missing; every test that needs them skips with it.
	skipReason string
	md         *gcefake.Server
	fleet      *gcefake.Fleet
	// applyOverlay runs the install's `kubectl apply -k` again, putting
	// back anything a test changed in termgate's objects.
	applyOverlay func(ctx context.Context) error
)

func TestMain(m *testing.M) {
	flag.Parse()
	opts := cluster.Options{Nodes: cluster.DefaultNodes(3), RealNode: true}
	code := kit.RunUnitsAndCluster(m, opts, &shared, func(dir string) error {
		return install(context.Background(), dir)
	})
	if fleet != nil {
		fleet.Close()
	}
	os.Exit(code)
}

// install imports the image into the real node and applies the overlay.
func install(ctx context.Context, dir string) error {
	began := time.Now()
	var err error
	node, err = shared.RealNode()
	if errors.Is(err, cluster.ErrRealNodeUnavailable) {
		skipReason = err.Error()
		fmt.Println("realnode:", skipReason)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Printf("realnode: node Ready in %s\n", node.StartTime.Round(time.Millisecond))
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	archive := filepath.Join(root, "bin", "termgate-image.tar")
	if _, err := os.Stat(archive); err != nil {
		return fmt.Errorf("%s missing: run `make image` (make test does): %w", archive, err)
	}
	if err := node.ImportImage(ctx, archive); err != nil {
		return err
	}
	fleet = gcefake.NewFleet()
	if md, err = fleet.Add(gcefake.Instance{Name: node.Name, Preemptible: true}); err != nil {
		return err
	}
	overlay, err := writeRunOverlay(dir, filepath.Join(root, "test", "e2e", "realnode", "overlay"), md.Host())
	if err != nil {
		return err
	}
	kubectl := filepath.Join(root, "bin", "kubectl")
	applyOverlay = func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", shared.Kubeconfig, "apply", "-k", overlay).CombinedOutput()
		if err != nil {
			return fmt.Errorf("kubectl apply -k %s: %w\n%s", overlay, err, out)
		}
		return nil
	}
	if err := applyOverlay(ctx); err != nil {
		return err
	}
	if err := waitInstalled(ctx); err != nil {
		diagnose(ctx, kubectl)
		return err
	}
	fmt.Printf("realnode: termgate installed and Ready in %s\n", time.Since(began).Round(time.Millisecond))
	return nil
}

// writeRunOverlay writes the last, run-time layer: GCE_METADATA_HOST for the
// agent, pointing at the fake metadata server this test started on the host
// (the agent uses hostNetwork, so 127.0.0.1 is the host's).
func writeRunOverlay(dir, base, metadataHost string) (string, error) {
	out := filepath.Join(dir, "termgate-overlay")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", fmt.Errorf("write overlay: %w", err)
	}
	rel, err := filepath.Rel(out, base)
	if err != nil {
		return "", fmt.Errorf("write overlay: %w", err)
	}
	body := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
patches:
- target:
    group: apps
    version: v1
    kind: DaemonSet
    name: termgate-agent
  patch: |-
    - op: add
      path: /spec/template/spec/containers/0/env/-
      value: {name: GCE_METADATA_HOST, value: %q}
`, rel, metadataHost)
	if err := os.WriteFile(filepath.Join(out, "kustomization.yaml"), []byte(body), 0o644); err != nil {
		return "", fmt.Errorf("write overlay: %w", err)
	}
	return out, nil
}

// waitInstalled waits for the agent's pod Ready on the real node and every
// webhook replica Ready with its CA injected.
func waitInstalled(ctx context.Context) error {
	// Image import and pod start take seconds here; the webhook makes its CA
	// and serving pair, injects the CA and turns Ready after its cache sync.
	const budget = 90 * time.Second
	err := kit.Poll(ctx, budget, func(ctx context.Context) (bool, string, error) {
		agent, webhook := agentPodReady(ctx) != nil, webhookAvailable(ctx)
		return agent && webhook, fmt.Sprintf("agent pod Ready %v, webhook Available %v", agent, webhook), nil
	})
	if err != nil {
		return fmt.Errorf("termgate not Ready on the real node after %s (kubelet log: %s): %w", budget, shared.LogPath("kubelet"), err)
	}
	return nil
}

// diagnose prints what a failed install left, before the cluster and its
// logs are removed.
func diagnose(ctx context.Context, kubectl string) {
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-n", termgateNS, "--sort-by=.lastTimestamp"},
	} {
		out, _ := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", shared.Kubeconfig}, args...)...).CombinedOutput()
		fmt.Printf("realnode: kubectl %s:\n%s\n", strings.Join(args, " "), out)
	}
	logs, _ := filepath.Glob(filepath.Join(node.Dir, "pod-logs", termgateNS+"_*", "*", "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		lines := strings.Split(string(b), "\n")
		fmt.Printf("realnode: %s (last 15 lines):\n%s\n", l, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	if b, err := os.ReadFile(shared.LogPath("kubelet")); err == nil {
		lines := strings.Split(string(b), "\n")
		fmt.Printf("realnode: kubelet log (last 40 lines):\n%s\n", strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

func agentPodReady(ctx context.Context) *corev1.Pod {
	pods, err := shared.Client.CoreV1().Pods(termgateNS).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(map[string]string{"app.kubernetes.io/component": "agent"}).String(),
	})
	if err != nil {
		return nil
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == node.Name && p.DeletionTimestamp == nil && podReady(p) {
			return p
		}
	}
	return nil
}

func webhookAvailable(ctx context.Context) bool {
	d, err := shared.Client.AppsV1().Deployments(termgateNS).Get(ctx, "termgate-webhook", metav1.GetOptions{})
	if err != nil || d.Spec.Replicas == nil {
		return false
	}
	return d.Status.ReadyReplicas == *d.Spec.Replicas && d.Status.UpdatedReplicas == *d.Spec.Replicas && deploymentAvailable(d)
}

func deploymentAvailable(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// needRealNode skips the test when the package runs without its cluster or
// the machine cannot run the real node, with the exact reason.
func needRealNode(t *testing.T) {
	t.Helper()
	kit.NeedCluster(t, shared)
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
