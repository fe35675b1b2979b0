package app

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/agent/lb"
	"termgate.dev/termgate/agent/mark"
	"termgate.dev/termgate/nodemark"
)

// lbOptions are the agent's load-balancer settings (docs/load-balancers.md).
type lbOptions struct {
	wait                   bool
	caps                   waitCapsFlag
	margin                 time.Duration
	ignore, force, first   string
	serviceControllerSyncs int
	syncWindow             time.Duration
	selectors              lb.Selectors
}

func newLBOptions() lbOptions {
	return lbOptions{wait: true, caps: waitCapsFlag{caps: drain.DefaultWaitCaps()}, margin: drain.DefaultLBMargin, serviceControllerSyncs: 1, syncWindow: lb.DefaultQuietWindow}
}

func (o *lbOptions) addFlags(fs *flag.FlagSet, marks *mark.Extras) {
	fs.BoolVar(&marks.AutoscalerTaint, "lb-autoscaler-taint", false, "also taint a draining node ToBeDeletedByClusterAutoscaler, so that kube-proxy's /healthz fails and health checks take it out of Cluster-policy load balancers; the taint is the cluster autoscaler's (it removes it when it starts) and the shipped Node policy refuses it: allow it there first")
	fs.BoolVar(&marks.Cordon, "lb-cordon", false, "also cordon a draining node (spec.unschedulable); load balancers ignore it; the shipped Node policy refuses it: allow it there first")
	fs.BoolVar(&o.wait, "lb-wait", o.wait, "hold the backends of node-level load balancers (Services of type LoadBalancer) until the node has left them, and evict container-native (NEG) backends first")
	fs.Var(&o.caps, "lb-wait-cap", "the longest wait for load balancers per notice reason, as REASON:FRACTION:MAX (fraction of the notice, absolute bound), repeatable or comma-separated")
	fs.DurationVar(&o.margin, "lb-health-check-margin", o.margin, "time between the evidence that the node left a load balancer and the eviction of its backends there")
	fs.StringVar(&o.force, "lb-wait-selector", "", "label selector of Services whose backends wait whatever their type")
	fs.StringVar(&o.first, "lb-evict-first-selector", "", "label selector of Services whose backends are evicted first, like NEG backends")
	fs.StringVar(&o.ignore, "lb-ignore-selector", "", "label selector of Services the drain ignores")
	fs.DurationVar(&o.syncWindow, "lb-sync-window", o.syncWindow, "a load-balancer update, or another node leaving the load balancers, this long before the mark means the service controller may have been mid-sync: keep it above the cloud's longest load-balancer operation")
	fs.IntVar(&o.serviceControllerSyncs, "lb-service-controller-syncs", o.serviceControllerSyncs, "the service controller's --concurrent-service-syncs (1 on GKE): with 1, one Service's update shows the next call began after the mark")
}

func (o *lbOptions) validate() error {
	var err error
	if o.selectors, err = lb.ParseSelectors(o.ignore, o.force, o.first); err != nil {
		return err
	}
	if o.syncWindow <= 0 {
		return fmt.Errorf("--lb-sync-window %s must be positive", o.syncWindow)
	}
	if o.serviceControllerSyncs < 1 {
		return fmt.Errorf("--lb-service-controller-syncs %d must be at least 1", o.serviceControllerSyncs)
	}
	return nil
}

// tracker returns the Service cache the drain classifies pods with, or nil
// when the wait is off.
func (o *lbOptions) tracker(client kubernetes.Interface, clk clock.Clock, node string) *lb.Tracker {
	if !o.wait {
		return nil
	}
	return lb.NewTracker(client, clk, lb.Config{NodeName: node, Selectors: o.selectors, SerialNodeSync: o.serviceControllerSyncs == 1, QuietWindow: o.syncWindow})
}

// runBeside runs t's watch for as long as work runs. The watch outlives
// ctx like the agent's other caches: a drain goes on after SIGTERM.
func runBeside(t *lb.Tracker, work func(context.Context) error) func(context.Context) error {
	if t == nil {
		return work
	}
	return func(ctx context.Context) error {
		watchCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); t.Run(watchCtx) }()
		defer func() { stop(); <-done }()
		return work(ctx)
	}
}

// waitCapsFlag parses repeated REASON:FRACTION:MAX values over the defaults.
type waitCapsFlag struct {
	caps map[nodemark.Reason]drain.WaitCap
	set  bool
}

func (f *waitCapsFlag) String() string {
	if f == nil {
		return ""
	}
	var parts []string
	for r, c := range f.caps {
		parts = append(parts, fmt.Sprintf("%s:%s:%s", r, strconv.FormatFloat(c.Fraction*100, 'f', -1, 64)+"%", c.Max))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

func (f *waitCapsFlag) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		parts := strings.Split(strings.TrimSpace(item), ":")
		if len(parts) != 3 {
			return fmt.Errorf("%q: want REASON:FRACTION:MAX, e.g. Preempted:40%%:15s", item)
		}
		reason := nodemark.Reason(parts[0])
		switch reason {
		case nodemark.ReasonPreempted, nodemark.ReasonHostMaintenance, nodemark.ReasonUpcomingMaintenance:
		default:
			return fmt.Errorf("%q: unknown reason %q, want %s, %s or %s", item, reason,
				nodemark.ReasonPreempted, nodemark.ReasonHostMaintenance, nodemark.ReasonUpcomingMaintenance)
		}
		frac, err := parseFraction(parts[1])
		if err != nil {
			return fmt.Errorf("%q: %w", item, err)
		}
		bound, err := time.ParseDuration(parts[2])
		if err != nil || bound < 0 {
			return fmt.Errorf("%q: bound %q is not a duration of at least 0", item, parts[2])
		}
		f.caps[reason] = drain.WaitCap{Fraction: frac, Max: bound}
	}
	f.set = true
	return nil
}

// parseFraction reads "40%" or "0.4".
func parseFraction(s string) (float64, error) {
	scale := 1.0
	if strings.HasSuffix(s, "%") {
		s, scale = strings.TrimSuffix(s, "%"), 0.01
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v*scale < 0 || v*scale > 1 {
		return 0, fmt.Errorf("fraction %q must lie between 0 and 1 (or 0%% and 100%%)", s)
	}
	return v * scale, nil
}
