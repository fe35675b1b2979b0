package selfmanaged

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// LeaderOptions configure the election among webhook replicas.
type LeaderOptions struct {
	Namespace     string
	LeaseName     string
	Identity      string
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
}

// RunLeader runs fn while this replica holds the lease, and competes again
// whenever it loses it, until ctx ends. client should have its own rate
// limits so a busy webhook never starves lease renewals. Leadership keeps a
// single writer of the Secret and of the CA bundle; the Secret update is a
// compare-and-swap as well, so a stale leader's write fails.
func RunLeader(ctx context.Context, client kubernetes.Interface, o LeaderOptions, fn func(ctx context.Context)) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.Namespace, o.LeaseName,
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: o.Identity})
	if err != nil {
		return fmt.Errorf("leader election lock: %w", err)
	}
	logger := log.FromContext(ctx).WithValues("lease", o.Namespace+"/"+o.LeaseName, "identity", o.Identity)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   o.LeaseDuration,
		RenewDeadline:   o.RenewDeadline,
		RetryPeriod:     o.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            o.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				logger.Info("Became certificate leader")
				fn(log.IntoContext(ctx, logger))
			},
			OnStoppedLeading: func() { logger.Info("Stopped being certificate leader") },
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	for ctx.Err() == nil {
		elector.Run(ctx)
	}
	return nil
}
