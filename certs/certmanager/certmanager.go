// Package certmanager reports the state of the webhook's cert-manager
// Certificate. cert-manager issues the serving pair into a Secret that the
// pod mounts (certs.Reloader serves it); this package only watches the
// Certificate's Ready condition so that readiness and logs say why the
// webhook has no usable certificate.
package certmanager

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Status watches one Certificate.
type Status struct {
	reader   client.Reader
	key      types.NamespacedName
	interval time.Duration
	clock    clock.Clock

	mu  sync.Mutex
	err error
}

// New watches the Certificate key through reader (a client whose scheme
// includes cert-manager's types) every interval.
func New(reader client.Reader, key types.NamespacedName, interval time.Duration, clk clock.Clock) *Status {
	return &Status{reader: reader, key: key, interval: interval, clock: clk, err: errors.New("certificate not checked yet")}
}

// Run polls until ctx ends, logging every change of the Ready condition.
func (s *Status) Run(ctx context.Context) {
	logger := log.FromContext(ctx).WithValues("certificate", s.key.String())
	for {
		err := s.check(ctx)
		if s.set(err) {
			if err != nil {
				logger.Error(err, "cert-manager certificate is not ready")
			} else {
				logger.Info("cert-manager certificate is ready")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.clock.After(s.interval):
		}
	}
}

// Ready is the readiness check: nil while the Certificate is Ready.
func (s *Status) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// set stores err and reports whether the readiness changed.
func (s *Status) set(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := (err == nil) != (s.err == nil) || (err != nil && s.err != nil && err.Error() != s.err.Error())
	s.err = err
	return changed
}

func (s *Status) check(ctx context.Context) error {
	var cert cmapi.Certificate
	if err := s.reader.Get(ctx, s.key, &cert); err != nil {
		return fmt.Errorf("read certificate %s: %w", s.key, err)
	}
	return readyErr(&cert)
}

// readyErr explains a Certificate that is not Ready, or returns nil.
func readyErr(cert *cmapi.Certificate) error {
	for _, c := range cert.Status.Conditions {
		if c.Type != cmapi.CertificateConditionReady {
			continue
		}
		if c.Status == cmmeta.ConditionTrue {
			if c.ObservedGeneration != 0 && c.ObservedGeneration < cert.Generation {
				return fmt.Errorf("certificate %s/%s: Ready describes generation %d, spec is at %d", cert.Namespace, cert.Name, c.ObservedGeneration, cert.Generation)
			}
			return nil
		}
		return fmt.Errorf("certificate %s/%s not ready: %s: %s", cert.Namespace, cert.Name, c.Reason, c.Message)
	}
	return fmt.Errorf("certificate %s/%s has no Ready condition yet", cert.Namespace, cert.Name)
}
