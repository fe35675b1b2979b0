package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"termgate.dev/termgate/test/azurefake"
	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/ec2fake"
	"termgate.dev/termgate/test/scenario"
)

// The polled clouds' nodes.
const (
	awsNode   = "bench-aws"
	azureNode = "bench-azure"
)

// cloudNoticeToMark times notice-to-mark on the EC2 and the Azure node, each
// agent as deployed (its own token, the DaemonSet's arguments, --cloud=auto
// telling the cloud from the provider ID) against its cloud's stand-in.
func (b *bench) cloudNoticeToMark(ctx context.Context, nodes []cluster.NodeSpec, trials int) ([]asdeployed.Figure, error) {
	poll, err := b.pollInterval()
	if err != nil {
		return nil, err
	}
	target := fmt.Sprintf("<= %d", (poll + 50*time.Millisecond).Milliseconds())
	var figures []asdeployed.Figure
	for _, n := range nodes {
		var flip func(bool)
		var endpoint asdeployed.AgentSpec
		switch n.Cloud {
		case cluster.CloudAWS:
			md, err := ec2fake.Start()
			if err != nil {
				return nil, err
			}
			defer md.Close()
			flip = func(on bool) {
				if on {
					md.SetInstanceAction("terminate", time.Now().Add(2*time.Minute))
				} else {
					md.SetInstanceAction("", time.Time{})
				}
			}
			endpoint.Env = []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + md.Endpoint()}
		case cluster.CloudAzure:
			md, err := azurefake.Start()
			if err != nil {
				return nil, err
			}
			defer md.Close()
			vm := scenario.AzureVMName(n)
			flip = func(on bool) {
				if on {
					md.Set(azurefake.Scheduled(fmt.Sprintf("preempt-%d", time.Now().UnixNano()), "Preempt", time.Now().Add(30*time.Second), vm))
				} else {
					md.Set()
				}
			}
			endpoint.Extra = []string{"--azure-metadata-endpoint=" + md.Endpoint()}
		default:
			continue
		}
		ms, err := b.timeOn(ctx, n.Name, endpoint, trials, poll, flip)
		if err != nil {
			return nil, fmt.Errorf("%s notice to mark: %w", n.Cloud, err)
		}
		figures = append(figures,
			asdeployed.Figure{Key: "notice_to_mark_ms_p50_" + n.Cloud, Value: asdeployed.Percentile(ms, 50),
				Note: fmt.Sprintf("%s stand-in, polled every %s (jittered below it), notices at random points of the poll cycle, as deployed, %d trials", n.Cloud, poll, len(ms))},
			asdeployed.Figure{Key: "notice_to_mark_ms_p99_" + n.Cloud, Value: asdeployed.Percentile(ms, 99), Target: target})
	}
	return figures, nil
}

// timeOn runs the agent of node as deployed and times trials notices.
func (b *bench) timeOn(ctx context.Context, node string, endpoint asdeployed.AgentSpec, trials int, poll time.Duration, flip func(bool)) ([]float64, error) {
	if err := b.registration.restore(ctx); err != nil {
		return nil, err
	}
	id, err := asdeployed.Identity(ctx, b.c, node)
	if err != nil {
		return nil, err
	}
	agent, err := asdeployed.StartAgent(ctx, asdeployed.AgentSpec{
		Cluster: b.c, Binary: b.bin, Node: node, Identity: id,
		Extra: append(append([]string{}, b.extra...), endpoint.Extra...), Env: endpoint.Env,
	})
	if err != nil {
		return nil, err
	}
	defer agent.Stop()
	w, err := b.nodeWatch(ctx, node)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	ms, err := flipAndTime(ctx, w, trials, poll, flip)
	if err != nil {
		return nil, fmt.Errorf("%w (agent log %s)", err, agent.LogPath())
	}
	printAgentHistogram(ctx, b.metrics, agent.MetricsAddr)
	return ms, nil
}

// pollInterval is the agents' --metadata-poll-interval: the DaemonSet's, or
// AGENT_FLAGS', or the default.
func (b *bench) pollInterval() (time.Duration, error) {
	d := time.Second
	for _, a := range append(append([]string{}, b.shipped.Args...), b.extra...) {
		if v, ok := strings.CutPrefix(a, "--metadata-poll-interval="); ok {
			var err error
			if d, err = time.ParseDuration(v); err != nil {
				return 0, fmt.Errorf("--metadata-poll-interval %q: %w", v, err)
			}
		}
	}
	return d, nil
}
