package main

import "testing"

func TestCertsFlagChoosesTheWebhookCertificatesAndTheScenario(t *testing.T) {
	cases := []struct {
		name            string
		args            []string
		certs, scenario string
		wantErr         bool
	}{
		{name: "the default demo is unchanged", args: nil, certs: "self-managed", scenario: "all"},
		{name: "cert-manager plays the Spot preemption", args: []string{"--certs", "cert-manager"}, certs: "cert-manager", scenario: "spot-preemption"},
		{name: "an explicit scenario wins", args: []string{"--certs", "cert-manager", "--scenario", "all"}, certs: "cert-manager", scenario: "all"},
		{name: "an unknown source is refused", args: []string{"--certs", "vault"}, wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, err := parseFlags(c.args)
			if c.wantErr {
				if err == nil {
					t.Fatalf("parseFlags(%v) accepted it", c.args)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%v): %v", c.args, err)
			}
			if o.certs != c.certs || o.scenario != c.scenario {
				t.Fatalf("parseFlags(%v): certs %q scenario %q, want %q %q", c.args, o.certs, o.scenario, c.certs, c.scenario)
			}
		})
	}
}

func TestNotifyFlagRunsTheNotifierBesideTheLocalProcessesOnly(t *testing.T) {
	if o, err := parseFlags([]string{"--notify"}); err != nil || !o.notify || o.scenario != "all" {
		t.Fatalf("--notify: %+v, %v", o, err)
	}
	if _, err := parseFlags([]string{"--notify", "--real-node"}); err == nil {
		t.Fatal("--notify with --real-node accepted")
	}
}
