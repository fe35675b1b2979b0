package app

import (
	"strings"
	"testing"
	"time"

	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/nodemark"
)

func TestLBFlagsFillTheDrainAndTheTracker(t *testing.T) {
	o, err := parseAgentFlags(t, "--lb-wait-cap=Preempted:25%:10s", "--lb-wait-cap=HostMaintenance:0.5:2m",
		"--lb-health-check-margin=3s", "--lb-ignore-selector=lb.example/ignore", "--lb-autoscaler-taint")
	if err != nil {
		t.Fatal(err)
	}
	caps := o.drain.LBWaitCaps
	if caps[nodemark.ReasonPreempted] != (drain.WaitCap{Fraction: 0.25, Max: 10 * time.Second}) ||
		caps[nodemark.ReasonHostMaintenance] != (drain.WaitCap{Fraction: 0.5, Max: 2 * time.Minute}) ||
		caps[nodemark.ReasonUpcomingMaintenance] != drain.DefaultWaitCaps()[nodemark.ReasonUpcomingMaintenance] {
		t.Errorf("caps %+v", caps)
	}
	if o.drain.LBMargin != 3*time.Second || !o.agent.LBMarks.AutoscalerTaint || o.agent.LBMarks.Cordon || o.lb.selectors.Ignore == nil {
		t.Errorf("margin %s, marks %+v, ignore %v", o.drain.LBMargin, o.agent.LBMarks, o.lb.selectors.Ignore)
	}
	if lbs := o.lb.tracker(nil, nil, "n"); lbs == nil {
		t.Error("no tracker with --lb-wait on")
	}
	if o, _ := parseAgentFlags(t, "--lb-wait=false"); o.lb.tracker(nil, nil, "n") != nil {
		t.Error("a tracker with --lb-wait=false")
	}
}

func TestLBFlagsRefuseBadValues(t *testing.T) {
	for _, args := range [][]string{
		{"--lb-wait-cap=Preempted:40%"},
		{"--lb-wait-cap=Preempted:140%:15s"},
		{"--lb-wait-cap=Sometimes:40%:15s"},
		{"--lb-wait-cap=Preempted:40%:soon"},
		{"--lb-wait-selector=a in ("},
		{"--lb-service-controller-syncs=0"},
		{"--lb-sync-window=0s"},
		{"--lb-health-check-margin=-1s"},
	} {
		if _, err := parseAgentFlags(t, args...); err == nil {
			t.Errorf("%s accepted", strings.Join(args, " "))
		}
	}
}
