package lbtraffic

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/cluster"
)

// PreemptionSpec is one preemption played through a load balancer: a
// client sends requests at a steady rate through the load balancer of
// Service while Node, which runs backends named Backends* in Namespace, is
// preempted.
type PreemptionSpec struct {
	Cluster   *cluster.Cluster
	Service   string // namespace/name of the Service of type LoadBalancer
	Namespace string
	Backends  string // name prefix of the backend pods on Node
	Node      string
	// Preempt gives the notice (the fake metadata server's
	// instance/preempted), Notice is the time the VM has after it.
	Preempt func()
	Notice  time.Duration
	// Interval between requests (default 20 ms: 50 requests a second).
	Interval time.Duration
	// Before is how long the client runs before the notice (default 1 s).
	Before time.Duration
	// After is how long the client runs once the node has left the load
	// balancer and its backends are gone (default 1 s).
	After time.Duration
}

// Outcome is what the load balancer, the API server's audit log and the
// client saw.
type Outcome struct {
	Notice, Deadline time.Time
	// Left is when the node left the load balancer's host set (zero: it
	// had not when the run ended).
	Left time.Time
	// Evictions are when the API server received the agent's evictions and
	// deletes of the backends on the node, oldest first.
	Evictions []time.Time
	// Drained is when the last backend was gone from the node.
	Drained time.Time
	// Stopped is when the VM stopped (the deadline) with the node still
	// in the host set; zero if it had left before.
	Stopped  time.Time
	Requests []Request
	// Failed of Total requests sent from the notice on.
	Failed, Total int
	// Unhealthy is when the load balancer's health check marked the node
	// unhealthy, if it did.
	Unhealthy time.Time
}

// FirstEviction is when the first backend on the node was asked to go.
func (o Outcome) FirstEviction() time.Time {
	if len(o.Evictions) == 0 {
		return time.Time{}
	}
	return o.Evictions[0]
}

// PlayPreemption runs the client, gives the notice, and ends once the
// node's backends are gone and the node has left the host set (or, if the
// VM stopped first, once it left or three health checks failed), plus
// After. At the deadline, a node still in the host set stops as the VM
// does: its health checks and connections fail. The caller restores the
// node afterwards (SetStopped false, notice withdrawn).
func PlayPreemption(ctx context.Context, s PreemptionSpec) (Outcome, error) {
	if s.Interval == 0 {
		s.Interval = 20 * time.Millisecond
	}
	if s.Before == 0 {
		s.Before = time.Second
	}
	if s.After == 0 {
		s.After = time.Second
	}
	lbs := s.Cluster.LoadBalancers()
	st, ok, err := lbs.Of(ctx, s.Service)
	if err != nil || !ok || len(st.Ports) == 0 {
		return Outcome{}, fmt.Errorf("load balancer of %s: found %v, %v", s.Service, ok, err)
	}
	c := &Client{Target: fmt.Sprintf("%s:%d", st.Address, st.Ports[0]), Interval: s.Interval}
	c.Start()
	defer c.Stop()
	if !sleep(ctx, s.Before) {
		return Outcome{}, ctx.Err()
	}
	o := Outcome{Notice: time.Now()}
	o.Deadline = o.Notice.Add(s.Notice)
	s.Preempt()
	var endAt time.Time
	for {
		now := time.Now()
		st, _, err := lbs.Of(ctx, s.Service)
		if err != nil {
			return o, err
		}
		o.Left = st.LeftAt(s.Node, o.Notice)
		o.Unhealthy = unhealthyAt(st, s.Node, o.Notice)
		if o.Drained.IsZero() {
			left, err := backendsOn(ctx, s, s.Node)
			if err != nil {
				return o, err
			}
			if left == 0 {
				o.Drained = now
			}
		}
		if o.Stopped.IsZero() && o.Left.IsZero() && !now.Before(o.Deadline) {
			if err := lbs.SetStopped(ctx, s.Node, true); err != nil {
				return o, err
			}
			o.Stopped = now
		}
		gone := !o.Left.IsZero() || (!o.Stopped.IsZero() && !o.Unhealthy.IsZero())
		if endAt.IsZero() && !o.Drained.IsZero() && gone {
			endAt = now.Add(s.After)
		}
		// Past the deadline and three health checks, nothing changes any
		// more: the load balancer has given the node up or never will.
		if !endAt.IsZero() && !now.Before(endAt) || now.After(o.Deadline.Add(30*time.Second)) {
			break
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return o, ctx.Err()
		}
	}
	o.Requests = c.Stop()
	o.Failed, o.Total = Failed(o.Requests, o.Notice, time.Time{})
	removals, err := s.Cluster.PodRemovals()
	if err != nil {
		return o, err
	}
	for _, r := range removals {
		if r.Namespace == s.Namespace && strings.HasPrefix(r.Pod, s.Backends) && r.Node == s.Node && !r.Received.Before(o.Notice) {
			o.Evictions = append(o.Evictions, r.Received)
		}
	}
	sortTimes(o.Evictions)
	return o, nil
}

func unhealthyAt(st cluster.LBStatus, node string, since time.Time) time.Time {
	for _, ch := range st.History {
		if ch.Kind == "unhealthy" && len(ch.Hosts) == 1 && ch.Hosts[0] == node && ch.At.After(since) {
			return ch.At
		}
	}
	return time.Time{}
}

// backendsOn counts the backend pods still on node, terminating included.
func backendsOn(ctx context.Context, s PreemptionSpec, node string) (int, error) {
	pods, err := s.Cluster.Client.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("list backends: %w", err)
	}
	n := 0
	for _, p := range pods.Items {
		if p.Spec.NodeName == node && strings.HasPrefix(p.Name, s.Backends) && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			n++
		}
	}
	return n, nil
}

func sortTimes(ts []time.Time) {
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].Before(ts[j-1]); j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Summary is one line about the outcome.
func (o Outcome) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d requests failed after the notice", o.Failed, o.Total)
	if !o.Left.IsZero() {
		fmt.Fprintf(&b, "; node left the host set at +%s", o.Left.Sub(o.Notice).Round(time.Millisecond))
	}
	if f := o.FirstEviction(); !f.IsZero() {
		fmt.Fprintf(&b, "; first backend evicted at +%s", f.Sub(o.Notice).Round(time.Millisecond))
	}
	if !o.Drained.IsZero() {
		fmt.Fprintf(&b, "; backends gone at +%s (deadline +%s)", o.Drained.Sub(o.Notice).Round(time.Millisecond), o.Deadline.Sub(o.Notice))
	}
	if !o.Stopped.IsZero() {
		fmt.Fprintf(&b, "; VM stopped in the host set at +%s", o.Stopped.Sub(o.Notice).Round(time.Millisecond))
	}
	var failed []string
	for _, r := range o.Requests {
		if !r.OK() && !r.At.Before(o.Notice) {
			if len(failed) == 5 {
				failed = append(failed, "...")
				break
			}
			failed = append(failed, fmt.Sprintf("+%s (%s)", r.At.Sub(o.Notice).Round(time.Millisecond), shorten(r.Err)))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(&b, "; failures at %s", strings.Join(failed, ", "))
	}
	return b.String()
}

func shorten(s string) string {
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}
