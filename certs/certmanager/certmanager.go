// Package certmanager reports the state of the webhook's cert-manager
// Certificate. cert-manager issues the serving pair into a Secret that the
// pod mounts (certs.Reloader serves it); this package only follows the
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
	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Status watches one Certificate.
type Status struct {
	client client.WithWatch
	key    types.NamespacedName
	retry  time.Duration
	clock  clock.Clock

	mu  sync.Mutex
	err error
}

// New follows the Certificate key through c (a client whose scheme
// includes cert-manager's types). After a failed read or a broken watch it
// tries again every retry.
func New(c client.WithWatch, key types.NamespacedName, retry time.Duration, clk clock.Clock) *Status {
	return &Status{client: c, key: key, retry: retry, clock: clk, err: errors.New("certificate not checked yet")}
}

// Run reads the Certificate, then follows it with a watch, until ctx ends,
// logging every change of the Ready condition. The watch makes the webhook
// ready as soon as cert-manager says the certificate is; a poll every few
// seconds kept a fresh install unready for up to that long.
func (s *Status) Run(ctx context.Context) {
	logger := log.FromContext(ctx).WithValues("certificate", s.key.String())
	for {
		var cert cmapi.Certificate
		if err := s.client.Get(ctx, s.key, &cert); err != nil {
			s.report(logger, fmt.Errorf("read certificate %s: %w", s.key, err))
		} else {
			s.report(logger, readyErr(&cert))
		}
		// Watched even when missing: a fresh install starts the webhook
		// before cert-manager has created the Certificate.
		began := s.clock.Now()
		err := s.follow(ctx, logger)
		if err == nil && s.clock.Since(began) >= time.Second {
			continue // the server ended a long watch; read and watch again
		}
		if err != nil {
			logger.V(1).Info("Certificate watch ended", "error", err.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-s.clock.After(s.retry):
		}
	}
}

// follow applies every change of the Certificate until the watch ends; a
// nil error means the server closed it normally. The watch starts without
// a resourceVersion, so the server first sends the Certificate as it is now
// (if it exists): nothing between the read above and the watch is missed.
func (s *Status) follow(ctx context.Context, logger logr.Logger) error {
	w, err := s.client.Watch(ctx, &cmapi.CertificateList{}, &client.ListOptions{
		Namespace:     s.key.Namespace,
		FieldSelector: fields.OneTermEqualSelector("metadata.name", s.key.Name),
	})
	if err != nil {
		return fmt.Errorf("watch certificate %s: %w", s.key, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil
			}
			switch ev.Type {
			case watch.Error:
				return fmt.Errorf("watch certificate %s: %v", s.key, apierrors.FromObject(ev.Object))
			case watch.Deleted:
				if cert, ok := ev.Object.(*cmapi.Certificate); ok && cert.Name == s.key.Name {
					s.report(logger, fmt.Errorf("certificate %s was deleted", s.key))
				}
			case watch.Added, watch.Modified:
				// Filter by name too: not every client honours the selector.
				if cert, ok := ev.Object.(*cmapi.Certificate); ok && cert.Name == s.key.Name {
					s.report(logger, readyErr(cert))
				}
			}
		}
	}
}

// report stores err and logs when readiness changed.
func (s *Status) report(logger logr.Logger, err error) {
	if !s.set(err) {
		return
	}
	if err != nil {
		logger.Error(err, "cert-manager certificate is not ready")
	} else {
		logger.Info("cert-manager certificate is ready")
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
