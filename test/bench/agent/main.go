// Command agent is `make bench-agent`: it measures termgate's agent on the
// local cluster as users deploy it, beside the same drain done two other
// ways in the same run, and writes bin/bench/agent.json.
//
// As deployed: the agent with its own token bound to a stand-in agent pod
// on the node, the shipped RBAC and ValidatingAdmissionPolicy, the shipped
// webhook configurations registered and the webhook running as in
// `make demo`, the DaemonSet's arguments and memory limit.
//   - notice_to_mark_ms_p50/p99: metadata flip to the taint seen by a watch
//     (GCE: the hanging GET answers at once)
//   - notice_to_mark_ms_p50/p99_aws, _azure: the same on an EC2 node
//     (IMDSv2 stand-in) and an Azure node (Scheduled Events stand-in),
//     whose agents poll: the target is the poll interval plus 50 ms
//   - drain110_evictions_issued_ms_p50: flip until every regular pod of
//     100 regular + 10 kube-system has a deletionTimestamp
//   - drain110_all_gone_ms_p50: flip until all 110 are gone
//   - agent_rss_mb: the agent's resident memory after a drain
//
// Admin: the same drain by the agent with the cluster's admin credentials,
// the webhook configurations removed (the policy stays: it matches only the
// agent's account).
//   - drain110_evictions_issued_ms_p50_admin, drain110_all_gone_ms_p50_admin
//
// Floor: a minimal client (admin, the agent's concurrency and client rate
// limits, no agent logic, no webhook) evicts the same 110 pods, regular ones
// first, timed like the drains until the 100 regular pods are being deleted.
//   - eviction_floor_ms_p50: the limit of this API server on this machine
//
// The three drains run in interleaved rounds. The as-deployed drain fails
// unless the webhook's confinement gate answered at least its 110
// evictions, and the admin one unless it answered none.
//
// Load balancers, as deployed, with the real service controller:
//   - drain_with_lb_to_without_ratio: the as-deployed drain (--lb-wait on,
//     as shipped) against the same drain with --lb-wait=false, interleaved
//     in the rounds; the pods back no Service, so nothing should wait
//   - lb_wait_ms_p50_1svc, lb_wait_ms_p50_10svc: a node backing 1 or 10
//     Services of type LoadBalancer is preempted; flip until the last
//     backend is being deleted
//
// Fat pods, as deployed on a second node: 60 pods, each with 250 KiB of
// annotations and 1 MiB of environment, exist before the agent starts; the
// agent drains them all.
//   - agent_rss_mb_fat_pods: the agent's resident memory once they are gone
//   - agent_rss_mb_fat_pods_peak: its peak resident memory (VmHWM)
//   - agent_anon_mb_fat_pods_peak: the largest anonymous part (heap,
//     stacks) sampled during the drain; the rest of RSS is mostly the
//     binary's own code, file pages the kernel can reclaim under the
//     container's limit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/localrun"
)

type options struct {
	markTrials, cloudMarkTrials, drainTrials, fatPods, lbTrials int
	out                                                         string
}

func main() {
	var o options
	flag.IntVar(&o.markTrials, "mark-trials", 200, "notice-to-mark trials (as deployed; 0 skips them)")
	flag.IntVar(&o.cloudMarkTrials, "cloud-mark-trials", 100, "notice-to-mark trials on the EC2 node and on the Azure node, each about a poll interval long (0 skips them)")
	flag.IntVar(&o.drainTrials, "drain-trials", 5, "rounds of 110-pod drains: as deployed, admin, eviction floor (0 skips them)")
	flag.IntVar(&o.lbTrials, "lb-trials", 3, "preemptions of a node backing 1 and 10 Services of type LoadBalancer, for the load-balancer wait (0 skips them)")
	flag.IntVar(&o.fatPods, "fat-pods", 60, "pods of 250 KiB annotations and 1 MiB environment for the memory figure (0 skips it)")
	flag.StringVar(&o.out, "out", "bin/bench/agent.json", "where to write the results")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-agent:", err)
		os.Exit(1)
	}
}

const (
	spotNode = "bench-spot"
	fatNode  = "bench-fat"
)

type bench struct {
	c       *cluster.Cluster
	bin     string
	shipped localrun.Container
	extra   []string
	fleet   *gcefake.Fleet
	webhook *localrun.Webhook
	// metrics scrapes the webhook and the agents.
	metrics *localrun.MetricsReader
	// registration removes and restores the webhook configurations
	// between the as-deployed and the other drains.
	registration *registration
	// md and spotID are the spot node's metadata server and agent identity.
	md     *gcefake.Server
	spotID *localrun.AgentIdentity
}

