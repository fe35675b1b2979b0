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
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/realnodeinstall"
	"termgate.dev/termgate/test/testenv"
)

// termgate's namespaces as installed: the webhook's and the agent's.
const (
	webhookNS = realnodeinstall.WebhookNamespace
	agentNS   = realnodeinstall.AgentNamespace
)

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
	// The real service controller, whose cloud calls take 5 s like a GCE
	// target-pool update, for lb_test.go.
	opts := cluster.Options{Nodes: cluster.DefaultNodes(3), RealNode: true,
		LoadBalancers: &cluster.LoadBalancerOptions{OperationTime: 5 * time.Second}}
	code := testenv.RunUnitsAndCluster(m, opts, &shared, func(dir string) error {
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
	fleet = gcefake.NewFleet()
	overlay, server, err := realnodeinstall.Prepare(ctx, node, fleet, dir, "realnode")
	if err != nil {
		return err
	}
	md = server
	applyOverlay = func(ctx context.Context) error { return realnodeinstall.Apply(ctx, shared, overlay) }
	if err := applyOverlay(ctx); err != nil {
		return err
	}
	if err := waitInstalled(ctx); err != nil {
		realnodeinstall.Diagnose(ctx, shared, node, "realnode")
		return err
	}
	fmt.Printf("realnode: termgate installed and Ready in %s\n", time.Since(began).Round(time.Millisecond))
	return nil
}

// waitInstalled waits for the agent's pod Ready on the real node and every
// webhook replica Ready with its CA injected.
func waitInstalled(ctx context.Context) error {
	// Image import and pod start take seconds here; the webhook makes its CA
	// and serving pair, injects the CA and turns Ready after its cache sync.
	return realnodeinstall.WaitInstalled(ctx, shared, node, 90*time.Second)
}

func agentPodReady(ctx context.Context) *corev1.Pod {
	return realnodeinstall.AgentPodReady(ctx, shared.Client, node.Name)
}

func webhookAvailable(ctx context.Context) bool {
	return realnodeinstall.WebhookAvailable(ctx, shared.Client)
}

func podReady(p *corev1.Pod) bool { return realnodeinstall.PodReady(p) }

// needRealNode skips the test when the package runs without its cluster or
// the machine cannot run the real node, with the exact reason.
func needRealNode(t *testing.T) {
	t.Helper()
	testenv.NeedCluster(t, shared)
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
