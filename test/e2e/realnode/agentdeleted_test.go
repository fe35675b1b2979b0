package realnode_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

// TestRealNodeAgentPodDeletedMidDrainStillMeetsTheDeadline deletes the
// agent's pod while it drains a preempted node, with no agent to replace it
// (as GKE's graceful node shutdown does halfway through the notice): the
// kubelet sends it SIGTERM, and every workload pod must still get SIGTERM
// and be gone before the VM's notice runs out.
func TestRealNodeAgentPodDeletedMidDrainStillMeetsTheDeadline(t *testing.T) {
	needRealNode(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	record := t.TempDir()
	// A PodDisruptionBudget that allows no disruption holds every eviction
	// until the regular cut-off (deadline minus --system-grace), where the
	// agent escalates to deletes: the drain is certain to be in its middle
	// when the agent's pod is deleted, and what is left of it (the
	// escalation) is the deleted pod's to do. 3 s of work after SIGTERM
	// within a 10 s grace still fits before the deadline.
	const delay, grace = 3 * time.Second, int64(10)
	work := workDeployment(ns, "work", 4, record, delay, grace)
	before := startWorkOnRealNode(t, work)
	pdb := kit.PDB(ns, work.Name, 0) // selects app=work, the Deployment's pods
	if _, err := shared.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PDB: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, "the PDB computed", func(ctx context.Context) (bool, string, error) {
		p, err := shared.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "work", metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return p.Status.ObservedGeneration >= p.Generation && p.Status.ExpectedPods == 4,
			fmt.Sprintf("observed generation %d of %d, %d pods expected", p.Status.ObservedGeneration, p.Generation, p.Status.ExpectedPods), nil
	})
	restoreAfter(t)

	noticed := time.Now()
	md.SetPreempted(true)
	testenv.Eventually(t, 5*time.Second, "the agent's pod marking the node", marked)
	testenv.Eventually(t, preemptionNotice, "the drain under way (an eviction refused by the PDB)", func(ctx context.Context) (bool, string, error) {
		evs, err := shared.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=" + nodemark.EventEvictionBlocked})
		if err != nil {
			return false, "", err
		}
		return len(evs.Items) > 0, "no refusal yet", nil
	})
	// The DaemonSet stops selecting the node, so its controller deletes the
	// agent's pod (the kubelet sends SIGTERM, grace 40 s) and, as on a node
	// going down, no new agent takes over: what is left of the drain is the
	// deleted pod's to finish.
	agent := agentPodReady(ctx)
	if agent == nil {
		t.Fatal("no Ready agent pod to delete")
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(node.Dir, "pod-logs", agentNS+"_"+agent.Name+"_*", "*", "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			t.Logf("agent log %s:\n%s", l, b)
		}
	})
	t.Cleanup(func() { // before restoreAfter's cleanup, which needs an agent
		if err := applyOverlay(context.Background()); err != nil {
			t.Errorf("put the DaemonSet back: %v", err)
		}
	})
	away := `[{"op":"replace","path":"/spec/template/spec/affinity/nodeAffinity","value":` +
		`{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":` +
		`[{"key":"kubernetes.io/hostname","operator":"In","values":["no-such-node"]}]}]}}}]`
	if _, err := shared.Client.AppsV1().DaemonSets(agentNS).Patch(ctx, "termgate-agent", types.JSONPatchType, []byte(away), metav1.PatchOptions{}); err != nil {
		t.Fatalf("move the agent DaemonSet off the node: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "the agent's pod deleted by its DaemonSet", func(ctx context.Context) (bool, string, error) {
		p, err := shared.Client.CoreV1().Pods(agentNS).Get(ctx, agent.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil // already gone: it did not wait for the drain
		}
		if err != nil {
			return false, err.Error(), nil // another error proves nothing: read again
		}
		return p.DeletionTimestamp != nil, "not deleted yet", nil
	})
	deletedAt := time.Now()
	t.Logf("agent pod %s deleted %s after the notice", agent.Name, deletedAt.Sub(noticed).Round(time.Millisecond))

	deadline := noticed.Add(preemptionNotice)
	testenv.Eventually(t, time.Until(deadline), "every workload pod drained before the notice runs out", func(ctx context.Context) (bool, string, error) {
		for _, p := range before {
			r, err := readRecord(record, p.Name)
			if err != nil || r.Exit.IsZero() {
				return false, fmt.Sprintf("%s not exited", p.Name), nil
			}
		}
		return true, "", nil
	})
	for _, p := range before {
		r, _ := readRecord(record, p.Name)
		if !r.SIGTERM.After(deletedAt) {
			t.Errorf("%s: SIGTERM at %v, before the agent's pod was deleted at %v: the PDB allows no eviction, only the escalation after the deletion may stop it", p.Name, r.SIGTERM, deletedAt)
		}
		if r.SIGTERM.IsZero() || r.Exit.Sub(r.SIGTERM) < delay {
			t.Errorf("%s: SIGTERM %v, exit %v: want SIGTERM and %s of work", p.Name, r.SIGTERM, r.Exit, delay)
			continue
		}
		t.Logf("%s: SIGTERM +%s after the notice", p.Name, r.SIGTERM.Sub(noticed).Round(time.Millisecond))
	}
}
