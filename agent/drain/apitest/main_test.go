// Package apitest runs the drain against a real kube-apiserver (the local
// cluster, kwok playing the kubelet), to check what the fake clientset
// cannot: the eviction body, the field selector, disruption budgets and the
// API server's rules for shortening a grace period.
package apitest

import (
	"os"
	"testing"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/testenv"
)

var env *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testenv.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(3)}, &env))
}
