package lb

import (
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Reasons the service controller records on a Service
// (k8s.io/cloud-provider/controllers/service).
const (
	ReasonUpdated      = "UpdatedLoadBalancer"     // node sync: hosts updated
	ReasonUnavailable  = "UnAvailableLoadBalancer" // node sync: updated to no hosts at all
	ReasonEnsuring     = "EnsuringLoadBalancer"    // service sync: call starts
	ReasonEnsured      = "EnsuredLoadBalancer"     // service sync: call ended well
	ReasonUpdateFailed = "UpdateLoadBalancerFailed"
	ReasonSyncFailed   = "SyncLoadBalancerFailed"
)

// followed reports whether the drain cares about an event reason.
func followed(reason string) bool {
	switch reason {
	case ReasonUpdated, ReasonUnavailable, ReasonEnsuring, ReasonEnsured, ReasonUpdateFailed, ReasonSyncFailed:
		return true
	}
	return false
}

func nodeSync(reason string) bool { return reason == ReasonUpdated || reason == ReasonUnavailable }

// occurrence is one time the service controller recorded a reason on a
// Service, seen by the agent after the mark.
type occurrence struct {
	service types.UID
	reason  string
	at      time.Time // when the agent saw it
	message string
}

// evidence decides, from the occurrences seen after the mark in the order
// they were seen, when the node left each Service's load balancer (see the
// package documentation for the rules).
type evidence struct {
	// idle: no host update was under way when the node was marked.
	idle bool
	// serial: the controller's node sync makes one call at a time (its
	// --concurrent-service-syncs is 1).
	serial bool

	nodeSyncSeen bool
	ensuring     map[types.UID]bool
	synced       map[types.UID]bool
	left         map[types.UID]time.Time
	failure      map[types.UID]string

	// A node-sync occurrence that may come from a call under way at the
	// mark waits in ambiguous until the controller has been quiet for
	// longer than any of its calls took: the pass that was under way is
	// then over, and it would have updated the Service again. lastSync is
	// the latest node-sync occurrence and longest the longest gap between
	// two (the first counted from the earliest moment a call under way at
	// the mark can have begun).
	ambiguous map[types.UID]time.Time
	lastSync  time.Time
	longest   time.Duration
}

// settleSlack is added to the longest call before the controller counts
// as quiet: calls of the same cloud vary.
const settleSlack = time.Second

// newEvidence starts the evidence of a drain. busySince is the earliest
// moment a call still under way at the mark can have begun (only read when
// not idle).
func newEvidence(idle, serial bool, busySince time.Time) *evidence {
	return &evidence{
		idle: idle, serial: serial, lastSync: busySince,
		ensuring: map[types.UID]bool{}, synced: map[types.UID]bool{},
		left: map[types.UID]time.Time{}, failure: map[types.UID]string{}, ambiguous: map[types.UID]time.Time{},
	}
}

// observe takes the next occurrence and reports whether it changed a
// Service's state.
func (e *evidence) observe(o occurrence) bool {
	switch o.reason {
	case ReasonEnsuring:
		e.ensuring[o.service] = true
		return false
	case ReasonEnsured:
		if e.ensuring[o.service] {
			return e.confirm(o)
		}
	case ReasonUpdated, ReasonUnavailable:
		trusted := e.idle || (e.serial && e.nodeSyncSeen) || e.synced[o.service]
		e.nodeSyncSeen = true
		e.synced[o.service] = true
		if !e.lastSync.IsZero() {
			e.longest = max(e.longest, o.at.Sub(e.lastSync))
		}
		e.lastSync = o.at
		if trusted {
			delete(e.ambiguous, o.service)
			return e.confirm(o)
		}
		if _, done := e.left[o.service]; !done {
			e.ambiguous[o.service] = o.at
		}
	case ReasonUpdateFailed, ReasonSyncFailed:
		if _, done := e.left[o.service]; !done {
			e.failure[o.service] = o.message
			return true
		}
	}
	return false
}

// settle confirms the ambiguous occurrences once the controller has made no
// node-sync call for longer than its longest one: no pass is under way, so
// none of them came from a call that began before the mark and still awaits
// its redo. It reports whether it confirmed any.
func (e *evidence) settle(now time.Time) bool {
	if len(e.ambiguous) == 0 || now.Sub(e.lastSync) <= e.longest+settleSlack {
		return false
	}
	for svc, at := range e.ambiguous {
		e.confirm(occurrence{service: svc, reason: ReasonUpdated, at: at})
	}
	clear(e.ambiguous)
	return true
}

func (e *evidence) confirm(o occurrence) bool {
	if _, done := e.left[o.service]; done {
		return false
	}
	e.left[o.service] = o.at
	delete(e.failure, o.service)
	return true
}

// adopt takes an occurrence recorded before the agent started following,
// for a drain resumed after a restart: one whose last time is in a later
// second than the mark's happened after it (event times keep whole seconds).
// Whether its call began after the mark can no longer be told.
func (e *evidence) adopt(service types.UID, reason string, last, mark time.Time) {
	if (reason == ReasonUpdated || reason == ReasonUnavailable || reason == ReasonEnsured) &&
		last.Truncate(time.Second).After(mark.Truncate(time.Second)) {
		e.confirm(occurrence{service: service, reason: reason, at: last})
	}
}

// idleAt reports whether nothing suggests a host update under way at mark:
// no node-sync event and no other node leaving the load balancers within
// quiet before it (or after it, before the agent looked). Times from the API
// keep whole seconds, so the window starts at a whole second.
func idleAt(mark time.Time, quiet time.Duration, recent []time.Time) bool {
	from := mark.Add(-quiet).Truncate(time.Second)
	for _, t := range recent {
		if !t.Before(from) {
			return false
		}
	}
	return true
}
