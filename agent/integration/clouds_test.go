package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/azurefake"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/ec2fake"
	"termgate.dev/termgate/test/scenario"
	"termgate.dev/termgate/test/testenv"
)

// The agents below poll every pollInterval; a notice shows on the Node
// within one interval and a patch.
const pollInterval = 500 * time.Millisecond

var markBudget = 2*pollInterval + 2*time.Second

// cloudNode is a node on EC2 or Azure: its provider ID tells the agent
// (--cloud=auto, as shipped) which stand-in to follow.
func cloudNode(t *testing.T, spec cluster.NodeSpec, env []string, flags ...string) *node {
	t.Helper()
	n := prepareNode(t, spec, append([]string{fmt.Sprintf("--metadata-poll-interval=%s", pollInterval)}, flags...)...)
	n.spec.MetadataHost, n.md = "", nil
	n.spec.Env = append(n.spec.Env, env...)
	return n
}

func ec2Node(t *testing.T, endpoint string, flags ...string) *node {
	t.Helper()
	spec := cluster.NodeSpec{Cloud: cluster.CloudAWS, Spot: true, Zone: "us-east-1a", MachineType: "m6i.xlarge"}
	return cloudNode(t, spec, []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + endpoint}, flags...)
}

func azureNode(t *testing.T, md *azurefake.Server, flags ...string) (*node, string) {
	t.Helper()
	spec := cluster.NodeSpec{Cloud: cluster.CloudAzure, Spot: true, Zone: "eastus-1", MachineType: "Standard_D4s_v5"}
	spec.Name = "aks-" + randomSuffix()
	n := cloudNode(t, spec, nil, append([]string{"--azure-metadata-endpoint=" + md.Endpoint()}, flags...)...)
	return n, scenario.AzureVMName(spec)
}

func randomSuffix() string { return fmt.Sprintf("%06d", time.Now().UnixNano()%1_000_000) }

func startEC2Fake(t *testing.T) *ec2fake.Server {
	t.Helper()
	md, err := ec2fake.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = md.Close() })
	return md
}

func startAzureFake(t *testing.T) *azurefake.Server {
	t.Helper()
	md, err := azurefake.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = md.Close() })
	return md
}

// expectMarkFrom checks that the mark names the notice that made it.
func expectMarkFrom(t *testing.T, m nodemark.Mark, source, id string) {
	t.Helper()
	if m.Source != source || m.NoticeID != id {
		t.Fatalf("mark from %q notice %q, want %s notice %s", m.Source, m.NoticeID, source, id)
	}
}

// EC2's own simulator announces a Spot interruption after a delay; the
// agent, reading it with the SDK's IMDSv2 client, marks and fences the node
// with EC2's time as the deadline.
func TestEC2SpotInterruptionFromAWSsSimulatorMarksWithItsTime(t *testing.T) {
	testenv.NeedCluster(t, env)
	sim, err := ec2fake.StartSimulator(env.Dir, "--mock-delay-sec=3", "--rebalance-delay-sec=3600", "spot", "--action", "terminate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Stop)
	n := ec2Node(t, sim.Endpoint())
	n.start(t)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 3*time.Second+markBudget)
	expectMarkFrom(t, m, "aws", "spot/instance-action")
	// The simulator gives the request time plus two minutes, in seconds.
	if left := m.Deadline.Sub(m.NoticeTime); left < 118*time.Second || left > 2*time.Minute {
		t.Errorf("deadline %s after the notice; EC2's time is two minutes ahead", left)
	}
}

// The agent's own token flow, on the IMDSv2 stand-in: a rebalance
// recommendation discourages only; tokens revoked mid-run are renewed and
// the interruption that follows still marks at once; withdrawn, the node is
// restored. No read ever goes without a token.
func TestEC2NoticesComeAndGoThroughTheTokenFlow(t *testing.T) {
	md := startEC2Fake(t)
	md.GrantTTL(2 * time.Second)
	n := ec2Node(t, md.Endpoint())
	n.start(t)
	md.SetRebalance(time.Now())
	m := n.expectMarked(t, nodemark.ReasonRebalanceRecommended, nodemark.StateAdvance, corev1.TaintEffectPreferNoSchedule, markBudget)
	expectMarkFrom(t, m, "aws", "events/recommendations/rebalance")
	n.expectEvent(t, nodemark.EventDisruptionAdvised, "nothing is drained", 2*time.Second)
	md.RevokeTokens()
	md.SetInstanceAction("terminate", time.Now().Add(2*time.Minute))
	m = n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, markBudget)
	expectMarkFrom(t, m, "aws", "spot/instance-action")
	md.SetInstanceAction("", time.Time{})
	md.SetRebalance(time.Time{})
	n.expectUnmarked(t, markBudget)
	if st := md.Stats(); st.WithoutToken != 0 || st.Unauthorized == 0 || st.TokenPUTs < 2 {
		t.Fatalf("fake saw %+v: want 401s after the revocation, new tokens, and no read without one", st)
	}
}

