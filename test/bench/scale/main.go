// Command scale is `make bench-scale`, the throughput shape (T) of a zone
// reclaim: 1,000 kwok nodes, 500 of them Spot and preempted within one
// second with 20 evictable pods each (10,000 evictions), every preempted
// node with an agent of its own pod-bound token, against the webhook as
// deployed (its own token, the shipped configurations and policies).
//
// Two cores do not run 500 agent processes: 490 agents run in this process
// (localrun.InProcessAgent, built by the binary's own constructor from the
// shipped DaemonSet's arguments, each with its own token, API connection
// and metadata transport) and 10, every fiftieth node, as `termgate agent`
// processes. Both groups' mark times are reported side by side; if they
// differ beyond noise the in-process figures do not count.
//
// The floor is the same evictions in the same run and cluster by a minimal
// client (admin credentials, no webhook in their path, no rate limit),
// 20 pods on each of 500 idle nodes evicted at once per node, the nodes'
// groups started at the same offsets as the notices: what the API server
// and kwok can do at that concurrency.
//
// What two cores cannot show: etcd runs without fsync, there is one API
// server, and no network lies between anything. kwok's node leases last
// 4 minutes (-node-lease), not the kubelet's 40 s, so that their renewals
// do not take the cores from the work measured. The agents' notice is 5
// minutes (--preemption-notice), long enough for this machine to do the
// work; GCE gives 30 s.
//
// -shape=Z is the zone shape (zone.go): 5,000 nodes in three zones, the
// 500 Spot nodes of one zone preempted over 5 s, each with two pods of
// Deployments under 20% budgets (placed by the scheduler) and a DaemonSet
// pod, while a Spot-preferring Deployment scales up, pods are pinned to
// marked nodes, a bystander writes ConfigMaps at 20/s, and three webhook
// replicas answer behind one address.
//
// Written to bin/bench/scale.json; the keys are defined in
// docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/bench/asdeployed"
)

type options struct {
	shape                                                    string
	nodes, preempted, podsPerNode, processAgents, namespaces int
	spread, notice, nodeLease                                time.Duration
	out                                                      string
	withoutEvictionFlow                                      bool
	// Shape Z only.
	deployments, backgroundPerNode, spotReplicas, bystanderQPS, webhookReplicas int
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 1000, "kwok nodes in the cluster")
	flag.IntVar(&o.preempted, "preempted", 500, "Spot nodes preempted, each with an agent")
	flag.IntVar(&o.podsPerNode, "pods-per-node", 20, "evictable pods on each preempted node")
	flag.IntVar(&o.namespaces, "namespaces", 10, "namespaces the pods are spread over (tenants sharing nodes)")
	flag.IntVar(&o.processAgents, "process-agents", 10, "agents run as processes (the others run in this process)")
	flag.DurationVar(&o.spread, "spread", time.Second, "the notices arrive evenly spread over this time")
	flag.DurationVar(&o.notice, "notice", 5*time.Minute, "the agents' --preemption-notice: time from notice to deadline")
	flag.DurationVar(&o.nodeLease, "node-lease", 4*time.Minute, "kwok's node lease duration (renewed every quarter of it; the controller manager's grace period is five quarters): at the kubelet's 40 s, 5,000 nodes write 500 leases a second and, falling behind, turn Ready=Unknown")
	flag.BoolVar(&o.withoutEvictionFlow, "diagnose-without-eviction-flowschema", false, "not as deployed: delete the FlowSchema termgate-agent-evictions before the reclaim, so the agents' evictions fall to the built-in service-accounts schema (one flow for all agents)")
	flag.StringVar(&o.out, "out", "bin/bench/scale.json", "where to write the results")
	flag.StringVar(&o.shape, "shape", "T", "T: throughput (the defaults above); Z: a zone reclaimed in a working cluster, whose defaults are -nodes 5000 -preempted 500 -spread 5s -pods-per-node 2 unless given")
	flag.IntVar(&o.deployments, "deployments", 10, "shape Z: Deployments whose pods (pods-per-node on each preempted node) the budgets cover, a multiple of -pods-per-node")
	flag.IntVar(&o.backgroundPerNode, "background-per-node", 1, "shape Z: pods on every node not preempted")
	flag.IntVar(&o.spotReplicas, "spot-replicas", 0, "shape Z: replicas the Spot-preferring Deployment is scaled to at the first notice; 0 is as many as -preempted")
	flag.IntVar(&o.bystanderQPS, "bystander-qps", 20, "shape Z: the bystander's ConfigMap writes per second")
	flag.IntVar(&o.webhookReplicas, "webhook-replicas", 3, "shape Z: webhook replicas behind one address")
	flag.Parse()
	if o.shape == "Z" {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"nodes": "5000", "preempted": "500", "spread": "5s", "pods-per-node": "2"} {
			if !set[name] {
				_ = flag.Set(name, v)
			}
		}
		if o.spotReplicas == 0 {
			o.spotReplicas = o.preempted
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale:", err)
		os.Exit(1)
	}
}

