package notice

import (
	"context"
	"math/rand/v2"
	"time"

	"k8s.io/utils/clock"
)

// Jittered returns a wait drawn from [0.9, 1.0] of interval: polls of many
// agents never fall into lockstep, and the interval stays an upper bound on
// how stale a polled notice can be, which is what the notice-to-mark target
// is measured against.
func Jittered(interval time.Duration) time.Duration {
	spread := interval / 10
	if spread <= 0 {
		return interval
	}
	return interval - rand.N(spread+1)
}

// Poll calls read at once and then again a jittered interval after each
// call began, so a slow answer does not stretch the period. read may ask
// for a longer wait before the next call (a rate limit, a backoff). Poll
// returns when ctx ends.
func Poll(ctx context.Context, clk clock.Clock, interval time.Duration, read func(context.Context) (wait time.Duration)) {
	for ctx.Err() == nil {
		began := clk.Now()
		wait := max(read(ctx), Jittered(interval))
		t := clk.NewTimer(max(wait-clk.Since(began), 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// Tracker stamps the notices of one polled channel with when this process
// first saw each (by id) and whether it was there at the first read. The
// time of a notice that cannot be rescheduled stays as first read so (a
// Spot interruption's time, a started event's start).
type Tracker struct {
	seen      map[string]time.Time
	first     map[string]bool
	notBefore map[string]time.Time
	reads     int
}

// Stamp sets FirstSeen and AtFirstRead on notices read at at, and forgets
// the ids that are gone: a notice that comes back is a new notice.
func (t *Tracker) Stamp(at time.Time, notices []Notice) []Notice {
	if t.seen == nil {
		t.seen, t.first, t.notBefore = map[string]time.Time{}, map[string]bool{}, map[string]time.Time{}
	}
	t.reads++
	out := make([]Notice, 0, len(notices))
	present := map[string]bool{}
	for _, n := range notices {
		present[n.ID] = true
		if _, ok := t.seen[n.ID]; !ok {
			t.seen[n.ID], t.first[n.ID] = at, t.reads == 1
		}
		n.FirstSeen, n.AtFirstRead = t.seen[n.ID], t.first[n.ID]
		if !n.Reschedulable {
			if pinned, ok := t.notBefore[n.ID]; ok {
				n.NotBefore = pinned
			} else {
				t.notBefore[n.ID] = n.NotBefore
			}
		}
		out = append(out, n)
	}
	for id := range t.seen {
		if !present[id] {
			delete(t.seen, id)
			delete(t.first, id)
			delete(t.notBefore, id)
		}
	}
	return out
}
