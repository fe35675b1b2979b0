package scenario

import (
	"sort"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Kind says what happened at a point of the timeline.
type Kind string

// Kinds of timeline events. They are stable: report.json carries them.
const (
	KindNotice      Kind = "notice"       // the metadata server announced the termination
	KindMarked      Kind = "marked"       // taint and mark seen on the node
	KindWave        Kind = "wave"         // the agent started a drain step
	KindEscalated   Kind = "escalated"    // the agent deleted pods at a cut-off
	KindEvicted     Kind = "evicted"      // a pod on the node began terminating
	KindGone        Kind = "gone"         // a pod left the node
	KindBlocked     Kind = "blocked"      // a PodDisruptionBudget refused an eviction
	KindBindRefused Kind = "bind-refused" // the webhook refused a bind or a pinned pod
	KindAdmitted    Kind = "admitted"     // a pod landed on the marked node (a failure)
	KindReplacement Kind = "replacement"  // a replacement became Ready on another node
	KindPlaced      Kind = "placed"       // a new pod became Ready on a healthy node
	KindDrained     Kind = "drained"      // every pod the policy evicts has left
	KindCancelled   Kind = "cancelled"    // the metadata server withdrew the notice
	KindRestored    Kind = "restored"     // taint, mark, label and condition gone
	KindDeadline    Kind = "deadline"     // the deadline passed with pods left
)

// Event is one point of a timeline.
type Event struct {
	// At is the time since the notice.
	At      time.Duration
	Kind    Kind
	Subject string // a pod (namespace/name) or a node
	Detail  string
}

// Timeline records events with their time since the notice. Events seen
// before the notice are dropped: the scenario has not begun.
type Timeline struct {
	clock clock.PassiveClock
	sink  func(Event)

	mu      sync.Mutex
	notice  time.Time
	events  []Event
	changed chan struct{}
}

// NewTimeline returns a timeline that calls sink (if not nil) for every
// event as it is recorded.
func NewTimeline(clk clock.PassiveClock, sink func(Event)) *Timeline {
	return &Timeline{clock: clk, sink: sink, changed: make(chan struct{})}
}

// Start sets the notice: time zero. It records the notice event.
func (t *Timeline) Start(detail string) time.Time {
	t.mu.Lock()
	t.notice = t.clock.Now()
	t.mu.Unlock()
	t.Add(KindNotice, "", detail)
	return t.notice
}

// Notice returns time zero, or the zero time before Start.
func (t *Timeline) Notice() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.notice
}

// Since returns the time since the notice, or 0 before Start.
func (t *Timeline) Since() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.notice.IsZero() {
		return 0
	}
	return t.clock.Since(t.notice)
}

// Add records an event now.
func (t *Timeline) Add(kind Kind, subject, detail string) {
	t.AddAt(time.Time{}, kind, subject, detail)
}

// AddAt records an event that happened at a known time (zero means now):
// what a component reports about itself is more exact than when its report
// arrived.
func (t *Timeline) AddAt(at time.Time, kind Kind, subject, detail string) {
	t.mu.Lock()
	if t.notice.IsZero() {
		t.mu.Unlock()
		return
	}
	if at.IsZero() {
		at = t.clock.Now()
	}
	e := Event{At: at.Sub(t.notice), Kind: kind, Subject: subject, Detail: detail}
	t.events = append(t.events, e)
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
	if t.sink != nil {
		t.sink(e)
	}
}

// Events returns the events in time order.
func (t *Timeline) Events() []Event {
	t.mu.Lock()
	out := append([]Event(nil), t.events...)
	t.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out
}

// First returns the first event of kind, if any.
func (t *Timeline) First(kind Kind) (Event, bool) {
	for _, e := range t.Events() {
		if e.Kind == kind {
			return e, true
		}
	}
	return Event{}, false
}

// Count returns how many events of kind were recorded.
func (t *Timeline) Count(kind Kind) int {
	n := 0
	for _, e := range t.Events() {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// Changed returns a channel closed at the next event.
func (t *Timeline) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}
