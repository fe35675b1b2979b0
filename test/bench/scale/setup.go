package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

// env is everything the run uses.
type env struct {
	c          *cluster.Cluster
	bin, state string
	fleet      *gcefake.Fleet
	webhook    *localrun.Webhook
	// replicas are shape Z's webhooks (webhook is the first of them).
	replicas  *localrun.WebhookReplicas
	bystander *bystander
	metrics   *localrun.MetricsReader
	// spot are the preempted nodes, idle the others (the floor's).
	spot, idle []string
	servers    map[string]*gcefake.Server
	inProcess  []*localrun.InProcessAgent
	processes  []*localrun.Agent
	isProcess  map[string]bool
	isSpot     map[string]bool
	// namespaces hold the pods, the j-th pod of every node in the
	// (j mod len)-th: tenants' pods share nodes.
	namespaces []string
	// watchesPerAgent is the rise in the API server's open watches when
	// the agents started, per agent.
	watchesPerAgent float64
}

// namespaceOf is the namespace of a node's j-th pod.
func (e *env) namespaceOf(j int) string { return e.namespaces[j%len(e.namespaces)] }

// podLabel marks every pod the run evicts, the agents' and the floor's.
const podLabel = "scale-evict"

func setUp(ctx context.Context, o options) (*env, error) {
	zones := []string{"us-central1-a", "us-central1-b", "us-central1-c"}
	e := &env{fleet: gcefake.NewFleet(), servers: map[string]*gcefake.Server{}, isProcess: map[string]bool{}, isSpot: map[string]bool{}}
	specs := make([]cluster.NodeSpec, o.nodes)
	for i := range specs {
		spot := i < o.preempted
		specs[i] = cluster.NodeSpec{Name: fmt.Sprintf("scale-%04d", i), Zone: zones[i%len(zones)], MachineType: "e2-standard-4", Spot: spot}
		if spot {
			e.spot = append(e.spot, specs[i].Name)
			e.isSpot[specs[i].Name] = true
			// Spread over the second, so that both kinds get early and
			// late notices.
			if o.processAgents > 0 && i%(o.preempted/o.processAgents) == 0 && len(e.isProcess) < o.processAgents {
				e.isProcess[specs[i].Name] = true
			}
		} else {
			e.idle = append(e.idle, specs[i].Name)
		}
	}
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs, NodeLease: o.nodeLease})
	if err != nil {
		return e, err
	}
	e.c = c
	say("local cluster with %d Ready nodes (%s)", o.nodes, since(began))
	if e.bin, e.state, err = asdeployed.Build(ctx, c.Dir); err != nil {
		return e, err
	}
	say("measuring %s", e.state)
	began = time.Now()
	if e.webhook, err = asdeployed.StartWebhook(ctx, c, e.bin); err != nil {
		return e, err
	}
	if e.metrics, err = asdeployed.MetricsReader(ctx, c); err != nil {
		return e, err
	}
	say("webhook serving with its own token, configurations and policies registered (%s)", since(began))

	began = time.Now()
	if err := e.makeNamespaces(ctx, o.namespaces); err != nil {
		return e, err
	}
	if err := e.placePods(ctx, e.spot, o.podsPerNode, "agents"); err != nil {
		return e, err
	}
	say("%d pods running on the %d Spot nodes (%s)", o.podsPerNode*len(e.spot), len(e.spot), since(began))

	return e, e.startAgentsCountingWatches(ctx, o)
}

// startAgentsCountingWatches starts the agents and sets watchesPerAgent
// from the API server's open watches before and after.
func (e *env) startAgentsCountingWatches(ctx context.Context, o options) error {
	began := time.Now()
	before, err := e.watches(ctx)
	if err != nil {
		return err
	}
	if err := e.startAgents(ctx, o); err != nil {
		return err
	}
	after, err := e.watches(ctx)
	if err != nil {
		return err
	}
	agents := len(e.inProcess) + len(e.processes)
	e.watchesPerAgent = (after - before) / float64(agents)
	say("%d agents ready, %d of them processes, %.2f watches each at the API server (%s)", agents, len(e.processes), e.watchesPerAgent, since(began))
	return nil
}

