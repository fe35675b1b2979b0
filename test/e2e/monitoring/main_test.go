// Package monitoring runs Prometheus itself (built from its Go module,
// bin/prometheus) against termgate on the local cluster, with the chart's
// alert rules loaded as a user's Prometheus loads them: the agent and the
// webhook run as processes with their own tokens, scraped over HTTPS with
// the token of a service account bound to the shipped
// termgate-metrics-reader role, and so is the API server. A quiet cluster
// fires no alert; a drain forced past its deadline fires the deadline
// alert; every metric the alerts and the dashboard name is one Prometheus
// has scraped.
package monitoring

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

var (
	env      *cluster.Cluster
	prom     *localrun.Prometheus
	agent    *localrun.Agent
	metadata *gcefake.Server
	spot     = cluster.NodeSpec{Name: "spot-monitored", Zone: "us-central1-a", MachineType: "e2-standard-4", Spot: true}
)

// The jobs as the chart's monitors name them: the PodMonitor's job is
// <namespace>/<name>, the ServiceMonitor's the Service's name.
const (
	agentJob   = "termgate/termgate-agent"
	webhookJob = "termgate-webhook"
)

// The agent's notice: short, so the deadline test waits little.
const preemptionNotice = "10s"

func TestMain(m *testing.M) {
	var webhook *localrun.Webhook
	var fleet *gcefake.Fleet
	code := testenv.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(1)}, &env, func(dir string) error {
		ctx := context.Background()
		binary, err := localrun.Build(ctx, dir)
		if err != nil {
			return err
		}
		if webhook, err = localrun.StartWebhookWithOwnIdentity(ctx, env, localrun.WebhookSpec{Binary: binary}); err != nil {
			return err
		}
		if err := env.AddNodes(ctx, spot); err != nil {
			return err
		}
		fleet = gcefake.NewFleet()
		if metadata, err = fleet.Add(gcefake.Instance{Name: spot.Name, Zone: spot.Zone, MachineType: spot.MachineType, Preemptible: true}); err != nil {
			return err
		}
		id, err := localrun.NewAgentIdentity(ctx, localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: dir, Node: spot.Name})
		if err != nil {
			return err
		}
		if agent, err = localrun.StartAgent(ctx, localrun.AgentSpec{
			Binary: binary, Dir: dir, Kubeconfig: id.Kubeconfig, Node: spot.Name, MetadataHost: metadata.Host(), Pod: id.Pod,
			Flags: []string{"--preemption-notice=" + preemptionNotice},
		}); err != nil {
			return err
		}
		reader, err := localrun.NewMetricsReader(ctx, localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: dir})
		if err != nil {
			return err
		}
		api, err := url.Parse(env.Config.Host)
		if err != nil {
			return err
		}
		root, err := cluster.RepoRoot()
		if err != nil {
			return err
		}
		prom, err = localrun.StartPrometheus(ctx, localrun.PrometheusSpec{
			Dir: dir, Token: reader.Token,
			Jobs: []localrun.ScrapeJob{
				{Name: agentJob, Targets: []string{agent.MetricsAddr}},
				{Name: webhookJob, Targets: []string{webhook.MetricsAddr}},
				{Name: "apiserver", Targets: []string{api.Host}},
			},
			RuleFiles: []string{filepath.Join(root, "charts", "termgate", "files", "prometheus-rules.yaml")},
		})
		return err
	})
	if prom != nil {
		prom.Stop()
	}
	if agent != nil {
		agent.Stop()
	}
	if webhook != nil {
		webhook.Stop()
	}
	if fleet != nil {
		_ = fleet.Close()
	}
	os.Exit(code)
}
