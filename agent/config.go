package agent

import (
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/agent/mark"
	"termgate.dev/termgate/nodemark"
)

// Config holds the agent's decisions about notices and deadlines. Drain
// timing lives in drain.Config.
type Config struct {
	// NodeName is the agent's own node (from NODE_NAME, the downward API).
	NodeName string
	// TaintEffect of the termination taint once the node drains.
	TaintEffect corev1.TaintEffect
	// PreemptionNotice is how long a Spot/preemptible VM lives after
	// instance/preempted turns TRUE (30 s on GCE).
	PreemptionNotice time.Duration
	// MaintenanceBudget is the deadline after TERMINATE_ON_HOST_MAINTENANCE
	// on ordinary VMs; AcceleratorMaintenanceBudget on VMs with GPUs/TPUs,
	// which GCE warns about an hour ahead.
	MaintenanceBudget            time.Duration
	AcceleratorMaintenanceBudget time.Duration
	// AcceleratorLabel marks accelerator nodes.
	AcceleratorLabel string
	// UpcomingLead is how long before a disruption time the cloud gives
	// (a maintenance window, a scheduled event's NotBefore) the drain
	// starts. Until then the node is only discouraged (PreferNoSchedule).
	UpcomingLead time.Duration
	// AdvisoryBudget is the deadline assumed after an advisory notice that
	// gives no time of its own (an EC2 rebalance recommendation): what the
	// drain gets with DrainOnAdvisory, and the advance mark's deadline.
	AdvisoryBudget time.Duration
	// DrainOnAdvisory drains on advisory notices instead of only
	// discouraging new pods; DrainOnPause does the same for notices that
	// freeze the VM for a moment (Azure Freeze, EC2 system-maintenance).
	DrainOnAdvisory, DrainOnPause bool
	// LateStartBudget is the time a VM is assumed to have left when
	// instance/preempted is already TRUE at the agent's first read: the
	// notice may be most of PreemptionNotice old.
	LateStartBudget time.Duration
	// ShutdownGrace is how long the agent may keep draining after SIGTERM:
	// its pod's terminationGracePeriodSeconds. Zero means "read it from the
	// agent's own pod" (POD_NAME), falling back to DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// PodName and PodNamespace name the agent's own pod (downward API).
	PodName, PodNamespace string
	// DryRun logs every decision and changes nothing.
	DryRun bool
	// LBMarks are the optional load-balancer marks of a draining node
	// (mark.Extras): the cluster autoscaler's taint and a cordon.
	LBMarks mark.Extras
}

// DefaultShutdownGrace is the Kubernetes default terminationGracePeriodSeconds.
const DefaultShutdownGrace = 30 * time.Second

// shutdownMargin is kept between the agent's last step and the kubelet's
// SIGKILL, for the final requests and the process exit.
const shutdownMargin = 2 * time.Second

// DefaultConfig returns the defaults behind the agent's flags.
func DefaultConfig() Config {
	return Config{
		TaintEffect:                  corev1.TaintEffectNoSchedule,
		PreemptionNotice:             30 * time.Second,
		MaintenanceBudget:            60 * time.Second,
		AcceleratorMaintenanceBudget: 60 * time.Minute,
		AcceleratorLabel:             "cloud.google.com/gke-accelerator",
		UpcomingLead:                 15 * time.Minute,
		AdvisoryBudget:               2 * time.Minute,
		LateStartBudget:              15 * time.Second,
	}
}

// Validate reports every inconsistent field at once.
func (c Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty: set NODE_NAME from the downward API (spec.nodeName) or --node-name"))
	}
	if err := nodemark.ValidateEffect(c.TaintEffect); err != nil {
		errs = append(errs, err)
	}
	for name, d := range map[string]time.Duration{
		"preemption notice": c.PreemptionNotice, "maintenance budget": c.MaintenanceBudget,
		"accelerator maintenance budget": c.AcceleratorMaintenanceBudget,
		"advisory budget":                c.AdvisoryBudget,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s %s must be positive", name, d))
		}
	}
	if c.LateStartBudget <= 0 {
		errs = append(errs, fmt.Errorf("late-start budget %s must be positive", c.LateStartBudget))
	}
	if c.ShutdownGrace < 0 {
		errs = append(errs, fmt.Errorf("shutdown grace %s is negative", c.ShutdownGrace))
	}
	if c.UpcomingLead < 0 {
		errs = append(errs, fmt.Errorf("upcoming-maintenance lead %s is negative", c.UpcomingLead))
	}
	return errors.Join(errs...)
}
