package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
	"termgate.dev/termgate/webhook/confine"
)

// stormNodes is how many nodes the storm marks within one second.
const stormNodes = 100

// TestAHundredNodesMarkedAtOnceAreConfinedFromTheirFirstEviction: a zone's
// Spot nodes are reclaimed together. Each agent, with its own pod-bound
// token, marks its node and evicts its pods at once, long before the
// webhook's node cache can have delivered a hundred marks. Every eviction
// of an agent's own pods is allowed (none refused as unchecked or as on an
// unmarked node), and the API server never fails a call open.
func TestAHundredNodesMarkedAtOnceAreConfinedFromTheirFirstEviction(t *testing.T) {
	c := context.Background()
	specs := make([]cluster.NodeSpec, stormNodes)
	for i := range specs {
		specs[i] = cluster.NodeSpec{Name: fmt.Sprintf("storm-%03d", i), Zone: "us-central1-b", MachineType: "e2-standard-4", Spot: true}
	}
	if err := env.AddNodes(c, specs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range specs {
			_ = env.Client.CoreV1().Nodes().Delete(context.Background(), s.Name, metav1.DeleteOptions{})
		}
	})
	ns := testenv.Namespace(t, env.Client)
	spec := localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: t.TempDir()}
	if err := localrun.InstallAgentPermissions(c, spec); err != nil {
		t.Fatal(err)
	}
	agents := make([]kubernetes.Interface, stormNodes)
	for i, s := range specs {
		for j := range 2 {
			createPod(t, kit.Pod(ns, fmt.Sprintf("%s-%d", s.Name, j), kit.OnNode(s.Name)))
		}
		spec.Node = s.Name
		id, err := localrun.AgentIdentityOn(c, spec)
		if err != nil {
			t.Fatal(err)
		}
		cfg := rest.CopyConfig(id.Config)
		cfg.QPS, cfg.Burst = 100, 200
		if agents[i], err = kubernetes.NewForConfig(cfg); err != nil {
			t.Fatal(err)
		}
	}
	failOpenBefore, err := kit.FailOpenCount(c, env.Client)
	if err != nil {
		t.Fatal(err)
	}
	readsBefore := agentPodReads(t, wh.registry)
	uncheckedBefore := counterSum(t, wh.registry, "termgate_webhook_decisions_total", map[string]string{"gate": confine.Name, "verdict": confine.VerdictUnchecked})

	var wg sync.WaitGroup
	var mu sync.Mutex
	var refused []string
	began := time.Now()
	for i, s := range specs {
		wg.Go(func() {
			now := time.Now()
			m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(30 * time.Second), BootID: "storm"}
			if err := kit.MarkNode(c, agents[i], s.Name, m); err != nil {
				mu.Lock()
				refused = append(refused, "mark "+s.Name+": "+err.Error())
				mu.Unlock()
				return
			}
			for j := range 2 {
				if err := evict(agents[i], t, ns, fmt.Sprintf("%s-%d", s.Name, j)); err != nil {
					mu.Lock()
					refused = append(refused, err.Error())
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(began)
	failOpenAfter, err := kit.FailOpenCount(c, env.Client)
	if err != nil {
		t.Fatal(err)
	}
	reads := agentPodReads(t, wh.registry) - readsBefore
	unchecked := counterSum(t, wh.registry, "termgate_webhook_decisions_total", map[string]string{"gate": confine.Name, "verdict": confine.VerdictUnchecked}) - uncheckedBefore
	t.Logf("%d nodes marked and %d evictions by their agents in %v; pod reads through the API %v, refused as unchecked %v, fail-open calls %d",
		stormNodes, 2*stormNodes, took.Round(time.Millisecond), reads, unchecked, failOpenAfter-failOpenBefore)
	if len(refused) > 0 || unchecked > 0 {
		t.Fatalf("%d own-node marks or evictions refused (%v as unchecked), first: %s", len(refused), unchecked, strings.Join(refused[:min(3, len(refused))], "; "))
	}
	if failOpenAfter != failOpenBefore {
		t.Fatalf("%d calls failed open during the storm", failOpenAfter-failOpenBefore)
	}
}
