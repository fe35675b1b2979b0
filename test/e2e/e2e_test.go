// Package e2e_test plays the demo's scenarios (test/scenario) as end-to-end
// tests: one local cluster for the package, termgate's webhook and one agent
// per node running as processes, the same workload, the same expectations.
// Beside the GKE-like nodes run one EC2 and one Azure Spot node, each with
// its cloud's provider ID and stand-in metadata service.
package e2e_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/scenario"
	"termgate.dev/termgate/test/testenv"
)

var (
	shared *cluster.Cluster
	env    *scenario.Env
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips without the environment
	}
	nodes := append(cluster.DefaultNodes(6), cluster.CloudNodes()...)
	code := testenv.RunWithCluster(m, cluster.Options{Nodes: nodes}, &shared, func(dir string) error {
		ctx := context.Background()
		bin, err := localrun.Build(ctx, dir)
		if err != nil {
			return err
		}
		env, err = scenario.StartEnv(ctx, scenario.EnvOptions{
			Cluster: shared, Nodes: nodes, Binary: bin, AcceleratorBudget: 45 * time.Second,
			Namespace: "e2e-" + rand.String(5),
			Say:       func(format string, args ...any) { fmt.Printf("e2e setup: "+format+"\n", args...) },
		})
		return err
	})
	if env != nil {
		env.Stop()
	}
	os.Exit(code)
}

// play runs a scenario and fails the test with every expectation that did
// not hold. The timeline goes to the test log.
func play(t *testing.T, name string) {
	t.Helper()
	if env == nil {
		t.Skip("no local cluster (-short)")
	}
	s, ok := scenario.Find(name)
	if !ok {
		t.Fatalf("no scenario %q", name)
	}
	res, err := scenario.Run(context.Background(), env, s, scenario.Observer{})
	if err != nil {
		t.Fatalf("scenario %s could not play: %v", name, err)
	}
	var tl strings.Builder
	for _, e := range res.Timeline {
		fmt.Fprintf(&tl, "\n  +%6dms %-12s %s %s", e.At.Milliseconds(), e.Kind, e.Subject, e.Detail)
	}
	t.Logf("%s on %s: marked +%s, drained %v at +%s of %s, restored %v, %d evicted, %d blocked by a PDB, %d binds refused, %d replacements Ready, %d lost%s",
		name, res.Node, res.MarkedAt, res.Drained, res.DrainedAt, res.Deadline, res.Restored, res.Evicted, res.Blocked,
		res.BindsRefused, res.Replacements, res.LostCount, tl.String())
	for _, f := range res.Failures() {
		t.Errorf("expected %s", f)
	}
	if !res.Held {
		t.Errorf("scenario %s did not hold", name)
	}
}

func TestSpotNodePreemptedIsMarkedAndDrainedWithinItsThirtySeconds(t *testing.T) {
	play(t, "spot-preemption")
}

func TestGPUHostMaintenanceDrainsAtThePaceThePodDisruptionBudgetAllows(t *testing.T) {
	play(t, "gpu-maintenance")
}

func TestMaintenanceCancelledMidDrainRestoresTheNodeAndStopsTheDrain(t *testing.T) {
	play(t, "maintenance-cancelled")
}

func TestPodPinnedOntoAMarkedNodeIsRefusedWhileTheSchedulerPlacesElsewhere(t *testing.T) {
	play(t, "pinned-pod-refused")
}

func TestEC2SpotInterruptionIsMarkedByItsOwnTimeDrainedAndRestoredWhenTheInstanceIsBack(t *testing.T) {
	play(t, "aws-spot-interruption")
}

func TestAzurePreemptIsMarkedByItsNotBeforeDrainedAndRestoredWhenTheEventEnds(t *testing.T) {
	play(t, "azure-preempt")
}
