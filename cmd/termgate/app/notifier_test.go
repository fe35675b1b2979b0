package app

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func parseNotifierFlags(t *testing.T, args ...string) (*NotifierOptions, error) {
	t.Helper()
	o := NewNotifierOptions()
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
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

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNotifierDefaultsWithTheShippedConfigAreValid(t *testing.T) {
	o, err := parseNotifierFlags(t, "--config="+writeConfig(t, "sinks:\n- name: events\n  format: cloudevents\n"))
	if err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	cfg := o.Config("replica-1")
	if err := cfg.Validate(); err != nil {
		t.Fatalf("default config refused: %v", err)
	}
	if cfg.Election.LeaseName != "termgate-notifier" || cfg.RecordName != "termgate-notifier-record" || cfg.SinksSecret != "termgate-notifier-sinks" ||
		cfg.Source.Window != 2*time.Hour || cfg.Election.Identity != "replica-1" || cfg.Source.AgentComponent != "termgate-agent" {
		t.Errorf("unexpected defaults %+v", cfg)
	}
}

func TestNotifierFlagsFillTheConfig(t *testing.T) {
	o, err := parseNotifierFlags(t, "--config="+writeConfig(t, "sinks: [{name: a}]"), "--cluster-name=prod-eu", "--history-window=3h",
		"--leader-election-lease-duration=30s", "--namespace=platform", "--sinks-secret=mine", "--record-configmap=rec")
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.Config("x")
	if cfg.Source.Cluster != "prod-eu" || cfg.Source.Window != 3*time.Hour || cfg.Election.LeaseDuration != 30*time.Second ||
		cfg.Namespace != "platform" || cfg.SinksSecret != "mine" || cfg.RecordName != "rec" {
		t.Errorf("flags not in the config: %+v", cfg)
	}
}

func TestNotifierRefusesBadSettingsAtStart(t *testing.T) {
	tests := map[string]struct {
		args   []string
		config string
		want   string
	}{
		"A missing configuration file is refused.":          {args: []string{"--config=/nonexistent/config.yaml"}, want: "--config"},
		"A configuration with an unknown field is refused.": {config: "sinks: [{name: a, retries: 3}]", want: `unknown field "retries"`},
		"A template reading the environment is refused.":    {config: `sinks: [{name: a, format: template, template: '{{ env "HOME" }}'}]`, want: "template refused"},
		"A history window of seconds is refused.":           {args: []string{"--history-window=5s"}, config: "sinks: [{name: a}]", want: "history window"},
		"A lease renew deadline past its duration is refused.": {
			args: []string{"--leader-election-renew-deadline=20s"}, config: "sinks: [{name: a}]", want: "leader election",
		},
		"An empty cluster name is refused.":   {args: []string{"--cluster-name="}, config: "sinks: [{name: a}]", want: "cluster name"},
		"A client without budget is refused.": {args: []string{"--kube-api-qps=0"}, config: "sinks: [{name: a}]", want: "QPS"},
		"A Lease without budget is refused.":  {args: []string{"--leader-election-qps=0"}, config: "sinks: [{name: a}]", want: "leader election: client QPS"},
		"No configuration file is refused.":   {args: []string{"--config="}, want: "--config is required"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			args := tc.args
			if tc.config != "" {
				args = append(args, "--config="+writeConfig(t, tc.config))
			}
			// runNotifier validates everything before it builds a client:
			// no API server is needed to be refused.
			err := runNotifier(context.Background(), append(args, "--kubeconfig=/nonexistent"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestNotifierHelpListsItsFlags(t *testing.T) {
	o := NewNotifierOptions()
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	var b strings.Builder
	fs.SetOutput(&b)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--help"}); err != flag.ErrHelp {
		t.Fatalf("--help: %v", err)
	}
	for _, f := range []string{"-config", "-sinks-secret", "-cluster-name", "-history-window", "-leader-election-lease", "-metrics-bind-address"} {
		if !strings.Contains(b.String(), f) {
			t.Errorf("--help lacks %s", f)
		}
	}
}
