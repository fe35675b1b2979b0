package realnodeinstall

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
)

// The image `make image` builds, as the node's containerd knows it after
// ImportImage (the Makefile's IMAGE default).
const (
	ImageRepository = "termgate.local/termgate"
	ImageTag        = "dev"
)

// ChartValues are what a user changes to install the chart on the local
// cluster's real node: the image (imported, never pulled), where the pods
// run (the real node is the only one that runs containers; the webhook
// tolerates its taint, the agent tolerates every taint already) and the
// agent's metadata server. The chart's install test and `make cluster`
// use them, so the commands the latter prints are the ones the test ran.
func ChartValues(nodeName, metadataHost string) map[string]any {
	image := map[string]any{"repository": ImageRepository, "tag": ImageTag, "digest": "", "pullPolicy": "Never"}
	onNode := map[string]any{"nodeAffinity": map[string]any{
		"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{"nodeSelectorTerms": []any{
			map[string]any{"matchExpressions": []any{map[string]any{"key": "kubernetes.io/hostname", "operator": "In", "values": []any{nodeName}}}},
		}},
	}}
	return map[string]any{
		"agent": map[string]any{
			"image": image, "affinity": onNode,
			"extraEnv": []any{map[string]any{"name": "GCE_METADATA_HOST", "value": metadataHost}},
		},
		"webhook": map[string]any{
			"image": image, "affinity": onNode,
			"tolerations": []any{map[string]any{"key": cluster.RealNodeTaint, "operator": "Exists", "effect": "NoSchedule"}},
		},
		// The placeholder range: the local API server calls from the host,
		// which a network policy always lets through (no policy engine runs
		// on the real node's bridge).
		"networkPolicy": map[string]any{"controlPlaneCIDRs": []any{"172.16.0.0/28"}},
	}
}

// LocalInstall is what `make cluster` with the real node prepares for a
// newcomer: the image imported, a fake metadata server for the node, and
// the two ways to install written into the cluster's directory.
type LocalInstall struct {
	// Metadata is the real node's metadata server (a Spot VM).
	Metadata *gcefake.Server
	// Values is a values file for `helm install ... charts/termgate -f`.
	Values string
	// Overlay is a kustomize overlay for `kubectl apply -k`: the shipped
	// self-managed overlay with the changes of test/e2e/realnode/overlay.
	Overlay string
}

// PrepareLocal imports the image into the real node, adds the node's
// metadata server to fleet and writes the values file and the overlay
// into dir.
func PrepareLocal(ctx context.Context, node *cluster.RealNode, fleet *gcefake.Fleet, dir string) (*LocalInstall, error) {
	overlay, md, err := Prepare(ctx, node, fleet, dir, "realnode")
	if err != nil {
		return nil, err
	}
	b, err := yaml.Marshal(ChartValues(node.Name, md.Host()))
	if err != nil {
		return nil, fmt.Errorf("values for the real node: %w", err)
	}
	values := filepath.Join(dir, "termgate-values.yaml")
	head := "# termgate's chart on the local cluster's real node (written by make cluster).\n"
	if err := os.WriteFile(values, append([]byte(head), b...), 0o644); err != nil {
		return nil, fmt.Errorf("values for the real node: %w", err)
	}
	return &LocalInstall{Metadata: md, Values: values, Overlay: overlay}, nil
}
