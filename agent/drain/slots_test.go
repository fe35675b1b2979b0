package drain

import (
	"context"
	"testing"
	"time"
)

// holder is one acquire in flight, for the slot tests.
type holder struct {
	ns  string
	got chan error
}

func startAcquire(ctx context.Context, s *fairSlots, ns string) holder {
	h := holder{ns: ns, got: make(chan error, 1)}
	go func() {
		_, err := s.acquire(ctx, ns)
		h.got <- err
	}()
	return h
}

// waitQueued waits until n acquires of ns are waiting.
func waitQueued(t *testing.T, s *fairSlots, ns string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		queued := len(s.waiting[ns])
		s.mu.Unlock()
		if queued == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acquires of %s waiting, want %d", queued, ns, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// granted returns the holders whose acquire returned, without waiting.
func granted(t *testing.T, hs []holder) []holder {
	t.Helper()
	var out []holder
	for _, h := range hs {
		select {
		case err := <-h.got:
			if err != nil {
				t.Fatalf("acquire of %s: %v", h.ns, err)
			}
			out = append(out, h)
		default:
		}
	}
	return out
}

func TestANamespaceAloneMayUseEverySlot(t *testing.T) {
	s := newFairSlots(8, nil)
	for i := range 8 {
		if _, err := s.acquire(context.Background(), "a"); err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
	}
	if s.inUse != 8 || s.held["a"] != 8 {
		t.Fatalf("in use %d, held by a %d; want 8 and 8", s.inUse, s.held["a"])
	}
}

// TestAWaitingNamespaceIsServedBeforeOneOverItsShare: namespace a holds
// every slot and queues more work; b then queues work. Every slot a frees
// goes to b until b holds its quarter, and only then do the two take
// turns.
func TestAWaitingNamespaceIsServedBeforeOneOverItsShare(t *testing.T) {
	const size = 32
	s := newFairSlots(size, nil)
	ctx := context.Background()
	for range size {
		if _, err := s.acquire(ctx, "a"); err != nil {
			t.Fatal(err)
		}
	}
	var more []holder
	for range 40 {
		more = append(more, startAcquire(ctx, s, "a"))
	}
	waitQueued(t, s, "a", 40)
	var bs []holder
	for range 20 {
		bs = append(bs, startAcquire(ctx, s, "b"))
	}
	waitQueued(t, s, "b", 20)

	share := size / 4
	for range share {
		s.release("a")
	}
	if a, b := s.heldBy("a"), s.heldBy("b"); a != size-share || b != share {
		t.Fatalf("after %d releases a holds %d and b %d slots, want %d and %d: a was served while b waited under its share", share, a, b, size-share, share)
	}
	// Now b holds its share: freed slots alternate between the two.
	for range 6 {
		s.release("a")
	}
	if a, b := s.heldBy("a"), s.heldBy("b"); a != size-share-3 || b != share+3 {
		t.Fatalf("after 6 more releases a holds %d and b %d slots, want %d and %d: turns not taken", a, b, size-share-3, share+3)
	}
}

func (s *fairSlots) heldBy(ns string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[ns]
}

func TestAnAbandonedWaitFreesItsPlace(t *testing.T) {
	s := newFairSlots(1, nil)
	if _, err := s.acquire(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gone := startAcquire(ctx, s, "b")
	waitQueued(t, s, "b", 1)
	cancel()
	if err := <-gone.got; err == nil {
		t.Fatal("a cancelled acquire succeeded")
	}
	next := startAcquire(context.Background(), s, "c")
	waitQueued(t, s, "c", 1)
	s.release("a")
	if err := <-next.got; err != nil {
		t.Fatal(err)
	}
	if s.inUse != 1 || s.held["c"] != 1 || len(s.ring) != 0 {
		t.Fatalf("in use %d, held %v, ring %v: want one slot held by c and nobody waiting", s.inUse, s.held, s.ring)
	}
}

// TestTheWindowFollowsThrottling: a zone reclaim's agents all send at
// once, and what API priority and fairness cannot queue it answers 429.
// Each agent halves what it sends on throttling, once for the calls sent
// under one window, never below an eighth of its slots, and grows back by
// one for each window's worth of accepted calls.
func TestTheWindowFollowsThrottling(t *testing.T) {
	// The window as the agent's gauge is told it.
	var window int
	s := newFairSlots(32, func(n int) { window = n })
	if window != 32 {
		t.Fatalf("window %d at the start, want all 32 slots", window)
	}
	var epochs []uint64
	for range 20 {
		e, err := s.acquire(context.Background(), "a")
		if err != nil {
			t.Fatal(err)
		}
		epochs = append(epochs, e)
	}
	for _, e := range epochs {
		s.congested(e) // the whole first burst throttled
	}
	if w := window; w != 10 {
		t.Fatalf("window %d after the first burst was throttled with 20 in flight, want 10 (cut once, from what was in use)", w)
	}
	// Over the window: the next acquire waits until enough are released.
	late := startAcquire(context.Background(), s, "a")
	waitQueued(t, s, "a", 1)
	for range 10 {
		s.release("a")
	}
	if got := granted(t, []holder{late}); len(got) != 0 {
		t.Fatal("granted with 10 in use and a window of 10")
	}
	s.release("a")
	if err := <-late.got; err != nil {
		t.Fatal(err)
	}
	// Calls sent under the cut window, throttled again: cut again, down to
	// the floor and no further.
	for range 3 {
		s.mu.Lock()
		epoch := s.epoch
		s.mu.Unlock()
		s.congested(epoch)
	}
	if w := window; w != 4 {
		t.Fatalf("window %d after three more throttled epochs, want the floor 4 (an eighth of 32)", w)
	}
	for range 4 {
		s.acked()
	}
	if w := window; w != 5 {
		t.Fatalf("window %d after 4 accepted calls at 4, want 5", w)
	}
	for range 5 + 6 {
		s.acked()
	}
	if w := window; w != 7 {
		t.Fatalf("window %d after 5 more at 5 and 6 at 6, want 7", w)
	}
}