// A scheduled event days ahead is drained at its window's lead, not at first
// sight as NTH does; cancelled, it leaves nothing behind.
func TestEC2ScheduledEventDrainsAtItsLeadAndCancellationRestores(t *testing.T) {
	md := startEC2Fake(t)
	lead := 3 * time.Second
	n := ec2Node(t, md.Endpoint(), fmt.Sprintf("--upcoming-maintenance-lead=%s", lead))
	n.start(t)
	start := time.Now().Add(lead + 4*time.Second).UTC().Truncate(time.Second)
	ev := ec2fake.Event("instance-event-0123456789abcdef0", "system-reboot", start, start.Add(time.Hour))
	md.SetScheduled(ev)
	m := n.expectMarked(t, nodemark.ReasonUpcomingMaintenance, nodemark.StateAdvance, corev1.TaintEffectPreferNoSchedule, markBudget)
	expectMarkFrom(t, m, "aws", ev.EventID)
	if !m.Deadline.Equal(start) {
		t.Fatalf("deadline %s, want the event's NotBefore %s", m.Deadline, start)
	}
	// The drain starts at NotBefore minus the lead.
	m = n.expectMarked(t, nodemark.ReasonUpcomingMaintenance, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, time.Until(start.Add(-lead))+markBudget)
	if early := start.Add(-lead).Sub(m.NoticeTime); early > 100*time.Millisecond {
		t.Errorf("drain started %s before the lead", early)
	}
	ev.State = "canceled"
	md.SetScheduled(ev)
	n.expectUnmarked(t, markBudget)
}

// Scheduled Events name VMs: a neighbour's event changes nothing here, this
// VM's Preempt marks with its NotBefore, and the event's disappearance
// restores the node.
func TestAzurePreemptOfThisVMMarksAndANeighboursEventsDoNot(t *testing.T) {
	md := startAzureFake(t)
	n, vm := azureNode(t, md)
	n.start(t)
	md.Set(azurefake.Scheduled("neighbour", "Reboot", time.Now().Add(5*time.Minute), "aks-other-vmss_1"))
	// Two polls with the neighbour's event and no mark.
	testenv.Eventually(t, markBudget, "two polls", func(context.Context) (bool, string, error) {
		return md.Stats().Requests >= 3, "", nil
	})
	if _, marked, _ := nodemark.Read(n.get(t).Annotations); marked {
		t.Fatal("another VM's event marked the node")
	}
	notBefore := time.Now().Add(30 * time.Second).UTC().Truncate(time.Second)
	md.Add(azurefake.Scheduled("preempt-1", "Preempt", notBefore, vm))
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, markBudget)
	expectMarkFrom(t, m, "azure", "preempt-1")
	if !m.Deadline.Equal(notBefore) {
		t.Fatalf("deadline %s, want NotBefore %s", m.Deadline, notBefore)
	}
	md.Remove("preempt-1")
	n.expectUnmarked(t, markBudget)
	if st := md.Stats(); st.WithoutHeader != 0 || st.Throttled != 0 {
		t.Errorf("fake saw %+v", st)
	}
}

