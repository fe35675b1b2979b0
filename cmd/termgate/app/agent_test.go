package app

import (
	"strings"
	"testing"
	"time"
)

func TestAgentServesProbesOnLoopbackAndMetricsWithAuthenticationByDefault(t *testing.T) {
	o, err := parseAgentFlags(t)
	if err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	if o.serving.ProbeAddress != "127.0.0.1:9808" || o.serving.Metrics.BindAddress != ":9809" || !o.serving.Metrics.Secure {
		t.Fatalf("serving defaults %+v", o.serving)
	}
	if o.apiCheckInterval != 10*time.Second || len(o.deprecated) != 0 {
		t.Fatalf("api check %s, deprecations %v", o.apiCheckInterval, o.deprecated)
	}
}

// Manifests written for the old single address keep working: --listen is
// the probe address, with a warning.
func TestTheDeprecatedListenFlagSetsTheProbeAddress(t *testing.T) {
	o, err := parseAgentFlags(t, "--listen=:9808")
	if err != nil {
		t.Fatal(err)
	}
	if o.serving.ProbeAddress != ":9808" {
		t.Fatalf("probe address %q, want :9808", o.serving.ProbeAddress)
	}
	if len(o.deprecated) != 1 || !strings.Contains(o.deprecated[0], "--health-probe-bind-address") {
		t.Fatalf("deprecation warnings %v", o.deprecated)
	}
}

func TestAgentServingFlagsAreValidated(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"A readiness check more often than every second is refused.": {args: []string{"--api-check-interval=100ms"}, want: "--api-check-interval"},
		"A metrics address without a port is refused.":               {args: []string{"--metrics-bind-address=0.0.0.0"}, want: "--metrics-bind-address"},
		"Probes and metrics on one address are refused.":             {args: []string{"--metrics-bind-address=127.0.0.1:9808"}, want: "cannot share"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := parseAgentFlags(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %s", err, tc.want)
			}
		})
	}
	if _, err := parseAgentFlags(t, "--metrics-bind-address=0", "--health-probe-bind-address=0"); err != nil {
		t.Fatalf("both servers off refused: %v", err)
	}
}
