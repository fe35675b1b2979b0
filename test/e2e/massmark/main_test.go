// Package massmark preempts 100 nodes within one second, each with its own
// agent and the agent's own pod-bound token, against the webhook as
// deployed (its own token, the shipped configurations and policies): the
// zone reclaim users see on Spot, at the largest size that fits the test
// machine. The agents run in the test's process (localrun's
// InProcessAgent, built by the binary's own constructor from the shipped
// DaemonSet's arguments), each with its own connection to the API server
// and to its node's metadata server; the webhook runs as a process, and so
// do the agents of processAgents of the nodes, whose figures the test
// gives beside the others': in-process agents share one process's CPU, so
// theirs must not be better than the processes'.
package massmark

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

const (
	// spotNodes are preempted together; each runs an agent.
	spotNodes = 100
	// podsPerNode are evictable pods on each Spot node.
	podsPerNode = 2
	// processAgents of the Spot nodes run `termgate agent` processes.
	processAgents = 10
	// startAtOnce agents are started side by side: each must sync its
	// caches and read its metadata server within the readiness budget.
	startAtOnce = 10
)

var (
	env      *cluster.Cluster
	webhook  *localrun.Webhook
	reader   *localrun.MetricsReader
	fleet    *gcefake.Fleet
	agents   []*localrun.InProcessAgent
	procs    []*localrun.Agent
	servers  = map[string]*gcefake.Server{}
	spot     []string
	workload string
)

func TestMain(m *testing.M) {
	nodes := cluster.DefaultNodes(2) // on-demand nodes for everything else
	for i := range spotNodes {
		name := fmt.Sprintf("mass-%03d", i)
		spot = append(spot, name)
		nodes = append(nodes, cluster.NodeSpec{Name: name, Zone: "us-central1-a", MachineType: "e2-standard-4", Spot: true})
	}
	code := testenv.RunWithCluster(m, cluster.Options{Nodes: nodes}, &env, func(dir string) error {
		ctx := context.Background()
		binary, err := localrun.Build(ctx, dir)
		if err != nil {
			return err
		}
		if webhook, err = localrun.StartWebhookWithOwnIdentity(ctx, env, localrun.WebhookSpec{Binary: binary}); err != nil {
			return err
		}
		if reader, err = localrun.NewMetricsReader(ctx, localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: dir}); err != nil {
			return err
		}
		if err := placeWorkload(ctx); err != nil {
			return err
		}
		fleet = gcefake.NewFleet()
		return startAgents(ctx, dir, binary)
	})
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Go(a.Stop)
	}
	for _, a := range procs {
		wg.Go(a.Stop)
	}
	wg.Wait()
	if webhook != nil {
		webhook.Stop()
	}
	if fleet != nil {
		_ = fleet.Close()
	}
	os.Exit(code)
}

// placeWorkload puts podsPerNode pods on every Spot node and waits until
// kwok runs them all.
func placeWorkload(ctx context.Context) error {
	ns, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "mass-"}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}
	workload = ns.Name
	if err := kit.WaitDefaultServiceAccount(ctx, env.Client, workload); err != nil {
		return err
	}
	var pods []*corev1.Pod
	for _, node := range spot {
		for i := range podsPerNode {
			pods = append(pods, kit.Pod(workload, node+"-app-"+strconv.Itoa(i), kit.OnNode(node)))
		}
	}
	err = kit.InParallel(pods, 16, func(p *corev1.Pod) error {
		if _, err := env.Client.CoreV1().Pods(workload).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s: %w", p.Name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// kwok starts a pod within about a second; a minute for 200 means
	// something is broken.
	return kit.Poll(ctx, time.Minute, func(ctx context.Context) (bool, string, error) {
		list, err := env.Client.CoreV1().Pods(workload).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == len(pods), fmt.Sprintf("%d of %d pods running", running, len(pods)), nil
	})
}

// startAgents installs the shipped agent permissions, then for every Spot
// node makes its identity (a stand-in DaemonSet pod and a token bound to
// it), its metadata server and its agent: a process of binary for
// processAgents of them, in-process for the others.
func startAgents(ctx context.Context, dir, binary string) error {
	spec := localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: dir}
	if err := localrun.InstallAgentPermissions(ctx, spec); err != nil {
		return fmt.Errorf("agent permissions: %w", err)
	}
	var mu sync.Mutex
	return kit.InParallel(spot, startAtOnce, func(node string) error {
		s := spec
		s.Node = node
		id, err := localrun.AgentIdentityOn(ctx, s)
		if err != nil {
			return fmt.Errorf("agent identity for %s: %w", node, err)
		}
		md, err := fleet.Add(gcefake.Instance{Name: node, Zone: "us-central1-a", MachineType: "e2-standard-4", Preemptible: true})
		if err != nil {
			return fmt.Errorf("metadata server for %s: %w", node, err)
		}
		mu.Lock()
		servers[node] = md
		mu.Unlock()
		if isProcess(node) {
			p, err := localrun.StartAgent(ctx, localrun.AgentSpec{
				Binary: binary, Dir: dir, Kubeconfig: id.Kubeconfig, Node: node, MetadataHost: md.Host(), Pod: id.Pod,
			})
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			procs = append(procs, p)
			return nil
		}
		a, err := localrun.StartInProcessAgent(ctx, localrun.InProcessAgentSpec{Identity: id, Node: node, MetadataHost: md.Host(), Dir: dir})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		agents = append(agents, a)
		return nil
	})
}

// isProcess tells whether node's agent is a process: every tenth node, so
// that both kinds get notices early and late in the second.
func isProcess(node string) bool { return slices.Index(spot, node)%(spotNodes/processAgents) == 0 }

func needCluster(t *testing.T) {
	t.Helper()
	testenv.NeedCluster(t, env)
}
