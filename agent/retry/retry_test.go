package retry

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestDelayDoublesUpToTheLimitWithJitterInTheUpperHalf(t *testing.T) {
	base, limit := 100*time.Millisecond, 5*time.Second
	for attempt, full := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second} {
		for range 50 {
			if d := Delay(base, limit, attempt); d < full/2 || d > full {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", attempt, d, full/2, full)
			}
		}
	}
	if d := Delay(base, limit, 1<<20); d > limit {
		t.Fatalf("a huge attempt count gave %s, above the limit", d)
	}
}

func TestSleepStopsWhenTheContextEnds(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- Sleep(ctx, clk, time.Hour) }()
	cancel()
	if <-done {
		t.Fatal("Sleep reported a full wait after the context ended")
	}
}

func TestSleepReturnsWhenTheClockPasses(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	done := make(chan bool)
	go func() { done <- Sleep(context.Background(), clk, time.Second) }()
	// The goroutine reaches its timer within milliseconds; a second is a
	// bound that only a broken Sleep exceeds.
	for bound := time.Now().Add(time.Second); !clk.HasWaiters(); time.Sleep(time.Millisecond) {
		if time.Now().After(bound) {
			t.Fatal("Sleep never waited on the clock")
		}
	}
	clk.Step(time.Second)
	if !<-done {
		t.Fatal("Sleep did not report a full wait")
	}
}
