package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
)

var shared *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testenv.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(4)}, &shared))
}

func cl(t *testing.T) *cluster.Cluster {
	t.Helper()
	if shared == nil {
		t.Fatal("no shared cluster")
	}
	return shared
}

func TestAPIServerReportsPinnedVersion(t *testing.T) {
	v, err := cl(t).Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.Major != "1" || v.Minor != "37" || v.GitVersion[:6] != "v1.37." {
		t.Fatalf("server reports %s (major %q minor %q), want v1.37.x", v.GitVersion, v.Major, v.Minor)
	}
}

func TestNodesLookLikeGCEVMs(t *testing.T) {
	nodes, err := cl(t).Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	var spot, gpu int
	for _, n := range nodes.Items {
		if n.Status.NodeInfo.BootID == "" {
			t.Errorf("node %s has no boot ID", n.Name)
		}
		if n.Labels["topology.kubernetes.io/zone"] == "" {
			t.Errorf("node %s has no zone label", n.Name)
		}
		if n.Labels[cluster.LabelSpot] == "true" {
			spot++
		}
		if n.Labels[cluster.LabelAccelerator] != "" {
			gpu++
		}
	}
	if len(nodes.Items) != 4 || spot != 2 || gpu != 1 {
		t.Fatalf("got %d nodes, %d spot, %d gpu; want 4, 2, 1", len(nodes.Items), spot, gpu)
	}
}

// A user relies on PodDisruptionBudgets holding on this cluster exactly as on
// a real one: the disruption controller computes the budget, an eviction it
// forbids gets 429, an allowed one succeeds and the pod goes away.
func TestEvictionHonoursPodDisruptionBudget(t *testing.T) {
	c := cl(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, c.Client)
	// The pods go to one node through a label that is removed once they run,
	// so replacements stay Pending and cannot refill the budget between the
	// two evictions.
	pool := map[string]string{"termgate.dev/pdb-test": ns}
	setLabel := func(v *string) {
		t.Helper()
		val := "null"
		if v != nil {
			val = fmt.Sprintf("%q", *v)
		}
		body := fmt.Sprintf(`{"metadata":{"labels":{"termgate.dev/pdb-test":%s}}}`, val)
		if _, err := c.Client.CoreV1().Nodes().Patch(ctx, "spot-0", "application/merge-patch+json", []byte(body), metav1.PatchOptions{}); err != nil {
			t.Fatalf("label node: %v", err)
		}
	}
	setLabel(&ns)
	if _, err := c.Client.AppsV1().Deployments(ns).Create(ctx, kit.Deployment(ns, "web", 2, kit.NodeSelector(pool)), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	if _, err := c.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, kit.PDB(ns, "web", 1), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PDB: %v", err)
	}
	pods := testenv.ExpectPodsRunning(t, c.Client, ns, map[string]string{"app": "web"}, 2, 60*time.Second)
	setLabel(nil)
	testenv.Eventually(t, 30*time.Second, "PDB allows one disruption", func(ctx context.Context) (bool, string, error) {
		pdb, err := c.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return pdb.Status.DisruptionsAllowed == 1, fmt.Sprintf("disruptionsAllowed=%d", pdb.Status.DisruptionsAllowed), nil
	})

	evict := func(p corev1.Pod) error {
		return c.Client.CoreV1().Pods(ns).EvictV1(ctx, &policyv1.Eviction{
			ObjectMeta:    metav1.ObjectMeta{Namespace: ns, Name: p.Name},
			DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}},
		})
	}
	if err := evict(pods[0]); err != nil {
		t.Fatalf("first eviction (allowed by the budget): %v", err)
	}
	err := evict(pods[1])
	if !apierrors.IsTooManyRequests(err) {
		t.Fatalf("second eviction: got %v, want 429 Too Many Requests from the PDB", err)
	}
	testenv.ExpectPodGone(t, c.Client, &pods[0], 40*time.Second)
}

// Stop must leave no process and no listening port behind.
func TestStopLeavesNothingBehind(t *testing.T) {
	c, err := cluster.Start(context.Background(), cluster.Options{Nodes: cluster.DefaultNodes(1)})
	if err != nil {
		t.Fatalf("start second cluster: %v", err)
	}
	host := c.Config.Host[len("https://"):]
	pids := c.PIDs()
	c.Stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d still alive after Stop", pid)
		}
	}
	if conn, err := net.DialTimeout("tcp", host, time.Second); err == nil {
		conn.Close()
		t.Errorf("API server port %s still accepts connections after Stop", host)
	}
}

// `make cluster CLUSTER_FLAGS="--dir DIR"` with a mistyped DIR must say so,
// not panic while cleaning up.
func TestStartWithMissingDirReturnsTheError(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "does-not-exist")
	c, err := cluster.Start(context.Background(), cluster.Options{Dir: missing, Nodes: cluster.DefaultNodes(1)})
	if err == nil {
		c.Stop()
		t.Fatal("Start succeeded with a directory that does not exist")
	}
	if c != nil {
		t.Errorf("Start returned a cluster along with error %v", err)
	}
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("error %q does not say that %s does not exist", err, missing)
	}
}

// TestAuditLogTimesBindsAndNodePatches: the storm benchmark orders binds
// against marks by the API server's audit log, so both must be there, with
// the bind's target and the server's received and answered times.
func TestAuditLogTimesBindsAndNodePatches(t *testing.T) {
	c := cl(t)
	ctx := t.Context()
	ns := testenv.Namespace(t, c.Client)
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node := nodes.Items[0].Name
	before := time.Now()
	if _, err := c.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(`{"metadata":{"labels":{"audit-test":"`+ns+`"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = c.Client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(`{"metadata":{"labels":{"audit-test":null}}}`), metav1.PatchOptions{})
	})
	pod := kit.Pod(ns, "audited")
	pod.Spec.SchedulerName = "termgate-test-nobody"
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: "audited", Namespace: ns},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	within := func(call cluster.APICall) bool {
		return !call.Received.Before(before.Add(-time.Second)) && !call.Completed.After(after.Add(time.Second)) && !call.Completed.Before(call.Received)
	}
	patches, err := c.NodePatches()
	if err != nil {
		t.Fatal(err)
	}
	var patch *cluster.NodePatch
	for i := range patches {
		if patches[i].Node == node && patches[i].Received.After(before.Add(-time.Second)) {
			patch = &patches[i]
		}
	}
	if patch == nil || patch.Code != 200 || !within(patch.APICall) {
		t.Fatalf("node patch audited as %+v, want 200 between %v and %v", patch, before, after)
	}
	binds, err := c.Binds()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(binds, func(b cluster.Bind) bool { return b.Namespace == ns && b.Pod == "audited" })
	if i < 0 {
		t.Fatalf("bind of %s/audited not audited", ns)
	}
	if b := binds[i]; b.Node != node || b.Code != 201 || !within(b.APICall) || b.Received.Before(patch.Completed) {
		t.Fatalf("bind audited as %+v, want onto %s, 201, received after the patch was answered (%v)", b, node, patch.Completed)
	}
}
