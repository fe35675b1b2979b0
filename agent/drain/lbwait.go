package drain

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/nodemark"
)

// Fronting says which load balancers front one pod.
type Fronting struct {
	// Node lists the node-level load-balancer Services the pod backs
	// (namespace/name): the node must leave them before the pod goes.
	Node []string
	// NEG: the pod backs a container-native (NEG) load balancer, whose
	// endpoints detach only when the pod terminates.
	NEG bool
}

// LoadBalancers follows the load balancers in front of the node's pods
// (package agent/lb).
type LoadBalancers interface {
	// Follow starts following them for the drain of mark, from now on; the
	// view's watches end with ctx.
	Follow(ctx context.Context, mark nodemark.Mark) LoadBalancerView
}

// LoadBalancerView is one drain's view of the load balancers.
type LoadBalancerView interface {
	// Classifies reports whether Fronting can answer yet.
	Classifies() bool
	// Fronting returns what fronts pod.
	Fronting(pod *corev1.Pod) Fronting
	// Left returns when the node was seen leaving service's load balancer
	// (zero: not yet), and the last failure the controller reported for it.
	Left(service string) (at time.Time, failure string)
	// Changed receives a value after any change the view sees.
	Changed() <-chan struct{}
}

// WaitCap bounds the wait for load balancers: at most Fraction of the notice
// (deadline minus notice time) and at most Max.
type WaitCap struct {
	Fraction float64
	Max      time.Duration
}

// DefaultWaitCaps fit GCE's notices: 40% of a 30 s Spot notice (12 s) leaves
// the regular wave 8 s before the system grace; maintenance windows are
// longer, so the absolute bound decides there (a GPU VM's 60 min notice
// waits at most 5 min).
func DefaultWaitCaps() map[nodemark.Reason]WaitCap {
	return map[nodemark.Reason]WaitCap{
		nodemark.ReasonPreempted:           {Fraction: 0.4, Max: 15 * time.Second},
		nodemark.ReasonHostMaintenance:     {Fraction: 0.4, Max: 5 * time.Minute},
		nodemark.ReasonUpcomingMaintenance: {Fraction: 0.4, Max: 5 * time.Minute},
	}
}

// DefaultLBMargin is waited after the node was seen leaving a load balancer,
// before its backends there go: the cloud's operation has returned, and its
// data plane and the agent's watch follow within about a second.
const DefaultLBMargin = 2 * time.Second

// capFor returns the cap of a reason, the Preempted one for a reason it does
// not know (the shortest notice, the safest guess).
func capFor(caps map[nodemark.Reason]WaitCap, reason nodemark.Reason) WaitCap {
	if c, ok := caps[reason]; ok {
		return c
	}
	if c, ok := caps[nodemark.ReasonPreempted]; ok {
		return c
	}
	return DefaultWaitCaps()[nodemark.ReasonPreempted]
}

// lbCapAt returns when the wait for load balancers ends at the latest:
// notice + min(fraction x notice window, max), never after the regular
// cut-off. It derives from the mark alone, so a restarted agent computes the
// same instant. A late start marks the notice when the VM got it, not when
// the agent saw it, so its cap may already have passed: then nothing waits.
func lbCapAt(mark nodemark.Mark, c WaitCap, regularCutoff time.Time) time.Time {
	window := mark.Deadline.Sub(mark.NoticeTime)
	wait := min(time.Duration(float64(window)*c.Fraction), c.Max)
	return earliest(mark.NoticeTime.Add(max(wait, 0)), regularCutoff)
}

// lbWait is one drain's wait for load balancers.
type lbWait struct {
	view   LoadBalancerView
	capAt  time.Time // from the mark; the regular cut-off may come first
	cap    WaitCap
	margin time.Duration

	capped   bool            // the cap passed: nothing is held any more
	ended    time.Duration   // when the wait ended, since the notice
	waited   map[string]bool // Services that held a pod, by namespace/name
	reported bool            // LoadBalancersDrained was recorded
}

// lbHold is what the wait decided in one pass.
type lbHold struct {
	held    map[types.UID]bool // backends that stay for now
	backend map[types.UID]bool // backends of node-level load balancers
	neg     map[types.UID]bool // backends of NEG load balancers
	pending []string           // Services the node is not confirmed gone from
}

func (h *lbHold) isHeld(p *corev1.Pod) bool    { return h != nil && h.held[p.UID] }
func (h *lbHold) isBackend(p *corev1.Pod) bool { return h != nil && h.backend[p.UID] }
func (h *lbHold) isNEG(p *corev1.Pod) bool     { return h != nil && h.neg[p.UID] }

