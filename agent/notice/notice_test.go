package notice

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/nodemark"
)

// The interval is an upper bound (what notice-to-mark is measured
// against), and waits spread below it.
func TestJitteredWaitsStayWithinTheTopTenthOfTheInterval(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := Jittered(time.Second)
		if d < 900*time.Millisecond || d > time.Second {
			t.Fatalf("wait %s outside [900ms, 1s]", d)
		}
		seen[d.Truncate(10*time.Millisecond)] = true
	}
	if len(seen) < 5 {
		t.Fatalf("waits barely vary: %v", seen)
	}
}

func TestTrackerKeepsFirstSightAndFixedTimes(t *testing.T) {
	var tr Tracker
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	spot := Notice{ID: "spot", NotBefore: t0.Add(2 * time.Minute)}
	event := Notice{ID: "ev", NotBefore: t0.Add(time.Hour), Reschedulable: true}
	got := tr.Stamp(t0, []Notice{spot})
	if !got[0].AtFirstRead || !got[0].FirstSeen.Equal(t0) {
		t.Fatalf("first read: %+v", got[0])
	}
	spot.NotBefore = t0.Add(3 * time.Minute) // a simulator that moves it
	event.NotBefore = t0.Add(2 * time.Hour)
	got = tr.Stamp(t0.Add(time.Second), []Notice{spot, event})
	if !got[0].NotBefore.Equal(t0.Add(2*time.Minute)) || !got[0].FirstSeen.Equal(t0) {
		t.Errorf("fixed time moved or first sight lost: %+v", got[0])
	}
	if got[1].AtFirstRead || !got[1].FirstSeen.Equal(t0.Add(time.Second)) || !got[1].NotBefore.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("rescheduled event: %+v", got[1])
	}
	got = tr.Stamp(t0.Add(2*time.Second), nil)
	got = tr.Stamp(t0.Add(3*time.Second), []Notice{spot})
	if !got[0].FirstSeen.Equal(t0.Add(3*time.Second)) || !got[0].NotBefore.Equal(spot.NotBefore) {
		t.Errorf("a notice that came back is a new notice: %+v", got[0])
	}
}

// A channel's garbage neither raises nor withdraws its notices, and leaves
// a never-read channel unread; another channel's answers count at once.
func TestBoardKeepsEachChannelApart(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	b := NewBoard("aws", []string{"a", "b"}, func(nodemark.Mark) string { return "a" }, clk)
	if b.Ready() == nil {
		t.Fatal("ready before any answer")
	}
	b.Set("a", nil, []Unreadable{{Channel: "a", Err: "garbage"}}, false)
	if r := b.Reading(); len(r.Unread) != 2 || len(r.Unreadable) != 1 || b.Ready() == nil {
		t.Fatalf("garbage first: %+v, ready %v", r, b.Ready())
	}
	b.Set("b", []Notice{{ID: "n1"}}, nil, true)
	b.Set("a", []Notice{{ID: "n2"}}, nil, true)
	b.Set("a", nil, []Unreadable{{Channel: "a", Err: "garbage"}}, false)
	r := b.Reading()
	if len(r.Notices) != 2 || len(r.Unread) != 0 || b.Ready() != nil {
		t.Fatalf("after answers and garbage: %+v", r)
	}
	b.Set("a", nil, nil, true)
	if r := b.Reading(); len(r.Notices) != 1 || r.Notices[0].ID != "n1" || len(r.Unreadable) != 0 {
		t.Fatalf("after a's withdrawal: %+v", r)
	}
	out := make(chan Reading, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Publish(ctx, out) }()
	b.Set("a", nil, nil, true)
	first := <-out
	b.Set("a", nil, nil, true) // the same again: nothing sent
	b.Set("a", []Notice{{ID: "n3"}}, nil, true)
	if second := <-out; len(second.Notices) != 2 || len(first.Notices) != 1 {
		t.Fatalf("published %+v then %+v", first, second)
	}
	cancel()
	<-done
}

func TestAliveCountsANeverAnsweredChannelFromTheStart(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	b := NewBoard("azure", []string{"scheduledevents"}, nil, clk)
	clk.Step(time.Minute)
	if err := b.Alive(2 * time.Minute); err != nil {
		t.Fatalf("a first answer a minute late: %v", err)
	}
	clk.Step(2 * time.Minute)
	if b.Alive(2*time.Minute) == nil {
		t.Fatal("three minutes without an answer is alive")
	}
	b.Touch("scheduledevents")
	if err := b.Alive(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
}