func run(ctx context.Context, o options) error {
	if o.markTrials < 0 || o.cloudMarkTrials < 0 || o.drainTrials < 0 || o.fatPods < 0 || o.lbTrials < 0 {
		return errors.New("-mark-trials, -cloud-mark-trials, -drain-trials, -lb-trials and -fat-pods must not be negative")
	}
	nodes := []cluster.NodeSpec{
		{Name: spotNode, Zone: "us-central1-a", MachineType: "e2-standard-4", Spot: true},
		{Name: fatNode, Zone: "us-central1-b", MachineType: "e2-standard-4", Spot: true},
		{Name: awsNode, Zone: "us-east-1a", MachineType: "m6i.xlarge", Spot: true, Cloud: cluster.CloudAWS},
		{Name: azureNode, Zone: "eastus-1", MachineType: "Standard_D4s_v5", Spot: true, Cloud: cluster.CloudAzure},
	}
	c, err := cluster.Start(ctx, cluster.Options{Nodes: nodes, PodDeleteDelay: time.Millisecond,
		LoadBalancers: &cluster.LoadBalancerOptions{OperationTime: lbOperation}})
	if err != nil {
		return err
	}
	defer c.Stop()
	bin, state, err := asdeployed.Build(ctx, c.Dir)
	if err != nil {
		return err
	}
	fmt.Println("measuring", state)
	shipped, err := localrun.ShippedAgent()
	if err != nil {
		return err
	}
	b := &bench{c: c, bin: bin, shipped: shipped, extra: strings.Fields(os.Getenv("AGENT_FLAGS")), fleet: gcefake.NewFleet()}
	defer b.fleet.Close()
	fmt.Printf("agent arguments from the DaemonSet: %v %v, environment %v\n", shipped.Args, b.extra, shipped.Env)
	webhook, err := asdeployed.StartWebhook(ctx, c, bin)
	if err != nil {
		return err
	}
	defer webhook.Stop()
	b.webhook = webhook
	if b.metrics, err = asdeployed.MetricsReader(ctx, c); err != nil {
		return err
	}
	if b.registration, err = saveRegistration(ctx, c, webhook.ConfigName); err != nil {
		return err
	}
	if b.spotID, err = asdeployed.Identity(ctx, c, spotNode); err != nil {
		return err
	}
	if b.md, err = b.fleet.Add(gcefake.Instance{Name: spotNode, Preemptible: true}); err != nil {
		return err
	}

	var figures []asdeployed.Figure
	if o.markTrials > 0 {
		marks, err := b.noticeToMark(ctx, o.markTrials)
		if err != nil {
			return err
		}
		figures = append(figures,
			asdeployed.Figure{Key: "notice_to_mark_ms_p50", Value: asdeployed.Percentile(marks, 50), Note: fmt.Sprintf("GCE, as deployed, %d trials", len(marks))},
			asdeployed.Figure{Key: "notice_to_mark_ms_p99", Value: asdeployed.Percentile(marks, 99), Target: "<= 50"})
	}
	if o.cloudMarkTrials > 0 {
		cf, err := b.cloudNoticeToMark(ctx, nodes, o.cloudMarkTrials)
		if err != nil {
			return err
		}
		figures = append(figures, cf...)
	}
	if o.drainTrials > 0 {
		d, err := b.drainRounds(ctx, o.drainTrials)
		if err != nil {
			return err
		}
		floor := asdeployed.Percentile(d.floor, 50)
		deployed, admin := asdeployed.Percentile(d.issued, 50), asdeployed.Percentile(d.issuedAdmin, 50)
		figures = append(figures,
			asdeployed.Figure{Key: "drain110_evictions_issued_ms_p50", Value: deployed, Note: "as deployed"},
			asdeployed.Figure{Key: "drain110_evictions_issued_ms_p50_admin", Value: admin, Note: "admin credentials, no webhook"},
			asdeployed.Figure{Key: "eviction_floor_ms_p50", Value: floor, Note: "110 evictions, 32 in flight, no agent; timed to the 100 regular pods"},
			asdeployed.Figure{Key: "drain110_deployed_to_admin_ratio", Value: ratio(deployed, admin), Target: "<= 1.15"},
			asdeployed.Figure{Key: "drain110_deployed_to_floor_ratio", Value: ratio(deployed, floor), Target: "<= 1.25"},
			asdeployed.Figure{Key: "drain110_all_gone_ms_p50", Value: asdeployed.Percentile(d.gone, 50), Note: "as deployed"},
			asdeployed.Figure{Key: "drain_with_lb_to_without_ratio", Value: ratio(deployed, asdeployed.Percentile(d.issuedNoLB, 50)), Target: "<= 1.05",
				Note: fmt.Sprintf("pods back no Service; --lb-wait=false drains in %.0f ms", asdeployed.Percentile(d.issuedNoLB, 50))},
			asdeployed.Figure{Key: "drain110_all_gone_ms_p50_admin", Value: asdeployed.Percentile(d.goneAdmin, 50)},
			asdeployed.Figure{Key: "agent_rss_mb", Value: slices.Max(d.rss), Target: "<= 40", Note: fmt.Sprintf("as deployed, after a drain, largest of the rounds (anonymous: %.1f)", slices.Max(d.anon))})
	}
	if o.lbTrials > 0 {
		for _, n := range []int{1, 10} {
			ms, err := b.lbWaitTrials(ctx, n, o.lbTrials)
			if err != nil {
				return fmt.Errorf("load-balancer wait, %d Services: %w", n, err)
			}
			fmt.Printf("load-balancer wait with %d Services: %v ms\n", n, ms)
			figures = append(figures, asdeployed.Figure{Key: fmt.Sprintf("lb_wait_ms_p50_%dsvc", n), Value: asdeployed.Percentile(ms, 50),
				Note: fmt.Sprintf("flip to the last backend evicted; %d trials, cloud calls of %s one after the other, 2 s margin", len(ms), lbOperation)})
		}
	}
	if o.fatPods > 0 {
		fat, sampled, err := b.fatPodsDrain(ctx, o.fatPods)
		if err != nil {
			return fmt.Errorf("fat pods: %w", err)
		}
		limit := fmt.Sprintf("< %.0f", float64(b.shipped.MemoryLimit)/(1<<20))
		figures = append(figures,
			asdeployed.Figure{Key: "agent_rss_mb_fat_pods", Value: fat.RSS, Target: limit, Note: fmt.Sprintf("after draining %d fat pods", o.fatPods)},
			asdeployed.Figure{Key: "agent_rss_mb_fat_pods_peak", Value: fat.Peak, Target: limit, Note: "VmHWM"},
			asdeployed.Figure{Key: "agent_anon_mb_fat_pods_peak", Value: sampled.Anon, Target: limit, Note: fmt.Sprintf("largest RssAnon sampled during the drain; %.1f MiB of RSS are file pages", fat.File)})
	}
	wmem, err := asdeployed.ReadMemory(webhook.PID())
	if err != nil {
		return err
	}
	fmt.Printf("webhook resident memory after the run: %.1f MiB (peak %.1f MiB)\n", wmem.RSS, wmem.Peak)
	if err := webhook.Exited(); err != nil {
		return fmt.Errorf("the webhook died during the run: %w", err)
	}
	title := fmt.Sprintf("termgate agent benchmark (%d mark trials, %d drain rounds, local cluster)", o.markTrials, o.drainTrials)
	return asdeployed.Report(title, o.out, state, figures)
}

