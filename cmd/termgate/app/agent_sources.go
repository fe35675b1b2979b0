package app

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent"
	"termgate.dev/termgate/agent/aws"
	"termgate.dev/termgate/agent/azure"
	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/agent/watch"
)

// cloudAuto is --cloud's default: the Node's provider ID tells.
const cloudAuto = "auto"

// cloudOf names the cloud a provider ID belongs to. It never probes the
// network: a link-local address that does not answer costs time-outs, and
// one that answers may be another cloud's look-alike.
func cloudOf(providerID string) (string, error) {
	switch {
	case providerID == "":
		return "", fmt.Errorf("the node has no spec.providerID yet: set --cloud=gce, aws or azure, or wait for the cloud controller to set it")
	case strings.HasPrefix(providerID, "gce://"):
		return watch.SourceName, nil
	case strings.HasPrefix(providerID, "aws://"):
		return aws.SourceName, nil
	case strings.HasPrefix(providerID, "azure://"):
		return azure.SourceName, nil
	}
	return "", fmt.Errorf("provider ID %q is none of gce://, aws:// or azure://: set --cloud", notice.Truncate(providerID))
}

// sources builds the notice source for the agent's Node.
func (o *agentOptions) sources(clk clock.Clock, m *notice.Metrics) agent.SourceFor {
	return func(node *corev1.Node) (notice.Source, error) {
		cloud := o.cloud
		if cloud == cloudAuto {
			c, err := cloudOf(node.Spec.ProviderID)
			if err != nil {
				return nil, fmt.Errorf("--cloud=auto: %w", err)
			}
			cloud = c
		}
		switch cloud {
		case watch.SourceName:
			return watch.NewSource(watch.New(clk, o.watch, watch.MetricsFrom(m))), nil
		case aws.SourceName:
			return aws.New(clk, o.aws, m), nil
		case azure.SourceName:
			cfg := o.azure
			name, err := azure.VMName(node.Spec.ProviderID)
			if err != nil {
				return nil, fmt.Errorf("--cloud=azure: this VM's name, which Scheduled Events lists in Resources: %w", err)
			}
			cfg.VMName = name
			if err := cfg.Validate(); err != nil {
				return nil, err
			}
			return azure.New(clk, cfg, m), nil
		}
		return nil, fmt.Errorf("--cloud=%q: want gce, aws, azure or auto", cloud)
	}
}