// watches counts the watches the API server holds open now.
func (e *env) watches(ctx context.Context) (float64, error) {
	body, err := e.c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("API server metrics: %w", err)
	}
	n := 0.0
	for k, v := range localrun.Samples(string(body), "apiserver_longrunning_requests{") {
		if strings.Contains(k, `verb="WATCH"`) {
			n += v
		}
	}
	return n, nil
}

// placePods puts n pods on each node, labelled for the run and with the
// group's name, and waits until kwok runs them.
func (e *env) placePods(ctx context.Context, nodes []string, n int, group string) error {
	var pods []*corev1.Pod
	for _, node := range nodes {
		for i := range n {
			pods = append(pods, kit.Pod(e.namespaceOf(i), node+"-"+strconv.Itoa(i), kit.OnNode(node), func(p *corev1.Pod) {
				p.Labels[podLabel] = group
			}))
		}
	}
	err := kit.InParallel(pods, 32, func(p *corev1.Pod) error {
		if _, err := e.c.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s: %w", p.Name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// kwok starts pods at hundreds a second here; ten minutes for ten
	// thousand means something is broken.
	return kit.Poll(ctx, 10*time.Minute, func(ctx context.Context) (bool, string, error) {
		list, err := e.c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: podLabel + "=" + group, ResourceVersion: "0"})
		if err != nil {
			return false, "", err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == len(pods), fmt.Sprintf("%d of %d %s pods running", running, len(pods), group), nil
	})
}

// startAgents makes each Spot node's identity (a stand-in DaemonSet pod
// and a token bound to it), metadata server and agent.
func (e *env) startAgents(ctx context.Context, o options) error {
	spec := localrun.IdentitySpec{Admin: e.c.Client, AdminConfig: e.c.Config, Dir: e.c.Dir}
	if err := localrun.InstallAgentPermissions(ctx, spec); err != nil {
		return fmt.Errorf("agent permissions: %w", err)
	}
	flags := []string{"--preemption-notice=" + o.notice.String()}
	var mu sync.Mutex
	return kit.InParallel(e.spot, 10, func(node string) error {
		s := spec
		s.Node = node
		id, err := localrun.AgentIdentityOn(ctx, s)
		if err != nil {
			return fmt.Errorf("agent identity for %s: %w", node, err)
		}
		md, err := e.fleet.Add(gcefake.Instance{Name: node, Preemptible: true})
		if err != nil {
			return fmt.Errorf("metadata server for %s: %w", node, err)
		}
		mu.Lock()
		e.servers[node] = md
		mu.Unlock()
		if e.isProcess[node] {
			a, err := asdeployed.StartAgent(ctx, asdeployed.AgentSpec{Cluster: e.c, Binary: e.bin, Node: node, MetadataHost: md.Host(), Identity: id, Extra: flags})
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			e.processes = append(e.processes, a)
			return nil
		}
		a, err := localrun.StartInProcessAgent(ctx, localrun.InProcessAgentSpec{Identity: id, Node: node, MetadataHost: md.Host(), Dir: e.c.Dir, Flags: flags})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		e.inProcess = append(e.inProcess, a)
		return nil
	})
}

// stopAgents stops every agent, in parallel.
func (e *env) stopAgents() {
	var wg sync.WaitGroup
	for _, a := range e.inProcess {
		wg.Go(a.Stop)
	}
	for _, a := range e.processes {
		wg.Go(a.Stop)
	}
	wg.Wait()
	e.inProcess, e.processes = nil, nil
}

func (e *env) tearDown() {
	e.stopAgents()
	switch {
	case e.replicas != nil:
		e.replicas.Stop()
	case e.webhook != nil:
		e.webhook.Stop()
	}
	_ = e.fleet.Close()
	if e.c != nil {
		e.c.Stop()
	}
}
