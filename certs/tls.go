// Package certs provides the webhook's serving certificate: a TLS config
// that serves whatever pair is in the certificate directory, reloaded on
// change without a restart. Where the pair comes from is a mode: the
// selfmanaged package writes it from a Secret it maintains, cert-manager
// mounts the Secret it issues, and tests write files directly.
package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// File names in the certificate directory, as in a kubernetes.io/tls Secret.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// Reloader serves the newest certificate pair found in a directory. The
// files may not exist at start (the self-managed syncer or the kubelet has
// not written them yet): until they do, handshakes fail and Loaded reports
// why, so the pod is not ready.
type Reloader struct {
	dir     string
	clock   clock.PassiveClock
	watcher atomic.Pointer[certwatcher.CertWatcher]
	// poll is how often to look for the files before they first appear.
	poll time.Duration
}

// NewReloader serves the pair in dir.
func NewReloader(dir string, clk clock.PassiveClock) *Reloader {
	return &Reloader{dir: dir, clock: clk, poll: 500 * time.Millisecond}
}

// Start waits for the files, then watches them until ctx ends.
func (r *Reloader) Start(ctx context.Context) error {
	certPath, keyPath := filepath.Join(r.dir, CertFile), filepath.Join(r.dir, KeyFile)
	var cw *certwatcher.CertWatcher
	err := wait.PollUntilContextCancel(ctx, r.poll, true, func(context.Context) (bool, error) {
		var err error
		cw, err = certwatcher.New(certPath, keyPath)
		if err != nil {
			log.FromContext(ctx).V(1).Info("Serving certificate not available yet", "dir", r.dir, "err", err.Error())
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("wait for serving certificate in %s: %w", r.dir, err)
	}
	r.watcher.Store(cw)
	log.FromContext(ctx).Info("Serving certificate loaded", "dir", r.dir)
	if err := cw.Start(ctx); err != nil {
		return fmt.Errorf("watch serving certificate: %w", err)
	}
	return nil
}

var errNotLoaded = errors.New("serving certificate not loaded yet")

// GetCertificate is the tls.Config hook: the current pair, read on each
// handshake so a rotated certificate is served at once.
func (r *Reloader) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	cw := r.watcher.Load()
	if cw == nil {
		return nil, errNotLoaded
	}
	return cw.GetCertificate(hello)
}

// Loaded is the readiness check: nil once a pair is loaded and its
// certificate is within its validity period.
func (r *Reloader) Loaded() error {
	cw := r.watcher.Load()
	if cw == nil {
		return errNotLoaded
	}
	cert, err := cw.GetCertificate(nil)
	if err != nil || cert == nil || cert.Leaf == nil {
		return errNotLoaded
	}
	now := r.clock.Now()
	if now.After(cert.Leaf.NotAfter) || now.Before(cert.Leaf.NotBefore) {
		return fmt.Errorf("serving certificate is not valid now (valid %s to %s)", cert.Leaf.NotBefore.Format(time.RFC3339), cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// NotAfter is the expiry of the certificate served now, zero before one is
// loaded.
func (r *Reloader) NotAfter() time.Time {
	cw := r.watcher.Load()
	if cw == nil {
		return time.Time{}
	}
	cert, err := cw.GetCertificate(nil)
	if err != nil || cert == nil || cert.Leaf == nil {
		return time.Time{}
	}
	return cert.Leaf.NotAfter
}

// ServerConfig is the webhook's TLS configuration: TLS 1.2 at least, the
// certificate from getCert on each handshake.
func ServerConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert}
}

// WriteFiles writes a pair into dir so that a watcher never sees a partial
// file: each file is written aside and renamed into place. The key goes
// first, so the certificate's change is the last event the watcher sees.
func WriteFiles(dir string, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create certificate dir: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, KeyFile), keyPEM); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, CertFile), certPEM)
}

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