// awaitLoadBalancers decides which pods wait for the node to leave the load
// balancers they back. It evicts nothing and returns how many pods it holds
// and when it must look again: when a margin ends, or at the cap.
func (r *run) awaitLoadBalancers(ctx context.Context, p *pass) (int, time.Time) {
	w := r.lb
	if w == nil {
		return 0, time.Time{}
	}
	h := &lbHold{held: map[types.UID]bool{}, backend: map[types.UID]bool{}, neg: map[types.UID]bool{}}
	p.lb = h
	capAt := earliest(w.capAt, r.sched.regularCutoff)
	candidates := p.evictable()
	if !w.capped && !w.view.Classifies() {
		// What fronts the pods is not known yet: every pod waits, at most
		// until the cap.
		if !p.now.Before(capAt) {
			r.capLoadBalancerWait(ctx, p.now, capAt, []string{"(Services not read yet)"})
			return 0, time.Time{}
		}
		for _, pod := range candidates {
			h.held[pod.UID] = true
		}
		return len(h.held), capAt
	}
	for _, pod := range candidates {
		f := w.view.Fronting(pod)
		if f.NEG {
			h.neg[pod.UID] = true
		}
		if len(f.Node) == 0 {
			continue
		}
		h.backend[pod.UID] = true
		for _, svc := range f.Node {
			w.waited[svc] = true
			if !w.capped && !r.released(svc, p.now) {
				h.held[pod.UID] = true
			}
		}
	}
	// A Service stays pending until confirmed even once its backends are
	// gone: the events name every Service the node waited for.
	pending, next := map[string]bool{}, time.Time{}
	for svc := range w.waited {
		at, _ := w.view.Left(svc)
		switch {
		case at.IsZero():
			pending[svc] = true
		case !r.released(svc, p.now):
			pending[svc] = true
			next = earliestSet(next, at.Add(w.margin))
		}
	}
	h.pending = sortedKeys(pending)
	r.d.cfg.Metrics.setLBPending(len(h.pending))
	switch {
	case w.capped:
		return 0, time.Time{}
	case len(h.pending) == 0:
		if len(w.waited) > 0 && !w.reported {
			r.reportLoadBalancersDrained(ctx, p.now)
		}
		return 0, time.Time{}
	case !p.now.Before(capAt):
		r.capLoadBalancerWait(ctx, p.now, capAt, h.pending)
		clear(h.held)
		return 0, time.Time{}
	}
	return len(h.held), earliestSet(next, capAt)
}

// released reports whether the node left svc's load balancer at least the
// margin ago.
func (r *run) released(svc string, now time.Time) bool {
	at, _ := r.lb.view.Left(svc)
	return !at.IsZero() && !now.Before(at.Add(r.lb.margin))
}

// reportLoadBalancersDrained records, once, how long the node took to leave
// each load balancer it waited for.
func (r *run) reportLoadBalancersDrained(ctx context.Context, now time.Time) {
	w := r.lb
	w.reported = true
	var parts []string
	var longest time.Duration
	for _, svc := range sortedKeys(w.waited) {
		at, _ := w.view.Left(svc)
		d := at.Sub(r.sched.notice)
		longest = max(longest, d)
		parts = append(parts, fmt.Sprintf("%s after %s", svc, d.Round(time.Millisecond)))
	}
	wait := now.Sub(r.sched.notice)
	w.ended = wait
	r.d.cfg.Metrics.observeLBWait(lbOutcomeDrained, wait)
	log.FromContext(ctx).Info("node left its load balancers", "services", len(w.waited), "longest", longest, "margin", w.margin, "sinceNotice", wait)
	if r.d.rec == nil {
		return
	}
	at := map[string]string{nodemark.EventAnnotationStepTime: now.UTC().Format(time.RFC3339Nano)}
	r.d.rec.AnnotatedEventf(nodemark.NodeEventRef(r.d.cfg.NodeName), at, corev1.EventTypeNormal, nodemark.EventLoadBalancersDrained,
		"Node left the load balancers of %d Services (%s); their backends go after the %s margin, %s after the notice",
		len(w.waited), strings.Join(parts, ", "), w.margin, wait.Round(time.Millisecond))
}

// capLoadBalancerWait ends the wait at the cap and names the Services the
// node was not confirmed gone from.
func (r *run) capLoadBalancerWait(ctx context.Context, now, capAt time.Time, pending []string) {
	w := r.lb
	w.capped = true
	wait := now.Sub(r.sched.notice)
	w.ended = wait
	r.d.cfg.Metrics.observeLBWait(lbOutcomeCapped, wait)
	var parts []string
	for _, svc := range pending {
		if _, failure := w.view.Left(svc); failure != "" {
			svc += " (last failure: " + failure + ")"
		}
		parts = append(parts, svc)
	}
	log.FromContext(ctx).Info("load-balancer wait capped", "pending", parts, "capAt", capAt, "sinceNotice", wait)
	if r.d.rec == nil {
		return
	}
	at := map[string]string{nodemark.EventAnnotationStepTime: now.UTC().Format(time.RFC3339Nano)}
	r.d.rec.AnnotatedEventf(nodemark.NodeEventRef(r.d.cfg.NodeName), at, corev1.EventTypeWarning, nodemark.EventLoadBalancerWaitCapped,
		"Cap reached %s after the notice (at most %.0f%% of the notice and %s) before the node was confirmed gone from the load balancers of %d Services: %s; evicting their backends now",
		capAt.Sub(r.sched.notice).Round(time.Millisecond), w.cap.Fraction*100, w.cap.Max, len(pending), strings.Join(parts, ", "))
}

func earliestSet(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
