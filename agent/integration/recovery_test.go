package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// expectEvent waits for an event with reason on the node whose message
// contains text.
func (n *node) expectEvent(t *testing.T, reason, text string, budget time.Duration) {
	t.Helper()
	sel := fields.Set{"involvedObject.name": n.name, "reason": reason}.String()
	testenv.Eventually(t, budget, fmt.Sprintf("event %s mentioning %q on %s", reason, text, n.name), func(ctx context.Context) (bool, string, error) {
		list, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, "", err
		}
		var msgs []string
		for _, e := range list.Items {
			if strings.Contains(e.Message, text) {
				return true, "", nil
			}
			msgs = append(msgs, e.Message)
		}
		return false, fmt.Sprint(msgs), nil
	})
}

// The VM was preempted and stopped (its agent died with it); it comes back
// with a new boot ID. The user relies on the node becoming schedulable again
// without anyone touching it.
func TestNodeBackWithNewBootIDIsRestored(t *testing.T) {
	n := newNode(t, cluster.NodeSpec{Spot: true})
	n.md.SetPreempted(true)
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
	n.agent.Kill()

	patch := fmt.Sprintf(`{"status":{"nodeInfo":{"bootID":%q}}}`, "reboot-"+rand.String(8))
	if _, err := env.Client.CoreV1().Nodes().Patch(context.Background(), n.name, "application/strategic-merge-patch+json", []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("change boot ID: %v", err)
	}
	n.md.SetPreempted(false)
	n.start(t)
	n.expectUnmarked(t, 5*time.Second)
	n.expectEvent(t, nodemark.EventTerminationCancelled, "new boot ID", 5*time.Second)
}

// Host maintenance on a GPU VM gives an hour; the agent must take the
// accelerator budget, not the 60 s of ordinary VMs. Live migration drains
// nothing.
func TestHostMaintenanceOnAcceleratorNodeUsesItsBudget(t *testing.T) {
	n := newNode(t, cluster.NodeSpec{Accelerator: "nvidia-l4", MachineType: "g2-standard-8", Zone: "us-central1-a"},
		"--accelerator-maintenance-budget=45m", "--maintenance-budget=60s")
	n.md.SetMaintenanceEvent("MIGRATE_ON_HOST_MAINTENANCE")
	n.expectEvent(t, nodemark.EventLiveMigration, "live-migrating", 5*time.Second)
	if _, marked, _ := nodemark.Read(n.get(t).Annotations); marked {
		t.Fatal("live migration marked the node")
	}
	n.md.SetMaintenanceEvent("TERMINATE_ON_HOST_MAINTENANCE")
	m := n.expectMarked(t, nodemark.ReasonHostMaintenance, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 5*time.Second)
	if d := m.Deadline.Sub(m.NoticeTime); d != 45*time.Minute {
		t.Errorf("GPU maintenance deadline %s after the notice, want 45m", d)
	}
	n.md.SetMaintenanceEvent("NONE")
	n.expectUnmarked(t, 5*time.Second)
}

// An announced maintenance window first only discourages new pods
// (PreferNoSchedule); the drain starts the configured lead time before the
// window, with the window start as its deadline.
func TestUpcomingMaintenanceDiscouragesThenDrains(t *testing.T) {
	const lead = 4 * time.Second
	n := newNode(t, cluster.NodeSpec{Zone: "us-central1-c", MachineType: "n2-standard-4"}, "--upcoming-maintenance-lead="+lead.String())
	start := time.Now().Add(lead + 3*time.Second).Truncate(time.Second)
	n.md.SetUpcomingMaintenance(&gcefake.UpcomingMaintenance{Type: "SCHEDULED", MaintenanceStatus: "PENDING", WindowStartTime: start, WindowEndTime: start.Add(time.Hour)})
	adv := n.expectMarked(t, nodemark.ReasonUpcomingMaintenance, nodemark.StateAdvance, corev1.TaintEffectPreferNoSchedule, 2*time.Second)
	if !adv.Deadline.Equal(start) {
		t.Errorf("advance mark deadline %s, want the window start %s", adv.Deadline, start)
	}
	// The drain starts at start - lead; allow the time until then plus a second.
	m := n.expectMarked(t, nodemark.ReasonUpcomingMaintenance, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, time.Until(start.Add(-lead))+time.Second)
	if begun := m.NoticeTime; begun.Before(start.Add(-lead - 100*time.Millisecond)) {
		t.Errorf("drain started at %s, more than the lead %s before the window %s", begun, lead, start)
	}
	n.md.SetUpcomingMaintenance(nil)
	n.expectUnmarked(t, 5*time.Second)
}

