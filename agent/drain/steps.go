package drain

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/nodemark"
)

// Step names one step of the drain. They key Result.Started and appear in
// logs and events.
type Step string

const (
	StepEvictRegular Step = "evictRegular"
	// The load-balancer steps run only when the drain waits for load
	// balancers (Config.LoadBalancers).
	StepAwaitLoadBalancers Step = "awaitLoadBalancers"
	StepEvictNEGBackends   Step = "evictNEGBackends"
	StepEvictLBBackends    Step = "evictLoadBalancerBackends"
	StepEvictDelayed       Step = "evictDelayed"
	StepEscalateRegular    Step = "escalateRegular"
	StepEvictSystem        Step = "evictSystem"
	StepEscalateSystem     Step = "escalateSystem"
)

// step is one job of the drain. Each pass runs every step in order; a step
// whose time has not come returns the instant it waits for (zero if none),
// and the loop sleeps until the earliest such instant or a pod change.
// Steps only enqueue work, so running one again is harmless.
type step struct {
	name Step
	run  func(ctx context.Context, p *pass) (acted int, wake time.Time)
}

func (r *run) plan() []step {
	var lb []step
	if r.lb != nil {
		// The wait decides first which pods it holds this pass; the
		// container-native backends go before everything else, so their
		// endpoints detach with the most grace left.
		lb = []step{{StepAwaitLoadBalancers, r.awaitLoadBalancers}, {StepEvictNEGBackends, r.evictNEGBackends}}
	}
	return append(lb, []step{
		{StepEvictRegular, r.evictRegular},
		{StepEvictLBBackends, r.evictLBBackends},
		{StepEvictDelayed, r.evictDelayed},
		{StepEscalateRegular, r.escalateRegular},
		{StepEvictSystem, r.evictSystem},
		{StepEscalateSystem, r.escalateSystem},
	}...)
}

// runSteps runs every step and returns when the loop must look again at the
// latest: the earliest instant a step waits for, or the deadline.
func (r *run) runSteps(ctx context.Context, p *pass) time.Time {
	wake := r.sched.deadline
	for _, s := range r.steps {
		acted, w := s.run(ctx, p)
		if acted > 0 {
			r.begin(ctx, s.name, p.now, acted)
		}
		if !w.IsZero() && w.Before(wake) {
			wake = w
		}
	}
	return wake
}

// evictRegular evicts regular pods, from the notice until the regular
// cut-off, except the backends of node-level load balancers (and any pod the
// wait for load balancers holds), which evictLBBackends takes.
func (r *run) evictRegular(ctx context.Context, p *pass) (int, time.Time) {
	if !p.now.Before(r.sched.regularCutoff) {
		return 0, time.Time{}
	}
	return r.evictAll(ctx, p.regular, nodemark.WaveRegular, func(pod *corev1.Pod) bool {
		return !p.lb.isBackend(pod) && !p.lb.isHeld(pod)
	}), time.Time{}
}

// evictNEGBackends evicts the regular pods behind container-native load
// balancers first: their endpoints detach only when they terminate.
func (r *run) evictNEGBackends(ctx context.Context, p *pass) (int, time.Time) {
	if !p.now.Before(r.sched.regularCutoff) {
		return 0, time.Time{}
	}
	return r.evictAll(ctx, p.regular, nodemark.WaveRegular, func(pod *corev1.Pod) bool {
		return p.lb.isNEG(pod) && !p.lb.isBackend(pod) && !p.lb.isHeld(pod)
	}), time.Time{}
}

// evictLBBackends evicts the regular pods behind node-level load balancers
// once the node has left them all (plus the margin) or the cap has passed.
func (r *run) evictLBBackends(ctx context.Context, p *pass) (int, time.Time) {
	if !p.now.Before(r.sched.regularCutoff) {
		return 0, time.Time{}
	}
	return r.evictAll(ctx, p.regular, nodemark.WaveRegular, func(pod *corev1.Pod) bool {
		return p.lb.isBackend(pod) && !p.lb.isHeld(pod)
	}), time.Time{}
}

// evictDelayed evicts each delayed pod once its toleration has run out.
func (r *run) evictDelayed(ctx context.Context, p *pass) (int, time.Time) {
	if !p.now.Before(r.sched.regularCutoff) {
		return 0, time.Time{}
	}
	acted, next := 0, time.Time{}
	for _, dp := range p.delayed {
		switch {
		case terminating(dp.pod), p.lb.isHeld(dp.pod):
		case p.now.Before(dp.due):
			if next.IsZero() || dp.due.Before(next) {
				next = dp.due
			}
		case r.queue.evict(ctx, dp.pod, nodemark.WaveDelayed):
			acted++
		}
	}
	return acted, next
}

