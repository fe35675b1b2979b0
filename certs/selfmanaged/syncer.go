package selfmanaged

import (
	"bytes"
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/certs"
)

// Syncer copies the serving pair from the Secret into a certificate
// directory. Every replica runs one. It reads the Secret instead of mounting
// it so that the same code works in a pod (an emptyDir under a read-only
// root) and in a process on a developer's host, and so that a new pair is
// served within one Interval instead of the kubelet's sync period.
type Syncer struct {
	client    kubernetes.Interface
	namespace string
	name      string
	dir       string
	interval  time.Duration
	clock     clock.Clock
	lastCert  []byte
	lastKey   []byte
	kick      chan struct{}
}

// NewSyncer copies Secret namespace/name into dir every interval.
func NewSyncer(client kubernetes.Interface, namespace, name, dir string, interval time.Duration, clk clock.Clock) *Syncer {
	return &Syncer{client: client, namespace: namespace, name: name, dir: dir, interval: interval, clock: clk, kick: make(chan struct{}, 1)}
}

// Kick makes Run sync now instead of at the next interval; the leader in the
// same process calls it right after writing the Secret.
func (s *Syncer) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// missingRetry is how soon Run looks again while the Secret does not exist
// yet (a new installation waiting for its leader).
const missingRetry = time.Second

// Run syncs until ctx ends. Failures are logged and retried: the files
// already written keep being served.
func (s *Syncer) Run(ctx context.Context) {
	logger := log.FromContext(ctx)
	for {
		wait := s.interval
		if err := s.SyncOnce(ctx); err != nil && ctx.Err() == nil {
			logger.Error(err, "Sync serving certificate from secret")
		}
		if s.lastCert == nil {
			wait = min(wait, missingRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-s.clock.After(wait):
		}
	}
}

// SyncOnce writes the pair if it changed since the last write. A missing
// Secret is not an error: the leader has not created it yet.
func (s *Syncer) SyncOnce(ctx context.Context) error {
	secret, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		log.FromContext(ctx).V(1).Info("Serving certificate secret does not exist yet", "secret", s.namespace+"/"+s.name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read secret %s/%s: %w", s.namespace, s.name, err)
	}
	cert, key := secret.Data[KeyCert], secret.Data[KeyKey]
	if len(cert) == 0 || len(key) == 0 {
		return fmt.Errorf("secret %s/%s has no %s/%s", s.namespace, s.name, KeyCert, KeyKey)
	}
	if bytes.Equal(cert, s.lastCert) && bytes.Equal(key, s.lastKey) {
		return nil
	}
	if err := certs.WriteFiles(s.dir, cert, key); err != nil {
		return err
	}
	s.lastCert, s.lastKey = cert, key
	log.FromContext(ctx).Info("Wrote serving certificate from secret", "secret", s.namespace+"/"+s.name, "dir", s.dir)
	return nil
}
