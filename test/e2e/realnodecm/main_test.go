// Package realnodecm_test runs the cert-manager overlay the way its users
// run it: termgate's image on the local cluster's real node (kubelet,
// containerd, runc, CNI bridge), installed with `kubectl apply -k` of the
// shipped cert-manager overlay plus a test overlay that changes only what a
// user would (overlay/), while the real cert-manager (bin/cert-manager, its
// own controllers and CA injector) issues the webhook's certificate. The
// webhook is the Deployment's pods mounting the Secret the Certificate
// writes, reached by the API server through its Service's endpoint.
package realnodecm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/realnodeinstall"
	"termgate.dev/termgate/test/testenv"
)

var (
	shared *cluster.Cluster
	node   *cluster.RealNode
	// skipReason is set when this machine cannot run the real node; every
	// test skips with it.
	skipReason string
	fleet      *gcefake.Fleet
	// overlay is the run-time overlay the tests apply (it is applied by the
	// test that measures the install, not here).
	overlay string
)

func TestMain(m *testing.M) {
	opts := cluster.Options{Nodes: cluster.DefaultNodes(2), RealNode: true, CertManager: true}
	code := testenv.RunWithCluster(m, opts, &shared, func(dir string) error {
		return prepare(context.Background(), dir)
	})
	if fleet != nil {
		fleet.Close()
	}
	os.Exit(code)
}

// prepare imports the image into the real node and writes the overlay with
// the fake metadata server's address; the test applies it.
func prepare(ctx context.Context, dir string) error {
	var err error
	node, err = shared.RealNode()
	if errors.Is(err, cluster.ErrRealNodeUnavailable) {
		skipReason = err.Error()
		fmt.Println("realnodecm:", skipReason)
		return nil
	}
	if err != nil {
		return err
	}
	// The agent comes with the overlay; it needs a metadata server to
	// follow, though nothing here preempts its node.
	fleet = gcefake.NewFleet()
	overlay, _, err = realnodeinstall.Prepare(ctx, node, fleet, dir, "realnodecm")
	return err
}

// needRealNode skips the test when the machine cannot run the real node,
// with the exact reason.
func needRealNode(t *testing.T) {
	t.Helper()
	testenv.NeedCluster(t, shared)
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