// Faults of the metadata server and values the agent cannot understand must
// never mark a node, and must not break the watch: a real notice afterwards
// still marks it.
func TestMetadataFaultsAndGarbageNeverMarkTheNode(t *testing.T) {
	n := newNode(t, cluster.NodeSpec{Spot: true})
	unmarked := func(what string) {
		t.Helper()
		node := n.get(t)
		if _, marked, _ := nodemark.Read(node.Annotations); marked || hasTaint(node, corev1.TaintEffectNoSchedule) {
			t.Fatalf("node marked after %s", what)
		}
	}
	// Each step waits until the agent has made more requests on the key
	// than the fault takes, so the fault was really served to it.
	served := func(key string, extra int) {
		t.Helper()
		before := n.md.RequestCount(key)
		testenv.Eventually(t, 20*time.Second, fmt.Sprintf("%d more requests on %s", extra, key), func(context.Context) (bool, string, error) {
			c := n.md.RequestCount(key)
			return c >= before+extra, fmt.Sprintf("%d requests", c-before), nil
		})
	}
	for _, f := range []gcefake.Fault{
		{Key: gcefake.KeyPreempted, Kind: gcefake.Fault503, Count: 3},
		{Key: gcefake.KeyPreempted, Kind: gcefake.Fault429, Count: 3},
		{Key: gcefake.KeyPreempted, Kind: gcefake.FaultDrop, Count: 2},
		{Key: gcefake.KeyPreempted, Kind: gcefake.FaultGarbage, Count: 2},
		{Key: gcefake.KeyMaintenanceEvent, Kind: gcefake.FaultGarbage, Count: 2},
	} {
		if err := n.md.InjectFault(f); err != nil {
			t.Fatal(err)
		}
		served(f.Key, f.Count)
		unmarked(fmt.Sprintf("%s on %s", f.Kind, f.Key))
	}
	for _, kv := range [][2]string{
		{gcefake.KeyPreempted, "MAYBE"},
		{gcefake.KeyMaintenanceEvent, "TERMINATE_SOON"},
		{gcefake.KeyUpcomingMaintenance, `{"window_start_time": "tomorrow"`},
	} {
		if err := n.md.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
		served(kv[0], 1)
		unmarked(fmt.Sprintf("value %q on %s", kv[1], kv[0]))
	}
	if err := n.md.Set(gcefake.KeyMaintenanceEvent, "NONE"); err != nil {
		t.Fatal(err)
	}
	n.md.Delete(gcefake.KeyUpcomingMaintenance)
	n.md.SetPreempted(true)
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 10*time.Second)
}

// An agent killed mid-drain (OOM, eviction of the agent itself) is restarted
// by its DaemonSet. The user relies on the restarted agent resuming from the
// marks on the Node, keeping the original deadline, and finishing in time.
func TestAgentKilledMidDrainStillFinishesInTime(t *testing.T) {
	pool := map[string]string{"termgate.dev/test-pool": rand.String(6)}
	n := newNode(t, cluster.NodeSpec{Spot: true}, "--preemption-notice=20s", "--system-grace=5s")
	labelNode(t, n.name, pool)
	ctx := context.Background()
	ns := testenv.Namespace(t, env.Client)
	if _, err := env.Client.AppsV1().Deployments(ns).Create(ctx, kit.Deployment(ns, "api", 30, kit.NodeSelector(pool)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, kit.PDB(ns, "api", 3), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.ExpectPodsRunning(t, env.Client, ns, map[string]string{"app": "api"}, 30, 60*time.Second)
	spare := cluster.NodeSpec{Name: n.name + "-spare", Zone: "us-central1-b", MachineType: "e2-standard-4"}
	if err := env.AddNodes(ctx, spare); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.Background(), spare.Name, metav1.DeleteOptions{})
	})
	labelNode(t, spare.Name, pool)

	n.md.SetPreempted(true)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	onNode := func(ctx context.Context) (all, terminating int, err error) {
		list, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
		if err != nil {
			return 0, 0, err
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil {
				terminating++
			}
		}
		return len(list.Items), terminating, nil
	}
	testenv.Eventually(t, 5*time.Second, "drain under way", func(ctx context.Context) (bool, string, error) {
		all, term, err := onNode(ctx)
		return term > 0 || all < 30, fmt.Sprintf("%d pods, %d terminating", all, term), err
	})
	n.agent.Kill()
	n.start(t)
	again := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	if !again.Deadline.Equal(m.Deadline) {
		t.Errorf("restarted agent moved the deadline from %s to %s", m.Deadline, again.Deadline)
	}
	testenv.Eventually(t, time.Until(m.Deadline)+time.Second, "every pod gone from "+n.name, func(ctx context.Context) (bool, string, error) {
		all, term, err := onNode(ctx)
		return all == 0, fmt.Sprintf("%d pods left, %d terminating", all, term), err
	})
	t.Logf("node drained %s before the deadline despite the agent being killed", time.Until(m.Deadline).Round(time.Millisecond))
}
