// Package realnodeinstall installs termgate on the local cluster's real node
// the way a user does: the image `make image` built, imported into the
// node's containerd, and `kubectl apply -k` of an overlay on top of a
// shipped one. The test packages that run termgate as pods (test/e2e/realnode
// with the self-managed overlay, test/e2e/realnodecm with the cert-manager
// one) share it.
package realnodeinstall

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

// The namespaces the shipped manifests install into: the webhook's
// (restricted) and the agent's (privileged, for its host network).
const (
	WebhookNamespace = localrun.WebhookNamespace
	AgentNamespace   = localrun.AgentNamespace
)

// Namespaces are both, for whatever concerns all of termgate's pods.
var Namespaces = []string{WebhookNamespace, AgentNamespace}

// ImportImage imports bin/termgate-image.tar (`make image`) into the real
// node's containerd, so the overlays' `imagePullPolicy: Never` finds it.
func ImportImage(ctx context.Context, node *cluster.RealNode) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	archive := filepath.Join(root, "bin", "termgate-image.tar")
	if _, err := os.Stat(archive); err != nil {
		return fmt.Errorf("%s missing: run `make image` (make test does): %w", archive, err)
	}
	return node.ImportImage(ctx, archive)
}

// Prepare readies the real node for `kubectl apply -k` of the test overlay
// test/e2e/<testOverlay>/overlay: it imports the image, adds the node's
// fake metadata server (a Spot VM) to fleet and writes the run-time overlay
// pointing the agent at it into dir. It returns the overlay to apply and
// the metadata server that preempts the node.
func Prepare(ctx context.Context, node *cluster.RealNode, fleet *gcefake.Fleet, dir, testOverlay string) (string, *gcefake.Server, error) {
	if err := ImportImage(ctx, node); err != nil {
		return "", nil, err
	}
	md, err := fleet.Add(gcefake.Instance{Name: node.Name, Zone: "us-central1-a", MachineType: "e2-standard-4", Preemptible: true})
	if err != nil {
		return "", nil, fmt.Errorf("fake metadata server for %s: %w", node.Name, err)
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", nil, err
	}
	overlay, err := WriteRunOverlay(dir, filepath.Join(root, "test", "e2e", testOverlay, "overlay"), md.Host())
	if err != nil {
		return "", nil, err
	}
	return overlay, md, nil
}

// WriteRunOverlay writes the last, run-time layer over base (a test
// overlay's directory) into dir/termgate-overlay and returns its path: it
// adds GCE_METADATA_HOST for the agent, pointing at the fake metadata
// server the test started on the host (the agent uses hostNetwork, so
// 127.0.0.1 is the host's); its port is known only at run time.
func WriteRunOverlay(dir, base, metadataHost string) (string, error) {
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

// Apply runs `kubectl apply -k overlay` against the cluster, as a user
// installs (or re-installs) termgate.
func Apply(ctx context.Context, c *cluster.Cluster, overlay string) error {
	if _, err := c.Kubectl(ctx, "apply", "-k", overlay); err != nil {
		return fmt.Errorf("install termgate: %w", err)
	}
	return nil
}

// WaitInstalled waits, within budget, for the agent's pod Ready on the real
// node and every webhook replica Ready and the Deployment Available.
func WaitInstalled(ctx context.Context, c *cluster.Cluster, node *cluster.RealNode, budget time.Duration) error {
	err := kit.Poll(ctx, budget, func(ctx context.Context) (bool, string, error) {
		agent, webhook := AgentPodReady(ctx, c.Client, node.Name) != nil, WebhookAvailable(ctx, c.Client)
		return agent && webhook, fmt.Sprintf("agent pod Ready %v, webhook Available %v", agent, webhook), nil
	})
	if err != nil {
		return fmt.Errorf("termgate not Ready on the real node after %s (kubelet log: %s): %w", budget, c.LogPath("kubelet"), err)
	}
	return nil
}

// AgentPodReady returns the agent's Ready pod on the node, or nil.
func AgentPodReady(ctx context.Context, client kubernetes.Interface, nodeName string) *corev1.Pod {
	pods, err := client.CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(map[string]string{"app.kubernetes.io/component": "agent"}).String(),
	})
	if err != nil {
		return nil
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == nodeName && p.DeletionTimestamp == nil && PodReady(p) {
			return p
		}
	}
	return nil
}

// WebhookAvailable reports whether every replica of the webhook Deployment
// is updated and Ready and the Deployment is Available.
func WebhookAvailable(ctx context.Context, client kubernetes.Interface) bool {
	d, err := client.AppsV1().Deployments(WebhookNamespace).Get(ctx, "termgate-webhook", metav1.GetOptions{})
	if err != nil || d.Spec.Replicas == nil {
		return false
	}
	return d.Status.ReadyReplicas == *d.Spec.Replicas && d.Status.UpdatedReplicas == *d.Spec.Replicas && DeploymentAvailable(d)
}

// DeploymentAvailable reports the Deployment's Available condition.
func DeploymentAvailable(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodReady reports the pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Diagnose prints what a failed install left (pods, termgate's events, the
// last lines of its containers' logs and of the kubelet's), before the
// cluster and its logs are removed. prefix starts every line it prints.
func Diagnose(ctx context.Context, c *cluster.Cluster, node *cluster.RealNode, prefix string) {
	commands := [][]string{{"get", "pods", "-A", "-o", "wide"}}
	for _, ns := range Namespaces {
		commands = append(commands, []string{"get", "events", "-n", ns, "--sort-by=.lastTimestamp"})
	}
	for _, args := range commands {
		out, err := c.Kubectl(ctx, args...)
		if err != nil {
			out = []byte(err.Error())
		}
		fmt.Printf("%s: kubectl %s:\n%s\n", prefix, strings.Join(args, " "), out)
	}
	var logs []string
	for _, ns := range Namespaces {
		found, _ := filepath.Glob(filepath.Join(node.Dir, "pod-logs", ns+"_*", "*", "*.log"))
		logs = append(logs, found...)
	}
	for _, l := range logs {
		fmt.Printf("%s: %s (last 15 lines):\n%s\n", prefix, l, tail(l, 15))
	}
	fmt.Printf("%s: kubelet log (last 40 lines):\n%s\n", prefix, tail(c.LogPath("kubelet"), 40))
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(string(b), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
