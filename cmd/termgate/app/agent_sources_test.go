package app

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/prometheus/client_golang/prometheus"

	"termgate.dev/termgate/agent/notice"
)

func parseAgentFlags(t *testing.T, args ...string) (*agentOptions, error) {
	t.Helper()
	o := newAgentOptions()
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	if err := fs.Parse(append([]string{"--node-name=n"}, args...)); err != nil {
		return nil, err
	}
	o.Complete()
	return o, o.Validate()
}

func nodeWith(providerID string) *corev1.Node {
	n := &corev1.Node{}
	n.Name, n.Spec.ProviderID = "n", providerID
	return n
}

// --cloud=auto tells the cloud from the provider ID alone; a node it cannot
// place gets a clear error (the agent stays not ready), never a probe.
func TestTheCloudComesFromTheProviderID(t *testing.T) {
	o, err := parseAgentFlags(t)
	if err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	if o.cloud != cloudAuto || o.aws.PollInterval != time.Second || o.azure.PollInterval != time.Second || o.azure.Acknowledge {
		t.Fatalf("defaults: cloud %q, polls %s/%s, acknowledge %v", o.cloud, o.aws.PollInterval, o.azure.PollInterval, o.azure.Acknowledge)
	}
	m, err := notice.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sources := o.sources(clock.RealClock{}, m)
	for id, want := range map[string]string{
		"gce://my-project/us-central1-a/gke-spot-1": "gce",
		"aws:///us-east-1a/i-0123456789abcdef0":     "aws",
		"azure:///subscriptions/s/resourceGroups/mc/providers/Microsoft.Compute/virtualMachineScaleSets/aks-spot-1-vmss/virtualMachines/0": "azure",
	} {
		src, err := sources(nodeWith(id))
		if err != nil || src.Name() != want {
			t.Errorf("provider ID %q: source %v, %v; want %s", id, src, err, want)
		}
	}
	for id, mention := range map[string]string{
		"":                         "no spec.providerID",
		"kind://docker/kind/node1": "none of gce://, aws:// or azure://",
		"azure:///subscriptions/s": "names no virtual machine",
	} {
		if src, err := sources(nodeWith(id)); err == nil || !strings.Contains(err.Error(), mention) {
			t.Errorf("provider ID %q: source %v, error %v; want one mentioning %q", id, src, err, mention)
		}
	}
}

// A named cloud wins over the provider ID.
func TestTheCloudFlagOverridesTheProviderID(t *testing.T) {
	o, err := parseAgentFlags(t, "--cloud=aws", "--metadata-poll-interval=2s", "--aws-imds-endpoint=http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := notice.NewMetrics(prometheus.NewRegistry())
	if src, err := o.sources(clock.RealClock{}, m)(nodeWith("")); err != nil || src.Name() != "aws" {
		t.Fatalf("--cloud=aws on a node without provider ID: %v, %v", src, err)
	}
	if o.aws.PollInterval != 2*time.Second || o.aws.Endpoint != "http://127.0.0.1:1" {
		t.Fatalf("flags did not reach the EC2 source: %+v", o.aws)
	}
}

func TestAgentCloudFlagsAreValidated(t *testing.T) {
	for name, args := range map[string][]string{
		"an unknown cloud":              {"--cloud=openstack"},
		"polling faster than IMDS asks": {"--metadata-poll-interval=10ms"},
		"an endpoint that is not http":  {"--azure-metadata-endpoint=169.254.169.254"},
		"a zero advisory budget":        {"--advisory-budget=0s"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := parseAgentFlags(t, args...); err == nil {
				t.Fatalf("%v accepted", args)
			}
		})
	}
}