// escalateRegular deletes, at the regular cut-off, the regular and delayed
// pods still present, so that they end by the deadline whatever their
// disruption budgets say.
func (r *run) escalateRegular(ctx context.Context, p *pass) (int, time.Time) {
	if p.now.Before(r.sched.regularCutoff) {
		return 0, r.sched.regularCutoff
	}
	acted := r.escalateAll(ctx, p.regular, nodemark.WaveRegular, p.now)
	for _, dp := range p.delayed {
		if r.escalate(ctx, dp.pod, nodemark.WaveDelayed, p.now) {
			acted++
		}
	}
	return acted, time.Time{}
}

// evictSystem evicts system pods once the regular wave has left the node or
// at the regular cut-off, whichever comes first, until the system cut-off.
func (r *run) evictSystem(ctx context.Context, p *pass) (int, time.Time) {
	if p.now.Before(r.sched.regularCutoff) && !p.regularGone() {
		return 0, r.sched.regularCutoff
	}
	if !p.now.Before(r.sched.systemCutoff) {
		return 0, time.Time{}
	}
	return r.evictAll(ctx, p.system, nodemark.WaveSystem, func(pod *corev1.Pod) bool { return !p.lb.isHeld(pod) }), time.Time{}
}

// escalateSystem deletes, at the system cut-off, the system pods still
// present.
func (r *run) escalateSystem(ctx context.Context, p *pass) (int, time.Time) {
	if p.now.Before(r.sched.systemCutoff) {
		return 0, r.sched.systemCutoff
	}
	return r.escalateAll(ctx, p.system, nodemark.WaveSystem, p.now), time.Time{}
}

// evictAll queues the eviction of every pod that is not already being
// deleted and that take accepts.
func (r *run) evictAll(ctx context.Context, pods []*corev1.Pod, wave nodemark.Wave, take func(*corev1.Pod) bool) int {
	acted := 0
	for _, pod := range pods {
		if !terminating(pod) && take(pod) && r.queue.evict(ctx, pod, wave) {
			acted++
		}
	}
	return acted
}

func (r *run) escalateAll(ctx context.Context, pods []*corev1.Pod, wave nodemark.Wave, now time.Time) int {
	acted := 0
	for _, pod := range pods {
		if r.escalate(ctx, pod, wave, now) {
			acted++
		}
	}
	return acted
}

// escalate queues the deletion of pod unless it is already being deleted
// and will be gone by the deadline. A pod whose own deletion would outlast
// the deadline (a long grace period) is deleted again with a shorter one.
func (r *run) escalate(ctx context.Context, pod *corev1.Pod, wave nodemark.Wave, now time.Time) bool {
	if terminating(pod) && !endsAfter(pod, r.sched.deadline) {
		return false
	}
	if _, useful := deleteGrace(pod, now, r.sched.deadline, r.d.cfg.MinDeleteGrace); !useful {
		return false
	}
	return r.queue.delete(ctx, pod, wave)
}

// begin records the first time a step acts, logs it and records an event.
func (r *run) begin(ctx context.Context, name Step, now time.Time, pods int) {
	if _, ok := r.started[name]; ok {
		return
	}
	since, left := now.Sub(r.sched.notice), r.sched.deadline.Sub(now)
	r.started[name] = since
	log.FromContext(ctx).Info("drain step started", "step", name, "pods", pods, "sinceNotice", since, "beforeDeadline", left)
	if r.d.rec == nil {
		return
	}
	reason, verb := nodemark.EventDrainWaveStarted, "evicting"
	switch name {
	case StepEscalateRegular, StepEscalateSystem:
		reason, verb = nodemark.EventDrainEscalated, "deleting with grace clamped to the deadline"
	case StepAwaitLoadBalancers:
		verb = "holding, until the node has left their load balancers,"
	}
	at := map[string]string{nodemark.EventAnnotationStepTime: now.UTC().Format(time.RFC3339Nano)}
	r.d.rec.AnnotatedEventf(nodemark.NodeEventRef(r.d.cfg.NodeName), at, corev1.EventTypeNormal, reason,
		"%s: %s %s, %s before the deadline", name, verb, podCount(pods), left.Round(time.Millisecond))
}

// podCount writes a number of pods for an event: "1 pod", "3 pods".
func podCount(n int) string {
	if n == 1 {
		return "1 pod"
	}
	return fmt.Sprintf("%d pods", n)
}
