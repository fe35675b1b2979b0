// Command storm is `make bench-storm`: a mass preemption on the local
// cluster with termgate as deployed, and what users rely on during it.
//
// 200 kwok nodes; on 50 of them (Spot) an agent process with its own
// pod-bound token and the DaemonSet's arguments and memory limit, and 20
// pods each; the webhook running as in `make demo` with the shipped
// configurations and ValidatingAdmissionPolicy registered. All 50 nodes are
// preempted within one second while a Deployment that prefers Spot nodes is
// scaled up, so the scheduler binds while the marks land. Written to
// bin/bench/storm.json:
//
//   - storm_mark_ms_max: the slowest node's notice-to-taint time (a node
//     never tainted counts as the whole observation window)
//   - storm_binds_onto_marked: Deployment pods bound to a Spot node by a
//     bind the API server received after it had stored the node's mark
//     (both times from its audit log, on its own clock): the binds the
//     webhook should have refused
//   - storm_binds_racing_mark: binds received before the mark was stored
//     but stored after it (the bind's resourceVersion, an etcd revision, is
//     above the mark's). Admission cannot order these: the webhook answered
//     on the node as it was while the mark was still on its way.
//   - storm_fail_open_calls: kube-apiserver log lines "failing open" for a
//     termgate webhook, from the first notice to the end
//   - storm_webhook_unchecked_allows: the webhook's own fail-open, which
//     the API server never sees: confinement answers "allowed, pod
//     unreadable" and bind or pinned-pod answers "allowed, node unknown"
//   - storm_webhook_refused_unconfirmed: binds and pinned pods refused
//     because their node's re-read failed (denied-unconfirmed), each a
//     scheduler retry
//   - storm_replicas_running_ms: scale-up to all the Deployment's replicas
//     Running at once (-1 if not within a minute of the last deadline),
//     with the pods' created-to-bound waits in the note
//   - storm_drains_done_by_deadline: fraction of the 50 nodes with no
//     evictable pod left (terminating ones included) at their deadline
//   - storm_webhook_rss_mb: the webhook's largest resident memory sampled
//     during the storm
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"termgate.dev/termgate/test/bench/asdeployed"
)

type options struct {
	nodes, agents, podsPerNode, replicas int
	spread                               time.Duration
	out                                  string
	extra                                []string
	withoutPolicy                        bool
	// refuseUnconfirmed, when set, is the webhook's --refuse-unconfirmed
	// for the run; empty keeps the shipped manifests' value.
	refuseUnconfirmed string
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 200, "kwok nodes in the cluster")
	flag.IntVar(&o.agents, "agents", 50, "Spot nodes preempted, each with an agent process")
	flag.IntVar(&o.podsPerNode, "pods-per-node", 20, "pods on each preempted node")
	flag.IntVar(&o.replicas, "replicas", 150, "replicas the Spot-preferring Deployment is scaled to as the storm begins")
	flag.DurationVar(&o.spread, "spread", time.Second, "the notices arrive evenly spread over this time")
	flag.StringVar(&o.out, "out", "bin/bench/storm.json", "where to write the results")
	flag.BoolVar(&o.withoutPolicy, "diagnose-without-node-policy", false, "not as deployed: remove the agent's Node policy binding before the storm, to see what the policy costs the marks")
	flag.StringVar(&o.refuseUnconfirmed, "webhook-refuse-unconfirmed", "", "true or false: the webhook's --refuse-unconfirmed for the run (empty: as the shipped manifests say), to compare allowing and refusing a bind whose node re-read failed")
	flag.Parse()
	o.extra = strings.Fields(os.Getenv("AGENT_FLAGS"))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-storm:", err)
		os.Exit(1)
	}
}

// runBudget bounds the whole run: set-up of a few minutes on two cores,
// a 30 s notice, and clean-up.
const runBudget = 15 * time.Minute

func run(ctx context.Context, o options) error {
	if o.refuseUnconfirmed != "" && o.refuseUnconfirmed != "true" && o.refuseUnconfirmed != "false" {
		return errors.New("-webhook-refuse-unconfirmed is true, false or empty")
	}
	if o.agents < 1 || o.nodes < o.agents || o.podsPerNode < 0 || o.replicas < 0 || o.spread < 0 {
		return errors.New("want 1 <= -agents <= -nodes, and -pods-per-node, -replicas, -spread not negative")
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
	res, err := e.storm(ctx, o)
	// The webhook's log says how it answered each bind; the cluster's
	// directory goes away with it.
	if kept, keepErr := keepLog(e.webhook.LogPath(), filepath.Join(filepath.Dir(o.out), "storm-webhook.log")); keepErr == nil {
		fmt.Println("webhook log kept in", kept)
	}
	if kept, keepErr := keepLog(e.c.AuditLogPath(), filepath.Join(filepath.Dir(o.out), "storm-audit.log")); keepErr == nil {
		fmt.Println("audit log kept in", kept)
	}
	if err != nil {
		return err
	}
	figures := []asdeployed.Figure{
		{Key: "storm_mark_ms_max", Value: res.markMaxMS, Target: "<= 1000", Note: fmt.Sprintf("p50 %.0f ms", res.markP50MS)},
		{Key: "storm_binds_onto_marked", Value: float64(res.bindsOntoMarked), Target: "0", Note: fmt.Sprintf("of %d binds during the storm, %d onto Spot nodes", res.binds, res.bindsOntoSpot)},
		{Key: "storm_binds_racing_mark", Value: float64(res.bindsRacing), Note: "asked for before the mark was stored, stored after it"},
		{Key: "storm_fail_open_calls", Value: float64(res.failOpen), Target: "0", Note: res.failOpenNote},
		{Key: "storm_webhook_unchecked_allows", Value: float64(res.uncheckedAllows), Target: "0", Note: res.uncheckedNote},
		{Key: "storm_webhook_refused_unconfirmed", Value: float64(res.refusedUnconfirmed), Note: res.refusedNote},
		{Key: "storm_replicas_running_ms", Value: res.replicasRunningMS, Note: res.replicasNote},
		{Key: "storm_drains_done_by_deadline", Value: res.doneFraction, Target: "1.0", Note: res.doneNote},
		{Key: "storm_webhook_rss_mb", Value: res.webhookRSS, Target: fmt.Sprintf("< %.0f", float64(e.webhookLimit)/(1<<20)), Note: fmt.Sprintf("peak since start %.1f MiB", res.webhookPeak)},
	}
	title := fmt.Sprintf("termgate storm benchmark (%d nodes, %d preempted within %s with %d pods each, Deployment scaled to %d)",
		o.nodes, o.agents, o.spread, o.podsPerNode, o.replicas)
	if o.refuseUnconfirmed != "" {
		title += ", webhook --refuse-unconfirmed=" + o.refuseUnconfirmed
	}
	return asdeployed.Report(title, o.out, e.state, figures)
}

func keepLog(from, to string) (string, error) {
	b, err := os.ReadFile(from)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return "", err
	}
	return to, os.WriteFile(to, b, 0o644)
}
