package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

// env is everything the storm runs on.
type env struct {
	c            *cluster.Cluster
	bin, state   string
	fleet        *gcefake.Fleet
	webhook      *localrun.Webhook
	webhookLimit int64
	// metrics scrapes the webhook and the agents.
	metrics *localrun.MetricsReader
	// spot are the nodes that get preempted, each with an agent.
	spot   []string
	agents []*localrun.Agent
	ns     string
}

const deploymentName = "storm-web"

func say(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// setUp starts everything. On error the returned env (if any) holds what
// started, for tearDown.
func setUp(ctx context.Context, o options) (*env, error) {
	zones := []string{"us-central1-a", "us-central1-b", "us-central1-c"}
	specs := make([]cluster.NodeSpec, o.nodes)
	e := &env{fleet: gcefake.NewFleet()}
	for i := range specs {
		specs[i] = cluster.NodeSpec{Name: fmt.Sprintf("storm-%03d", i), Zone: zones[i%len(zones)], MachineType: "e2-standard-4", Spot: i < o.agents}
		if i < o.agents {
			e.spot = append(e.spot, specs[i].Name)
		}
	}
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs})
	if err != nil {
		return e, err
	}
	e.c = c
	say("local cluster with %d Ready nodes (%s)", o.nodes, since(began))
	if e.bin, e.state, err = asdeployed.Build(ctx, c.Dir); err != nil {
		return e, err
	}
	say("measuring %s", e.state)
	shipped, err := localrun.ShippedWebhook()
	if err != nil {
		return e, err
	}
	e.webhookLimit = shipped.MemoryLimit
	began = time.Now()
	var webhookFlags []string
	if o.refuseUnconfirmed != "" {
		webhookFlags = append(webhookFlags, "--refuse-unconfirmed="+o.refuseUnconfirmed)
		say("webhook started with --refuse-unconfirmed=%s (shipped arguments: %v)", o.refuseUnconfirmed, shipped.Args)
	}
	if e.webhook, err = asdeployed.StartWebhook(ctx, c, e.bin, webhookFlags...); err != nil {
		return e, err
	}
	say("webhook serving on %s with its own service account's token, configurations registered (%s)", e.webhook.Addr, since(began))
	if e.metrics, err = asdeployed.MetricsReader(ctx, c); err != nil {
		return e, err
	}

	began = time.Now()
	ids, err := e.identities(ctx)
	if err != nil {
		return e, err
	}
	say("%d agent identities: shipped RBAC and ValidatingAdmissionPolicy once, a stand-in pod and a bound token each (%s)", len(ids), since(began))

	began = time.Now()
	if err := e.workload(ctx, o); err != nil {
		return e, err
	}
	say("%d pods running on the %d Spot nodes (%s)", o.podsPerNode*len(e.spot), len(e.spot), since(began))

	began = time.Now()
	if err := e.startAgents(ctx, ids, o.extra); err != nil {
		return e, err
	}
	say("%d agents ready (%s)", len(e.agents), since(began))
	return e, nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// identities installs the shipped agent permissions once, then makes each
// Spot node's agent identity (its stand-in pod and bound token), a few at a
// time.
func (e *env) identities(ctx context.Context) (map[string]*localrun.AgentIdentity, error) {
	spec := localrun.IdentitySpec{Admin: e.c.Client, AdminConfig: e.c.Config, Dir: e.c.Dir}
	if err := localrun.InstallAgentPermissions(ctx, spec); err != nil {
		return nil, fmt.Errorf("agent permissions: %w", err)
	}
	ids := map[string]*localrun.AgentIdentity{}
	var mu sync.Mutex
	err := kit.InParallel(e.spot, 8, func(node string) error {
		s := spec
		s.Node = node
		id, err := localrun.AgentIdentityOn(ctx, s)
		if err != nil {
			return fmt.Errorf("agent identity for %s: %w", node, err)
		}
		mu.Lock()
		ids[node] = id
		mu.Unlock()
		return nil
	})
	return ids, err
}