// drains holds the figures of every round, in milliseconds.
type drains struct {
	issued, gone, issuedAdmin, goneAdmin, floor []float64
	issuedNoLB                                  []float64 // as deployed with --lb-wait=false
	rss, anon                                   []float64 // as-deployed agent after its drain, MiB
}

// drainRounds runs rounds of the three drains: as deployed, admin with no
// webhook, and the floor. Interleaving them cancels out the load that
// others put on this shared machine from minute to minute; the order
// alternates so no kind always follows another.
func (b *bench) drainRounds(ctx context.Context, rounds int) (drains, error) {
	var d drains
	for i := range rounds {
		steps := []string{"deployed", "floor", "admin", "nolb"}
		if i%2 == 1 {
			slices.Reverse(steps)
		}
		var line []string
		for _, step := range steps {
			switch step {
			case "nolb":
				issued, _, _, err := b.deployedDrain(ctx, "--lb-wait=false")
				if err != nil {
					return d, fmt.Errorf("round %d, as-deployed drain without the load-balancer wait: %w", i+1, err)
				}
				d.issuedNoLB = append(d.issuedNoLB, issued)
				line = append(line, fmt.Sprintf("without the lb wait %.0f ms", issued))
			case "deployed":
				issued, gone, mem, err := b.deployedDrain(ctx)
				if err != nil {
					return d, fmt.Errorf("round %d, as-deployed drain: %w", i+1, err)
				}
				d.issued, d.gone = append(d.issued, issued), append(d.gone, gone)
				d.rss, d.anon = append(d.rss, mem.RSS), append(d.anon, mem.Anon)
				line = append(line, fmt.Sprintf("as deployed %.0f ms (all gone %.0f ms)", issued, gone))
			case "admin":
				issued, gone, err := b.adminDrain(ctx)
				if err != nil {
					return d, fmt.Errorf("round %d, admin drain: %w", i+1, err)
				}
				d.issuedAdmin, d.goneAdmin = append(d.issuedAdmin, issued), append(d.goneAdmin, gone)
				line = append(line, fmt.Sprintf("admin %.0f ms (all gone %.0f ms)", issued, gone))
			case "floor":
				if err := b.registration.remove(ctx); err != nil {
					return d, err
				}
				f, err := b.floor(ctx)
				if err != nil {
					return d, fmt.Errorf("round %d, eviction floor: %w", i+1, err)
				}
				d.floor = append(d.floor, f)
				line = append(line, fmt.Sprintf("floor %.0f ms", f))
			}
		}
		fmt.Printf("round %d, evictions issued: %s\n", i+1, strings.Join(line, ", "))
	}
	return d, nil
}