// evictionFlowSchema is the shipped FlowSchema of the agents' evictions.
const evictionFlowSchema = "termgate-agent-evictions"

// runBudget bounds the whole run (the limit is 20 minutes).
const runBudget = 20 * time.Minute

func run(ctx context.Context, o options) error {
	switch o.shape {
	case "T":
	case "Z":
		return runZone(ctx, o)
	default:
		return fmt.Errorf("-shape %q: want T or Z", o.shape)
	}
	if o.namespaces < 1 || o.preempted < 1 || o.nodes < 2*o.preempted || o.podsPerNode < 1 || o.processAgents < 0 || o.processAgents > o.preempted {
		return errors.New("want 1 <= -namespaces, 1 <= -preempted, -nodes >= 2 * -preempted (the floor uses the idle half), -pods-per-node >= 1, 0 <= -process-agents <= -preempted")
	}
	ctx, cancel := context.WithTimeout(ctx, runBudget)
	defer cancel()
	e, err := setUp(ctx, o)
	if e != nil {
		defer e.tearDown()
	}
	if err != nil {
		return err
	}
	if o.withoutEvictionFlow {
		if err := e.c.Client.FlowcontrolV1().FlowSchemas().Delete(ctx, evictionFlowSchema, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete FlowSchema %s: %w", evictionFlowSchema, err)
		}
		say("FlowSchema %s deleted: not as deployed", evictionFlowSchema)
	}
	res, err := e.reclaim(ctx, o)
	// The webhook's log says why it answered as it did; the cluster's
	// directory goes away with it.
	if b, readErr := os.ReadFile(e.webhook.LogPath()); readErr == nil {
		kept := filepath.Join(filepath.Dir(o.out), "scale-webhook.log")
		if os.MkdirAll(filepath.Dir(kept), 0o755) == nil && os.WriteFile(kept, b, 0o644) == nil {
			say("webhook log kept in %s", kept)
		}
	}
	if err != nil {
		return err
	}
	e.stopAgents()
	floor, err := e.floor(ctx, o)
	if err != nil {
		return err
	}
	variant := "as deployed"
	if o.withoutEvictionFlow {
		variant = "without " + evictionFlowSchema
	}
	title := fmt.Sprintf("termgate scale benchmark, shape T (%d nodes, %d preempted within %s with %d pods each in %d namespaces, %d agents as processes, notice %s, %s)",
		o.nodes, o.preempted, o.spread, o.podsPerNode, o.namespaces, o.processAgents, o.notice, variant)
	return asdeployed.Report(title, o.out, e.state, figures(res, floor, o.podsPerNode, e.watchesPerAgent))
}

func runZone(ctx context.Context, o options) error {
	if o.namespaces < 1 || o.preempted < 1 || o.podsPerNode < 1 || o.deployments < o.podsPerNode || o.deployments%o.podsPerNode != 0 ||
		o.deployments/o.podsPerNode > o.preempted || o.processAgents < 0 || o.processAgents > o.preempted || o.backgroundPerNode < 0 ||
		o.spotReplicas < 0 || o.bystanderQPS < 1 || o.webhookReplicas < 1 {
		return errors.New("shape Z wants 1 <= -namespaces, 1 <= -preempted, -deployments a multiple of -pods-per-node and at most -pods-per-node * -preempted, 0 <= -process-agents <= -preempted, -background-per-node and -spot-replicas not negative, -bystander-qps and -webhook-replicas at least 1")
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, runBudget)
	defer cancel()
	e, err := setUpZone(ctx, o)
	if e != nil {
		defer e.tearDown()
	}
	if err != nil {
		return err
	}
	setUp := time.Since(began)
	say("set-up done in %s", setUp.Round(time.Second))
	res, err := e.reclaimZone(ctx, o)
	if e.replicas != nil {
		for i, w := range e.replicas.Replicas {
			if b, readErr := os.ReadFile(w.LogPath()); readErr == nil {
				kept := filepath.Join(filepath.Dir(o.out), fmt.Sprintf("scale-webhook-%d.log", i))
				if os.MkdirAll(filepath.Dir(kept), 0o755) == nil && os.WriteFile(kept, b, 0o644) == nil {
					say("webhook replica %d's log kept in %s", i, kept)
				}
			}
		}
	}
	if err != nil {
		return err
	}
	title := fmt.Sprintf("termgate scale benchmark, shape Z (%d nodes in 3 zones, %d Spot nodes of %s preempted within %s, each with %d pods of %d Deployments under 20%% budgets and a DaemonSet pod, %d background pods per other node, %s scaled to %d, %d webhook replicas, a bystander at %d writes/s, %d agents as processes, notice %s; set-up %s, the run %s)",
		o.nodes, o.preempted, zoneA, o.spread, o.podsPerNode, o.deployments, o.backgroundPerNode, spotWebName, o.spotReplicas, o.webhookReplicas, o.bystanderQPS, o.processAgents, o.notice,
		setUp.Round(time.Second), time.Since(began).Round(time.Second))
	return asdeployed.Report(title, o.out, e.state, zoneFigures(res, e.watchesPerAgent))
}

func say(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
