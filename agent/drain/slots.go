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
type fairSlots struct {
	size  int
	share int

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
}

func newFairSlots(size int) *fairSlots {
	return &fairSlots{
		size:    size,
		share:   max(1, size/4),
		held:    map[string]int{},
		waiting: map[string][]*slotWaiter{},
	}
}

// acquire blocks until ns is given a slot or ctx ends; the caller releases
// a slot it got with release(ns).
func (s *fairSlots) acquire(ctx context.Context, ns string) error {
	s.mu.Lock()
	if s.inUse < s.size && len(s.ring) == 0 {
		s.takeLocked(ns)
		s.mu.Unlock()
		return nil
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
		return nil
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
	return ctx.Err()
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
	for s.inUse < s.size && len(s.ring) > 0 {
		i := s.pickLocked()
		ns := s.ring[i]
		w := s.waiting[ns][0]
		s.waiting[ns] = s.waiting[ns][1:]
		s.takeLocked(ns)
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
		if i := (s.next + k) % n; s.held[s.ring[i]] < s.share {
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
