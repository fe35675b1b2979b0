package drain

import (
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
)

// Defaults for the timing knobs. They fit a 30 s Spot notice: the regular
// wave gets 20 s, the system wave the last 10 s, and pods still blocked 5 s
// before the deadline are deleted with whatever time is left.
const (
	DefaultSystemGrace          = 10 * time.Second
	DefaultSystemEscalateBefore = 5 * time.Second
	DefaultConcurrency          = 32
	DefaultBackoffBase          = 100 * time.Millisecond
	DefaultBackoffCap           = 5 * time.Second
	DefaultMinDeleteGrace       = 1 * time.Second
)

// Config holds every knob of a drain. The agent's command line exposes each
// field as a flag; zero values take the defaults above.
type Config struct {
	// NodeName is the node being drained; events are recorded on it.
	NodeName string
	// TaintEffect is the effect of the termination taint, so the policy can
	// tell which pods tolerate it (see nodemark.DrainOrderFor).
	TaintEffect corev1.TaintEffect
	// SystemGrace is the time before the deadline reserved for the system
	// wave. At deadline minus SystemGrace, regular pods still present are
	// deleted instead of evicted and the system wave starts.
	SystemGrace time.Duration
	// SystemEscalateBefore is how long before the deadline system pods that
	// are still present get deleted instead of evicted. At most SystemGrace.
	SystemEscalateBefore time.Duration
	// Concurrency bounds the API calls in flight. The caller sizes the
	// client's QPS and burst for it.
	Concurrency int
	// BackoffBase and BackoffCap bound the per-pod exponential backoff after
	// a refused eviction (429 from a PodDisruptionBudget, 5xx).
	BackoffBase time.Duration
	BackoffCap  time.Duration
	// MinDeleteGrace is the shortest grace period an escalated delete asks
	// for. Zero would make the API server drop the pod object without
	// waiting for the kubelet, so it is at least one second.
	MinDeleteGrace time.Duration
	// DryRun sends every eviction and delete with dryRun=All: the API server
	// checks them (permissions, disruption budgets) but changes nothing.
	// Since no pod leaves, Run walks the whole timeline, each pod evicted
	// and escalated once, and ends with ErrDeadlinePassed.
	DryRun bool
	// Metrics receives drain metrics; nil records none.
	Metrics *Metrics
	// LoadBalancers, when set, makes the drain wait for load balancers:
	// the backends of node-level load balancers stay until the node has
	// left them and LBMargin has passed, or until the cap of the mark's
	// reason in LBWaitCaps; the backends of container-native (NEG) load
	// balancers go first. Nil: no wait (package agent/lb implements it).
	LoadBalancers LoadBalancers
	LBWaitCaps    map[nodemark.Reason]WaitCap
	LBMargin      time.Duration
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.TaintEffect == "" {
		c.TaintEffect = corev1.TaintEffectNoSchedule
	}
	if c.SystemGrace == 0 {
		c.SystemGrace = DefaultSystemGrace
	}
	if c.SystemEscalateBefore == 0 {
		c.SystemEscalateBefore = min(DefaultSystemEscalateBefore, c.SystemGrace)
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffCap == 0 {
		c.BackoffCap = DefaultBackoffCap
	}
	if c.MinDeleteGrace == 0 {
		c.MinDeleteGrace = DefaultMinDeleteGrace
	}
	if c.LBWaitCaps == nil {
		c.LBWaitCaps = DefaultWaitCaps()
	}
	if c.LBMargin == 0 {
		c.LBMargin = DefaultLBMargin
	}
	return c
}

// Validate reports every inconsistent field at once.
func (c Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if err := nodemark.ValidateEffect(c.TaintEffect); err != nil {
		errs = append(errs, err)
	}
	if c.SystemGrace < 0 {
		errs = append(errs, fmt.Errorf("system grace %s is negative", c.SystemGrace))
	}
	if c.SystemEscalateBefore < 0 || c.SystemEscalateBefore > c.SystemGrace {
		errs = append(errs, fmt.Errorf("system escalation %s must lie between 0 and the system grace %s", c.SystemEscalateBefore, c.SystemGrace))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency %d must be at least 1", c.Concurrency))
	}
	if c.BackoffBase <= 0 || c.BackoffCap < c.BackoffBase {
		errs = append(errs, fmt.Errorf("backoff %s..%s: base must be positive and not above the cap", c.BackoffBase, c.BackoffCap))
	}
	if c.MinDeleteGrace < time.Second {
		errs = append(errs, fmt.Errorf("minimum delete grace %s must be at least 1s", c.MinDeleteGrace))
	}
	for reason, wc := range c.LBWaitCaps {
		if wc.Fraction < 0 || wc.Fraction > 1 || wc.Max < 0 {
			errs = append(errs, fmt.Errorf("load-balancer wait cap for %s: fraction %g must lie between 0 and 1 and the bound %s must not be negative", reason, wc.Fraction, wc.Max))
		}
	}
	if c.LBMargin < 0 {
		errs = append(errs, fmt.Errorf("load-balancer margin %s is negative", c.LBMargin))
	}
	return errors.Join(errs...)
}
