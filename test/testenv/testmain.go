package testenv

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"termgate.dev/termgate/test/cluster"
)

// RunWithCluster is a test package's TestMain body: it starts one local
// cluster shared by every test in the package, runs each setup function with
// the cluster's directory, runs the tests, stops the cluster and returns the
// exit code.
//
//	func TestMain(m *testing.M) { os.Exit(testenv.RunWithCluster(m, cluster.Options{}, &env)) }
//
// Under -short the package holds only integration tests, so none runs and
// nothing starts; packages that mix unit tests in use RunUnitsAndCluster.
func RunWithCluster(m *testing.M, opts cluster.Options, shared **cluster.Cluster, setup ...func(dir string) error) int {
	flag.Parse()
	if testing.Short() {
		fmt.Println("skipped under -short: every test of this package needs the local cluster")
		return 0
	}
	return runWithCluster(m, opts, shared, setup...)
}

// RunUnitsAndCluster is RunWithCluster for a package that also holds unit
// tests: under -short it starts nothing and runs every test, *shared stays
// nil and the tests that need the cluster skip through NeedCluster. Unit
// tests then run on a machine without bin/.
func RunUnitsAndCluster(m *testing.M, opts cluster.Options, shared **cluster.Cluster, setup ...func(dir string) error) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	return runWithCluster(m, opts, shared, setup...)
}

func runWithCluster(m *testing.M, opts cluster.Options, shared **cluster.Cluster, setup ...func(dir string) error) int {
	began := time.Now()
	c, err := cluster.Start(context.Background(), opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start local cluster:", err)
		return 1
	}
	defer c.Stop()
	fmt.Printf("local cluster: %d nodes Ready in %s\n", len(opts.Nodes), time.Since(began).Round(time.Millisecond))
	*shared = c
	for _, f := range setup {
		if err := f(c.Dir); err != nil {
			fmt.Fprintln(os.Stderr, "test setup:", err)
			return 1
		}
	}
	return m.Run()
}

// NeedCluster skips t when the package runs without its cluster (-short).
func NeedCluster(t testing.TB, c *cluster.Cluster) {
	t.Helper()
	if c == nil {
		t.Skip("needs the local cluster; skipped under -short")
	}
}
