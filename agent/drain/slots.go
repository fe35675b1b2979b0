package drain

import (
	"context"
	"sync"
)

// fairSlots hands out the eviction queue's concurrency slots fairly between
// namespaces. A node is shared by tenants, and one tenant's slow evictions
// (a PodDisruptionBudget whose status keeps conflicting makes the API
// server hold each eviction for seconds; pods with huge specs) must not
// take every slot while another tenant's pods wait for the deadline's
// forced deletes.
//
// Waiting namespaces are served in turn. A namespace holding share slots or
// more gets a free slot only when every other waiting namespace holds at
// least share too, so a namespace that waits is never held up by one that
// has its quarter already; when nobody else waits, one namespace may use
// every slot.
//
// The slots in use are also bounded by a window that follows the API
// server's load (see congested and acked): all agents of a zone reclaim
// send at once, and beyond what API priority and fairness queues the
// server answers 429. Every throttled call then waits out its Retry-After,
// while the server may already have room again, and is sent once more: in
// `make bench-scale` (500 agents, 20 pods each) half of the 31,731
// eviction calls were throttled. An agent cannot count the others' calls,
// but it sees its own answers: the window halves on throttling and grows
// by one for each window's worth of accepted calls, so that together the
// agents send about what the server takes.
type fairSlots struct {
	size int
	// limit is the window, between minLimit and size; epoch counts its
	// cuts, so that calls sent before a cut and answered after it do not
	// cut it again; acks counts the accepted calls since the last change.
	limit, minLimit int
	epoch           uint64
	acks            int
	// resized is told each new window (the agent's gauge of it).
	resized func(int)

	mu      sync.Mutex
	inUse   int
	held    map[string]int
	waiting map[string][]*slotWaiter
	// ring lists the namespaces with waiters in the order they are
	// served; next is the position the next grant starts looking from.
	ring []string
	next int
}

type slotWaiter struct {
	granted chan struct{}
	epoch   uint64
}

func newFairSlots(size int, resized func(int)) *fairSlots {
	if resized == nil {
		resized = func(int) {}
	}
	resized(size)
	return &fairSlots{
		resized: resized,
		size:    size,
		limit:   size,
		// An eighth of the slots stay open however throttled the server:
		// near the deadline the drain's deletes must still go out.
		minLimit: max(1, size/8),
		held:     map[string]int{},
		waiting:  map[string][]*slotWaiter{},
	}
}

// shareLocked is what one namespace may hold while others wait: a quarter
// of the window.
func (s *fairSlots) shareLocked() int { return max(1, s.limit/4) }

// acquire blocks until ns is given a slot or ctx ends; the caller releases
// a slot it got with release(ns). It returns the window's epoch at the
// grant, for congested.
func (s *fairSlots) acquire(ctx context.Context, ns string) (uint64, error) {
	s.mu.Lock()
	if s.inUse < s.limit && len(s.ring) == 0 {
		s.takeLocked(ns)
		epoch := s.epoch
		s.mu.Unlock()
		return epoch, nil
	}
	w := &slotWaiter{granted: make(chan struct{})}
	if len(s.waiting[ns]) == 0 {
		s.ring = append(s.ring, ns)
	}
	s.waiting[ns] = append(s.waiting[ns], w)
	s.dispatchLocked()
	s.mu.Unlock()

	select {
	case <-w.granted:
		return w.epoch, nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-w.granted:
		// Granted while giving up: hand the slot on.
		s.releaseLocked(ns)
	default:
		s.dropWaiterLocked(ns, w)
	}
	return 0, ctx.Err()
}

// congested tells the window that a call granted at epoch was throttled
// or failed on the server's side: the window halves, from what was in use,
// once per epoch.
func (s *fairSlots) congested(epoch uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch != s.epoch {
		return // sent under a window already cut for the same load
	}
	s.limit = max(s.minLimit, min(s.limit, s.inUse)/2)
	s.epoch++
	s.acks = 0
	s.resized(s.limit)
}

// acked tells the window that a call was accepted: after a window's worth,
// it grows by one.
func (s *fairSlots) acked() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limit >= s.size {
		return
	}
	if s.acks++; s.acks >= s.limit {
		s.limit++
		s.acks = 0
		s.resized(s.limit)
		s.dispatchLocked()
	}
}

// release returns a slot ns held.
func (s *fairSlots) release(ns string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(ns)
}

func (s *fairSlots) releaseLocked(ns string) {
	s.inUse--
	if s.held[ns]--; s.held[ns] <= 0 {
		delete(s.held, ns)
	}
	s.dispatchLocked()
}

func (s *fairSlots) takeLocked(ns string) {
	s.inUse++
	s.held[ns]++
}

// dispatchLocked grants free slots to waiters: first, in turn, to
// namespaces under their share; then, in turn, to any waiting namespace.
func (s *fairSlots) dispatchLocked() {
	for s.inUse < s.limit && len(s.ring) > 0 {
		i := s.pickLocked()
		ns := s.ring[i]
		w := s.waiting[ns][0]
		s.waiting[ns] = s.waiting[ns][1:]
		s.takeLocked(ns)
		w.epoch = s.epoch
		close(w.granted)
		if len(s.waiting[ns]) == 0 {
			delete(s.waiting, ns)
			s.ring = append(s.ring[:i], s.ring[i+1:]...)
			s.next = i
		} else {
			s.next = i + 1
		}
		if s.next >= len(s.ring) {
			s.next = 0
		}
	}
}

// pickLocked returns the ring position served next.
func (s *fairSlots) pickLocked() int {
	n := len(s.ring)
	for k := range n {
		if i := (s.next + k) % n; s.held[s.ring[i]] < s.shareLocked() {
			return i
		}
	}
	return s.next % n
}

func (s *fairSlots) dropWaiterLocked(ns string, w *slotWaiter) {
	q := s.waiting[ns]
	for i, x := range q {
		if x == w {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	if len(q) > 0 {
		s.waiting[ns] = q
		return
	}
	delete(s.waiting, ns)
	for i, x := range s.ring {
		if x == ns {
			s.ring = append(s.ring[:i], s.ring[i+1:]...)
			if s.next > i {
				s.next--
			}
			break
		}
	}
	if s.next >= len(s.ring) {
		s.next = 0
	}
}
