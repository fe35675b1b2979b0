package kit

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
//	func TestMain(m *testing.M) { os.Exit(kit.RunWithCluster(m, cluster.Options{}, &env)) }
func RunWithCluster(m *testing.M, opts cluster.Options, shared **cluster.Cluster, setup ...func(dir string) error) int {
	flag.Parse()
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
