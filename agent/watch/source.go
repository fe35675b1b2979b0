package watch

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
)

// SourceName is GCE's name in marks and metrics.
const SourceName = "gce"

// Source is GCE's metadata server as a notice.Source: the Watcher's three
// keys, each read on its own, as one Reading.
type Source struct {
	w *Watcher

	mu      sync.Mutex
	good    map[Key]Observation // the last readable value of each key
	garbage map[Key]Observation // a value not understood, until a readable one
}

var _ notice.Source = (*Source)(nil)

// NewSource returns the GCE source following w.
func NewSource(w *Watcher) *Source {
	return &Source{w: w, good: map[Key]Observation{}, garbage: map[Key]Observation{}}
}

// Name implements notice.Source.
func (s *Source) Name() string { return SourceName }

// Run implements notice.Source.
func (s *Source) Run(ctx context.Context, out chan<- notice.Reading) {
	obs := make(chan Observation, 8)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.w.Run(ctx, obs) })
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-obs:
			r := s.record(o)
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (s *Source) record(o Observation) notice.Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.Kind == KindUnknown {
		s.garbage[o.Key] = o
	} else {
		s.good[o.Key] = o
		delete(s.garbage, o.Key)
	}
	r := ReadingOf(s.good)
	for _, k := range Keys {
		if g, ok := s.garbage[k]; ok {
			r.Unreadable = append(r.Unreadable, unreadable(g))
		}
	}
	return r
}

// Alive implements notice.Source: every key's hanging GET keeps answering.
func (s *Source) Alive() error { return s.w.Alive() }

// Ready implements notice.Source: a first value was read (each key acts on
// its own as soon as it is read).
func (s *Source) Ready() error {
	if unread := s.w.Unread(); len(unread) == len(Keys) {
		return fmt.Errorf("metadata not read yet: %v", unread)
	}
	return nil
}

// ReadingOf turns the last readable value of each key into a Reading: a key
// missing from obs is unread.
func ReadingOf(obs map[Key]Observation) notice.Reading {
	r := notice.Reading{Source: SourceName, ChannelOf: channelOf}
	for _, k := range Keys {
		o, ok := obs[k]
		if !ok {
			r.Unread = append(r.Unread, string(k))
			continue
		}
		o.Key = k
		if o.At.After(r.At) {
			r.At = o.At
		}
		if o.Unreadable != "" {
			r.Unreadable = append(r.Unreadable, unreadable(o))
		}
		if n, ok := noticeOf(o); ok {
			r.Notices = append(r.Notices, n)
		}
	}
	return r
}

// noticeOf is the notice a key's value announces, if any. The notice's id
// is the key: each key holds one notice at a time.
func noticeOf(o Observation) (notice.Notice, bool) {
	n := notice.Notice{ID: string(o.Key), FirstSeen: o.At, AtFirstRead: o.First, Raw: strings.TrimSpace(o.Raw), Withdrawable: true}
	switch {
	case o.Key == KeyPreempted && o.Kind == KindTerminate:
		// GCE never takes a preemption back: FALSE comes with the next boot.
		n.Reason, n.Impact, n.Withdrawable = nodemark.ReasonPreempted, notice.ImpactTerminate, false
	case o.Key == KeyMaintenanceEvent && o.Kind == KindTerminate:
		n.Reason, n.Impact = nodemark.ReasonHostMaintenance, notice.ImpactTerminate
	case o.Key == KeyMaintenanceEvent && o.Kind == KindMigrate:
		n.Reason, n.Impact = nodemark.ReasonHostMaintenance, notice.ImpactLiveMigrate
	case o.Key == KeyUpcomingMaintenance && o.Kind == KindScheduled && o.Window != nil:
		n.Reason, n.Impact = nodemark.ReasonUpcomingMaintenance, notice.ImpactTerminate
		n.NotBefore, n.WindowEnd, n.Reschedulable = o.Window.Start, o.Window.End, true
	default:
		return notice.Notice{}, false
	}
	return n, true
}

// channelOf is the key a mark's notice comes from: its notice id, or for a
// mark written before ids were recorded, the key of its reason.
func channelOf(m nodemark.Mark) string {
	for _, k := range Keys {
		if m.NoticeID == string(k) {
			return m.NoticeID
		}
	}
	if m.NoticeID != "" {
		return ""
	}
	switch m.Reason {
	case nodemark.ReasonPreempted:
		return string(KeyPreempted)
	case nodemark.ReasonHostMaintenance:
		return string(KeyMaintenanceEvent)
	case nodemark.ReasonUpcomingMaintenance:
		return string(KeyUpcomingMaintenance)
	}
	return ""
}

// unreadable reports a value not understood. An unreadable
// upcoming-maintenance value counts as no window (see Lenient); any other
// leaves its key at its last known value. An unknown maintenance-event
// value that reads like a termination is alarming: GCE may have added a
// terminating event termgate does not know.
func unreadable(o Observation) notice.Unreadable {
	v := strings.TrimSpace(o.Raw)
	u := notice.Unreadable{Channel: string(o.Key), Value: truncate(v), Err: o.Unreadable, AsClear: o.Key == KeyUpcomingMaintenance}
	if o.Key == KeyMaintenanceEvent {
		up := strings.ToUpper(v)
		u.Alarming = strings.Contains(up, "TERMINATE") || strings.Contains(up, "SHUTDOWN") || strings.Contains(up, "STOP")
	}
	return u
}
