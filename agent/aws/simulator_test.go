package aws_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/aws"
	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/ec2fake"
)

// simulate runs the source against AWS's own simulator, IMDSv2 required.
func simulate(t *testing.T, args ...string) (notice.Reading, *ec2fake.Simulator) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs bin/ec2-metadata-mock (-short)")
	}
	sim, err := ec2fake.StartSimulator(t.TempDir(), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Stop)
	m, err := notice.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cfg := aws.DefaultConfig()
	cfg.Endpoint, cfg.PollInterval = sim.Endpoint(), interval
	src := aws.New(clock.RealClock{}, cfg, m)
	ctx, cancel := context.WithTimeout(context.Background(), 3*interval+2*cfg.ReadTimeout)
	defer cancel()
	out := make(chan notice.Reading, 16)
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx, out) }()
	defer func() { cancel(); <-done }()
	for {
		select {
		case r := <-out:
			if r.Complete() {
				return r, sim
			}
		case <-ctx.Done():
			t.Fatalf("no complete reading from the simulator (log %s)", sim.LogPath())
		}
	}
}

// The SDK client, as the agent configures it, reads AWS's own simulator's
// Spot interruption (and the rebalance recommendation it serves beside it).
func TestAWSsSimulatorSpotInterruptionIsRead(t *testing.T) {
	r, sim := simulate(t, "spot", "--action", "stop")
	n, ok := r.Find(aws.PathInstanceAction)
	if !ok || n.Reason != nodemark.ReasonPreempted || n.Impact != notice.ImpactRestart {
		t.Fatalf("got %+v (log %s), want a Spot stop", r, sim.LogPath())
	}
	if left := time.Until(n.NotBefore); left < 100*time.Second || left > 2*time.Minute {
		t.Errorf("interruption %s away; the simulator gives two minutes", left)
	}
	if rb, ok := r.Find(aws.PathRebalance); !ok || rb.Impact != notice.ImpactAdvisory || rb.Issued.IsZero() {
		t.Errorf("rebalance recommendation: %+v", rb)
	}
}

// Its scheduled event, in IMDS's own time format, is a notice by EventId.
func TestAWSsSimulatorScheduledEventIsRead(t *testing.T) {
	start := time.Now().Add(3 * time.Hour).UTC().Truncate(time.Second)
	r, sim := simulate(t, "events", "--code", "instance-retirement", "--state", "active",
		"--not-before", start.Format(time.RFC3339), "--not-after", start.Add(2*time.Hour).Format(time.RFC3339))
	if len(r.Notices) != 1 {
		t.Fatalf("got %+v (log %s), want one scheduled event", r, sim.LogPath())
	}
	n := r.Notices[0]
	if n.ID == "" || n.Reason != nodemark.ReasonUpcomingMaintenance || n.Impact != notice.ImpactTerminate ||
		!n.NotBefore.Equal(start) || !n.WindowEnd.Equal(start.Add(2*time.Hour)) {
		t.Fatalf("event %+v, want instance-retirement not before %s", n, start)
	}
}