// deployedDrain registers the webhook, runs the agent with its own
// identity through one drain, and checks that the confinement gate really
// answered every eviction.
func (b *bench) deployedDrain(ctx context.Context, flags ...string) (issuedMS, goneMS float64, mem asdeployed.Memory, err error) {
	if err := b.registration.restore(ctx); err != nil {
		return 0, 0, asdeployed.Memory{}, err
	}
	agent, err := b.startAgentWith(ctx, spotNode, b.md, b.spotID, flags...)
	if err != nil {
		return 0, 0, asdeployed.Memory{}, err
	}
	defer agent.Stop()
	before, err := b.confinementAnswers(ctx)
	if err != nil {
		return 0, 0, asdeployed.Memory{}, err
	}
	if issuedMS, goneMS, err = b.drain110(ctx, b.md); err != nil {
		return 0, 0, asdeployed.Memory{}, fmt.Errorf("%w (agent log %s, webhook log %s)", err, agent.LogPath(), b.webhook.LogPath())
	}
	after, err := b.confinementAnswers(ctx)
	if err != nil {
		return 0, 0, asdeployed.Memory{}, err
	}
	if after-before < 110 {
		return 0, 0, asdeployed.Memory{}, fmt.Errorf("the confinement gate answered %v calls during a drain of 110 pods: the drain did not go through the webhook", after-before)
	}
	if mem, err = asdeployed.ReadMemory(agent.PID()); err != nil {
		return 0, 0, asdeployed.Memory{}, err
	}
	return issuedMS, goneMS, mem, nil
}

// adminDrain runs the agent with admin credentials, nothing of termgate
// registered with the API server, through one drain.
func (b *bench) adminDrain(ctx context.Context) (issuedMS, goneMS float64, err error) {
	if err := b.registration.remove(ctx); err != nil {
		return 0, 0, err
	}
	agent, err := b.startAgent(ctx, spotNode, b.md, nil)
	if err != nil {
		return 0, 0, err
	}
	defer agent.Stop()
	before, err := b.confinementAnswers(ctx)
	if err != nil {
		return 0, 0, err
	}
	if issuedMS, goneMS, err = b.drain110(ctx, b.md); err != nil {
		return 0, 0, fmt.Errorf("%w (agent log %s)", err, agent.LogPath())
	}
	after, err := b.confinementAnswers(ctx)
	if err != nil {
		return 0, 0, err
	}
	if after != before {
		return 0, 0, fmt.Errorf("the confinement gate answered %v calls during the drain without webhook", after-before)
	}
	return issuedMS, goneMS, nil
}

