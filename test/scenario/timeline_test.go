package scenario

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestTimelineMeasuresFromTheNoticeAndDropsEarlierEvents(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var live []Event
	tl := NewTimeline(clk, func(e Event) { live = append(live, e) })
	tl.Add(KindEvicted, "ns/early", "")
	tl.Start("preempted")
	clk.SetTime(clk.Now().Add(12 * time.Millisecond))
	tl.Add(KindMarked, "spot-0", "")
	clk.SetTime(clk.Now().Add(30 * time.Millisecond))
	tl.Add(KindEvicted, "ns/web-a", "wave regular")

	got := tl.Events()
	want := []struct {
		at   time.Duration
		kind Kind
	}{{0, KindNotice}, {12 * time.Millisecond, KindMarked}, {42 * time.Millisecond, KindEvicted}}
	if len(got) != len(want) || len(live) != len(want) {
		t.Fatalf("recorded %d events, sent %d live, want %d: %+v", len(got), len(live), len(want), got)
	}
	for i, w := range want {
		if got[i].At != w.at || got[i].Kind != w.kind {
			t.Errorf("event %d is %s at %s, want %s at %s", i, got[i].Kind, got[i].At, w.kind, w.at)
		}
	}
	if e, ok := tl.First(KindEvicted); !ok || e.Subject != "ns/web-a" {
		t.Errorf("first eviction %+v, want ns/web-a (the one before the notice is dropped)", e)
	}
}

func TestChangedIsClosedByTheNextEvent(t *testing.T) {
	tl := NewTimeline(clocktesting.NewFakePassiveClock(time.Now()), nil)
	tl.Start("notice")
	ch := tl.Changed()
	select {
	case <-ch:
		t.Fatal("closed before any new event")
	default:
	}
	tl.Add(KindMarked, "n", "")
	select {
	case <-ch:
	default:
		t.Fatal("still open after an event")
	}
}