// The first Scheduled Events call may take minutes. A restarted agent that
// finds its node marked keeps the mark, and stays not ready, until it
// answers; the answer (no event any more) then restores the node.
func TestAzureSlowFirstCallKeepsTheMarkUntilItAnswers(t *testing.T) {
	md := startAzureFake(t)
	n, vm := azureNode(t, md)
	n.start(t)
	md.Set(azurefake.Scheduled("terminate-1", "Terminate", time.Now().Add(10*time.Minute), vm))
	n.expectMarked(t, nodemark.ReasonTermination, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, markBudget)
	n.agent.Kill()

	slow := 4 * time.Second
	again := startAzureFake(t)
	again.SlowFirst(slow)
	n.spec.Flags = append(n.spec.Flags, "--azure-metadata-endpoint="+again.Endpoint())
	n.spec.NoWait = true
	began := time.Now()
	n.start(t)
	testenv.Eventually(t, 10*time.Second, "the agent's caches synced and its probes up", func(ctx context.Context) (bool, string, error) {
		code, body := readyz(ctx, n)
		return code == http.StatusServiceUnavailable, fmt.Sprint(code, body), nil
	})
	if code, body := readyz(context.Background(), n); time.Since(began) < slow && code == http.StatusOK {
		t.Fatalf("ready before Scheduled Events answered: %s", body)
	}
	if _, marked, _ := nodemark.Read(n.get(t).Annotations); !marked && time.Since(began) < slow {
		t.Fatal("the mark was removed before Scheduled Events answered")
	}
	n.expectUnmarked(t, time.Until(began.Add(slow))+markBudget)
	if time.Since(began) < slow {
		t.Fatalf("unmarked %s after the start, before the first answer (%s)", time.Since(began), slow)
	}
}

// GCE may add a terminating maintenance event termgate does not know: one
// Warning event says so, and a preemption is still acted on.
func TestUnknownTerminateLikeMaintenanceEventRaisesOneEventAndBlocksNothing(t *testing.T) {
	n := newNode(t, cluster.NodeSpec{Spot: true})
	n.md.SetMaintenanceEvent("TERMINATE_ON_HOST_MAINTENANCE_V2")
	n.expectEvent(t, nodemark.EventNoticeUnreadable, "reads like a termination", 3*time.Second)
	n.md.SetPreempted(true)
	n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	sel := fields.Set{"involvedObject.name": n.name, "reason": nodemark.EventNoticeUnreadable}.String()
	list, err := env.Client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Count > 1 {
		t.Fatalf("%d events (%+v), want one", len(list.Items), list.Items)
	}
}

// With --cloud=auto and no provider ID the agent cannot tell which notices
// to follow: it says so and stays not ready, without probing anything;
// once a cloud controller sets the provider ID it starts.
func TestAgentWithoutAProviderIDWaitsForIt(t *testing.T) {
	n := prepareNode(t, cluster.NodeSpec{Cloud: cluster.CloudNone, Spot: true})
	n.spec.NoWait = true
	n.start(t)
	n.expectEvent(t, nodemark.EventNoticeSourceUnknown, "spec.providerID", 5*time.Second)
	if code, body := readyz(context.Background(), n); code == http.StatusOK {
		t.Fatalf("ready without knowing the cloud: %s", body)
	}
	patch := fmt.Sprintf(`{"spec":{"providerID":"gce://local-project/us-central1-a/%s"}}`, n.name)
	if _, err := env.Client.CoreV1().Nodes().Patch(context.Background(), n.name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "agent ready once the provider ID is set", func(ctx context.Context) (bool, string, error) {
		code, body := readyz(ctx, n)
		return code == http.StatusOK, body, nil
	})
	n.md.SetPreempted(true)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	expectMarkFrom(t, m, "gce", "instance/preempted")
}

func readyz(ctx context.Context, n *node) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.agent.Addr+"/readyz", nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// With --azure-acknowledge, once the drain for this VM's own event is done
// the agent lets the event start at once; an event shared with another VM
// is left to start at its own time.
func TestAzureAcknowledgesOnlyItsOwnEventOnceTheDrainIsDone(t *testing.T) {
	md := startAzureFake(t)
	n, vm := azureNode(t, md, "--azure-acknowledge")
	n.start(t)
	md.Set(azurefake.Scheduled("redeploy-shared", "Redeploy", time.Now().Add(10*time.Minute), vm, "aks-other-vmss_2"))
	n.expectMarked(t, nodemark.ReasonHostMaintenance, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, markBudget)
	n.expectEvent(t, nodemark.EventDrainCompleted, "", 5*time.Second)
	if got := md.Stats().Acknowledged; len(got) != 0 {
		t.Fatalf("acknowledged %v, an event that would start for another VM too", got)
	}
	md.Set(azurefake.Scheduled("reboot-own", "Reboot", time.Now().Add(5*time.Minute), vm))
	n.expectEvent(t, nodemark.EventNoticeAcknowledged, "reboot-own", 5*time.Second)
	if got := md.Stats().Acknowledged; len(got) != 1 || got[0] != "reboot-own" {
		t.Fatalf("acknowledged %v, want [reboot-own]", got)
	}
}