// confinementAnswers is the webhook's count of confinement decisions.
func (b *bench) confinementAnswers(ctx context.Context) (float64, error) {
	c, err := asdeployed.Counters(ctx, b.metrics, b.webhook.MetricsAddr, `termgate_webhook_decisions_total{gate="agent"`)
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, v := range c {
		sum += v
	}
	return sum, nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// startAgent starts an agent with the DaemonSet's arguments and environment,
// with its own identity, or admin credentials when id is nil.
func (b *bench) startAgent(ctx context.Context, node string, md *gcefake.Server, id *localrun.AgentIdentity) (*localrun.Agent, error) {
	return b.startAgentWith(ctx, node, md, id)
}

// startAgentWith is startAgent with flags after the shipped ones.
func (b *bench) startAgentWith(ctx context.Context, node string, md *gcefake.Server, id *localrun.AgentIdentity, flags ...string) (*localrun.Agent, error) {
	return asdeployed.StartAgent(ctx, asdeployed.AgentSpec{
		Cluster: b.c, Binary: b.bin, Node: node, MetadataHost: md.Host(), Identity: id, Extra: append(slices.Clone(b.extra), flags...),
	})
}

// noticeToMark runs the agent as deployed, flips instance/preempted and
// times until a separate node watch sees the taint, then flips it back and
// waits for the node to clear.
func (b *bench) noticeToMark(ctx context.Context, trials int) ([]float64, error) {
	if err := b.registration.restore(ctx); err != nil {
		return nil, err
	}
	agent, err := b.startAgent(ctx, spotNode, b.md, b.spotID)
	if err != nil {
		return nil, err
	}
	defer agent.Stop()
	w, err := b.nodeWatch(ctx, spotNode)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	ms, err := flipAndTime(ctx, w, trials, 0, b.md.SetPreempted)
	if err != nil {
		return nil, err
	}
	printAgentHistogram(ctx, b.metrics, agent.MetricsAddr)
	return ms, nil
}

// flipAndTime announces a notice with set(true), times until the watch sees
// the taint, withdraws it and waits for the node to clear, trials times.
// With a polled source the node clears just after a poll, so each notice
// waits a random part of the poll interval first: a notice comes at any
// point of the agent's poll cycle, as on a real VM.
func flipAndTime(ctx context.Context, w watch.Interface, trials int, poll time.Duration, set func(bool)) ([]float64, error) {
	var ms []float64
	for range trials {
		if poll > 0 {
			select {
			case <-time.After(rand.N(poll)):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		flip := time.Now()
		set(true)
		if err := awaitTaint(ctx, w, true); err != nil {
			return nil, err
		}
		ms = append(ms, msSince(flip))
		set(false)
		if err := awaitTaint(ctx, w, false); err != nil {
			return nil, err
		}
	}
	return ms, nil
}

// nodeWatch watches one node, resuming across the API server's timeouts.
func (b *bench) nodeWatch(ctx context.Context, node string) (watch.Interface, error) {
	nodes := b.c.Client.CoreV1().Nodes()
	w, err := asdeployed.ResumingWatch(ctx,
		func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := nodes.List(ctx, o)
			if err != nil {
				return "", err
			}
			return l.ResourceVersion, nil
		}, nodes.Watch, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", node).String()})
	if err != nil {
		return nil, fmt.Errorf("watch node %s: %w", node, err)
	}
	return w, nil
}

// awaitTaint reads the watch until the taint is present (or absent). The
// agent's own 10 s readiness budget bounds the wait.
func awaitTaint(ctx context.Context, w watch.Interface, tainted bool) error {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return errors.New("node watch closed")
			}
			n, isNode := ev.Object.(*corev1.Node)
			if !isNode {
				continue
			}
			has := slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == nodemark.TaintKey })
			if has == tainted {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("taint present=%v not seen within 10s", tainted)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// printAgentHistogram shows the agent's own notice-to-mark histogram (from
// receiving the metadata answer to the patch being accepted), which splits
// the end-to-end figure into the agent's share and the watch's.
func printAgentHistogram(ctx context.Context, r *localrun.MetricsReader, addr string) {
	b, err := r.Scrape(ctx, addr)
	if err != nil {
		fmt.Println("agent-side histogram:", err)
		return
	}
	fmt.Println("agent-side termgate_agent_notice_to_mark_seconds (cumulative):")
	for _, line := range strings.Split(b, "\n") {
		if strings.HasPrefix(line, "termgate_agent_notice_to_mark_seconds_bucket") {
			fmt.Println("  " + strings.TrimPrefix(line, "termgate_agent_notice_to_mark_seconds_bucket"))
		}
	}
}
