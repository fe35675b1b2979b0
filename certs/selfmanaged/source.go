package selfmanaged

import (
	"context"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

// Source is one replica's self-managed certificates: every replica copies
// the serving pair from its Secret into the certificate directory (Syncer);
// the replica holding the lease issues, renews and injects them (Rotator).
type Source struct {
	syncer  *Syncer
	rotator *Rotator
	lease   kubernetes.Interface
	leader  LeaderOptions
}

// SourceOptions say where the pair lives and how often it is copied.
type SourceOptions struct {
	Rotator Options
	Leader  LeaderOptions
	// Dir receives tls.crt and tls.key; SyncInterval is how often it is
	// refreshed from the Secret.
	Dir          string
	SyncInterval time.Duration
}

// NewSource builds the source; lease should be a client with a rate
// limiter of its own, so a busy replica never starves its lease renewals.
func NewSource(kube, lease kubernetes.Interface, o SourceOptions, clk clock.Clock) *Source {
	syncer := NewSyncer(kube, o.Rotator.Namespace, o.Rotator.SecretName, o.Dir, o.SyncInterval, clk)
	rotator := NewRotator(kube, o.Rotator, clk)
	rotator.OnSecretWritten(syncer.Kick)
	return &Source{syncer: syncer, rotator: rotator, lease: lease, leader: o.Leader}
}

// Run copies the pair, and competes for the lease to rotate it, until ctx
// ends.
func (s *Source) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.syncer.Run(ctx) })
	return RunLeader(ctx, s.lease, s.leader, s.rotator.Run)
}

// Ready is nil: the replica is ready once the pair is loaded, which the
// webhook's reloader reports.
func (s *Source) Ready() error { return nil }
