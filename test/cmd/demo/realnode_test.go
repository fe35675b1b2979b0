package main

import "testing"

func TestRealNodeFlagPlaysTheSpotPreemptionOnly(t *testing.T) {
	o, err := parseFlags([]string{"--real-node"})
	if err != nil {
		t.Fatalf("parseFlags(--real-node): %v", err)
	}
	if !o.realNode || o.scenario != "spot-preemption" || o.certs != "self-managed" {
		t.Fatalf("parseFlags(--real-node): real node %v, scenario %q, certs %q; want true, spot-preemption, self-managed", o.realNode, o.scenario, o.certs)
	}
	if o, _ := parseFlags(nil); o.realNode {
		t.Fatal("the default demo runs on the real node")
	}
	for _, args := range [][]string{
		{"--real-node", "--scenario", "gpu-maintenance"},
		{"--real-node", "--certs", "cert-manager"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%v) accepted it", args)
		}
	}
}
