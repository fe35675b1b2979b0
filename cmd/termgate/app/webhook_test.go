package app

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func parseWebhookFlags(t *testing.T, args ...string) (*WebhookOptions, error) {
	t.Helper()
	o := NewWebhookOptions()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := o.Complete(); err != nil {
		return o, err
	}
	return o, o.Validate()
}

func TestWebhookDefaultsAreValid(t *testing.T) {
	o, err := parseWebhookFlags(t)
	if err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	if o.CertMode != CertModeSelfManaged || o.TaintEffect != "NoSchedule" || o.ShutdownDelay != 5*time.Second {
		t.Fatalf("unexpected defaults %+v", o)
	}
	if got := o.hosts(); len(got) != 2 || got[0] != "termgate-webhook.termgate.svc" {
		t.Fatalf("default hosts %v", got)
	}
}

func TestWebhookFlagsAreValidated(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"An unknown certificate mode is refused.":              {args: []string{"--cert-mode=vault"}, want: "--cert-mode"},
		"An unknown taint effect is refused.":                  {args: []string{"--taint-effect=Sometimes"}, want: "--taint-effect"},
		"Renewing after the certificate expired is refused.":   {args: []string{"--cert-validity=1h", "--cert-renew-before=2h"}, want: "renew-before"},
		"A lease renew deadline past its duration is refused.": {args: []string{"--leader-election-renew-deadline=20s"}, want: "leader election"},
		"An empty certificate directory is refused.":           {args: []string{"--cert-dir="}, want: "--cert-dir"},
		"A negative shutdown delay is refused.":                {args: []string{"--shutdown-delay=-1s"}, want: "--shutdown-delay"},
		"cert-manager mode needs the Certificate's name.":      {args: []string{"--cert-mode=cert-manager", "--certificate-name="}, want: "--certificate-name"},
		"An unknown log format is refused.":                    {args: []string{"--log-format=xml"}, want: "--log-format"},
		"A confinement client without budget is refused.":      {args: []string{"--confine-kube-api-qps=0"}, want: "QPS"},
		"An empty agent user name is refused.":                 {args: []string{"--agent-username="}, want: "--agent-username"},
		"A zero read timeout is refused.":                      {args: []string{"--read-timeout=0s"}, want: "timeouts"},
		"A body budget below one body is refused.":             {args: []string{"--max-request-bytes-in-flight=1000"}, want: "never be served"},
		"A zero stream cap is refused.":                        {args: []string{"--http2-max-concurrent-streams=0"}, want: "stream"},
		"A malformed expected peer range is refused.":          {args: []string{"--expected-peer-cidrs=172.16.0.0/28,10.0.0.300/8"}, want: "--expected-peer-cidrs"},
		"No bound on a peer's calls being read is refused.":    {args: []string{"--max-reading-calls-per-peer=0"}, want: "limits must be positive"},
		"Probes and metrics on one address are refused.":       {args: []string{"--metrics-bind-address=:8081"}, want: "cannot share"},
		"A malformed node selector is refused.":                {args: []string{"--confirm-node-selectors=cloud.google.com/gke-spot in (true"}, want: "--confirm-node-selectors"},
		"A lease without budget is refused.":                   {args: []string{"--leader-election-burst=0"}, want: "leader election: client QPS"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := parseWebhookFlags(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %s", err, tc.want)
			}
		})
	}
}

// TestWebhookServerLimitFlagsSetTheirOptions: each limit flag fills its own
// field (serveWebhook hands o.Limits to the server as a whole).
func TestWebhookServerLimitFlagsSetTheirOptions(t *testing.T) {
	o, err := parseWebhookFlags(t, "--max-request-body-bytes=1048576", "--max-request-bytes-in-flight=8388608",
		"--max-requests-in-flight=10", "--read-header-timeout=1s", "--http2-max-concurrent-streams=20", "--agent-username=system:serviceaccount:ops:agent")
	if err != nil {
		t.Fatal(err)
	}
	l := o.Limits
	if l.MaxBodyBytes != 1<<20 || l.MaxInFlightBodyBytes != 8<<20 || l.MaxInFlight != 10 || l.ReadHeaderTimeout != time.Second || l.MaxConcurrentStreams != 20 {
		t.Fatalf("limits %+v", l)
	}
	if o.AgentUsername != "system:serviceaccount:ops:agent" {
		t.Fatalf("agent user %q", o.AgentUsername)
	}
}

func TestWebhookExpectedPeersAreParsed(t *testing.T) {
	o, err := parseWebhookFlags(t, "--expected-peer-cidrs=172.16.0.0/28, 10.1.2.3/16")
	if err != nil {
		t.Fatal(err)
	}
	got := o.webhookOptions().ExpectedPeers
	if len(got) != 2 || got[0].String() != "172.16.0.0/28" || got[1].String() != "10.1.0.0/16" {
		t.Fatalf("expected peers %v", got)
	}
	if o.Serving.Metrics.BindAddress != ":8443" || !o.Serving.Metrics.Secure || o.Serving.ProbeAddress != ":8081" {
		t.Fatalf("serving defaults %+v", o.Serving)
	}
}

// TestWebhookSelectorsAreParsedOnceIntoTheGateOptions: the selectors the
// bind gate re-reads nodes for are the ones --confirm-node-selectors names.
func TestWebhookSelectorsAreParsedOnceIntoTheGateOptions(t *testing.T) {
	o, err := parseWebhookFlags(t, "--confirm-node-selectors=pool=spot;cloud.google.com/gke-spot=true")
	if err != nil {
		t.Fatal(err)
	}
	got := o.webhookOptions().ConfirmSelectors
	if len(got) != 2 || got[0].String() != "pool=spot" || got[1].String() != "cloud.google.com/gke-spot=true" {
		t.Fatalf("selectors %v", got)
	}
}

func TestWebhookCertHostsFlagOverridesTheServiceNames(t *testing.T) {
	o, err := parseWebhookFlags(t, "--cert-hosts=127.0.0.1, webhook.local")
	if err != nil {
		t.Fatal(err)
	}
	if got := o.hosts(); len(got) != 2 || got[0] != "127.0.0.1" || got[1] != "webhook.local" {
		t.Fatalf("hosts %v", got)
	}
}

func TestWebhookHelpIsNotAnError(t *testing.T) {
	err := runWebhook(context.Background(), []string{"--help"})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want flag.ErrHelp (Run turns it into success)", err)
	}
}
