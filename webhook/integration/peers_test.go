package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/test/cluster"
)

// The webhook counts calls from outside the control plane's range, and the
// NetworkPolicy admits the control plane by that range. The user relies
// on the two saying the same thing as shipped, so that changing the one the
// README points at, and not the other, is caught here first.
func TestTheWebhookExpectsCallsFromTheNetworkPolicysControlPlaneRange(t *testing.T) {
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string, into any) {
		b, err := os.ReadFile(filepath.Join(root, "manifests", "base", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, into); err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
	}
	var np networkingv1.NetworkPolicy
	read("webhook-networkpolicy.yaml", &np)
	var ranges []string
	for _, rule := range np.Spec.Ingress {
		for _, from := range rule.From {
			if from.IPBlock != nil {
				ranges = append(ranges, from.IPBlock.CIDR)
			}
		}
	}
	var d appsv1.Deployment
	read("webhook-deployment.yaml", &d)
	var expected []string
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--expected-peer-cidrs="); ok {
			expected = strings.Split(v, ",")
		}
	}
	slices.Sort(ranges)
	slices.Sort(expected)
	if len(ranges) == 0 || !slices.Equal(ranges, expected) {
		t.Fatalf("the NetworkPolicy admits %v by address, the Deployment's --expected-peer-cidrs lists %v", ranges, expected)
	}
}