// workload puts podsPerNode pods on every Spot node (pinned: the storm is
// about the drain, not about placing them) and creates the Deployment,
// with no replicas yet, that the storm scales up.
func (e *env) workload(ctx context.Context, o options) error {
	client := e.c.Client
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "storm-"}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}
	e.ns = ns.Name
	if err := kit.WaitDefaultServiceAccount(ctx, client, e.ns); err != nil {
		return err
	}
	var pods []*corev1.Pod
	for _, node := range e.spot {
		for i := range o.podsPerNode {
			pods = append(pods, kit.Pod(e.ns, node+"-app-"+strconv.Itoa(i), kit.OnNode(node), func(p *corev1.Pod) {
				p.Labels["role"] = "pinned"
			}))
		}
	}
	err = kit.InParallel(pods, 16, func(p *corev1.Pod) error {
		if _, err := client.CoreV1().Pods(e.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s: %w", p.Name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// kwok starts each pod within a second or so; three minutes for a
	// thousand on two busy cores means something is broken.
	err = kit.Poll(ctx, 3*time.Minute, func(ctx context.Context) (bool, string, error) {
		list, err := client.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: "role=pinned", ResourceVersion: "0"})
		if err != nil {
			return false, "", err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == len(pods), fmt.Sprintf("%d of %d running", running, len(pods)), nil
	})
	if err != nil {
		return fmt.Errorf("pinned pods: %w", err)
	}
	// The Deployment prefers Spot capacity, as cost-minded workloads do:
	// the scheduler keeps choosing the Spot nodes until their taints land,
	// which is the race the bind gate closes.
	d := kit.Deployment(e.ns, deploymentName, 0, func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{
				Weight: 100,
				Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: cluster.LabelSpot, Operator: corev1.NodeSelectorOpIn, Values: []string{"true"}},
				}},
			}},
		}}
	})
	if _, err := client.AppsV1().Deployments(e.ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create deployment: %w", err)
	}
	return nil
}

// startAgents starts one agent per Spot node with its own identity and the
// DaemonSet's arguments and environment, a few at a time: each must sync its
// pod cache and read the metadata server within localrun's 10 s readiness
// budget, on two cores shared by everything.
func (e *env) startAgents(ctx context.Context, ids map[string]*localrun.AgentIdentity, extra []string) error {
	var mu sync.Mutex
	return kit.InParallel(slices.Sorted(maps.Keys(ids)), 5, func(node string) error {
		md, err := e.fleet.Add(gcefake.Instance{Name: node, Preemptible: true})
		if err != nil {
			return fmt.Errorf("metadata server for %s: %w", node, err)
		}
		a, err := asdeployed.StartAgent(ctx, asdeployed.AgentSpec{
			Cluster: e.c, Binary: e.bin, Node: node, MetadataHost: md.Host(), Identity: ids[node], Extra: extra,
		})
		if err != nil {
			return err
		}
		mu.Lock()
		e.agents = append(e.agents, a)
		mu.Unlock()
		return nil
	})
}

// tearDown stops every process the run started, agents first (in parallel:
// each may use its shutdown grace), then the webhook, the metadata servers
// and the cluster.
func (e *env) tearDown() {
	var wg sync.WaitGroup
	for _, a := range e.agents {
		wg.Go(a.Stop)
	}
	wg.Wait()
	if e.webhook != nil {
		e.webhook.Stop()
	}
	_ = e.fleet.Close()
	if e.c != nil {
		e.c.Stop()
	}
}

// scale sets the Deployment's replicas.
func (e *env) scale(ctx context.Context, replicas int) error {
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, replicas)
	_, err := e.c.Client.AppsV1().Deployments(e.ns).Patch(ctx, deploymentName, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("scale %s to %d: %w", deploymentName, replicas, err)
	}
	return nil
}
