package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/netutil"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/webhook/review"
)

// Server serves the gates over HTTPS and shuts down in two steps: on
// cancellation it first reports not ready and keeps serving for
// ShutdownDelay, so the API server and the Service stop sending to this
// replica, and only then closes, letting requests in flight finish.
type Server struct {
	Handler       http.Handler
	TLSConfig     *tls.Config
	ShutdownDelay time.Duration
	// ShutdownTimeout bounds the wait for requests in flight.
	ShutdownTimeout time.Duration
	Clock           clock.Clock
	// Limits bound connections, calls and bodies; zero fields take
	// DefaultLimits.
	Limits Limits
	// Metrics counts refused calls; may be nil.
	Metrics *review.Metrics
	// ExpectedPeers are the address ranges the API server calls from (the
	// NetworkPolicy's control-plane range). Calls from elsewhere are
	// counted, so a policy that is not enforced, or holds the wrong range,
	// shows up, and bounded per peer (Limits.MaxReadingPerPeer). Empty:
	// nothing is counted or bounded per peer.
	ExpectedPeers []netip.Prefix

	draining atomic.Bool
}

var errDraining = errors.New("shutting down")

// Draining is a readiness check: it fails once shutdown has begun.
func (s *Server) Draining() error {
	if s.draining.Load() {
		return errDraining
	}
	return nil
}

// Serve serves on ln until ctx ends, then drains and closes.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	logger := log.FromContext(ctx)
	// Requests keep a live context during the shutdown delay, and carry the
	// logger so gates log with the server's fields.
	base := log.IntoContext(context.WithoutCancel(ctx), logger)
	limits := s.Limits.withDefaults()
	srv := &http.Server{
		Handler:           newLimitCalls(s.Handler, limits, s.Metrics, s.ExpectedPeers),
		TLSConfig:         s.TLSConfig,
		ReadHeaderTimeout: limits.ReadHeaderTimeout,
		ReadTimeout:       limits.ReadTimeout,
		WriteTimeout:      limits.WriteTimeout,
		IdleTimeout:       limits.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: limits.MaxConcurrentStreams},
		BaseContext:       func(net.Listener) context.Context { return base },
		// Handshake failures (a scanner, a client with an old CA) are
		// routine; they go to the structured log at V(1), not stderr.
		ErrorLog: slog.NewLogLogger(logr.ToSlogHandler(logger.V(1)), slog.LevelInfo),
	}
	errc := make(chan error, 1)
	// Beyond MaxConnections, Accept waits for a connection to close rather
	// than closing new ones: they stay in the kernel's backlog, so the API
	// server's connection succeeds as soon as a slow caller's ends.
	ln = netutil.LimitListener(ln, limits.MaxConnections)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	logger.Info("Serving admission webhook", "address", ln.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("serve webhook: %w", err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	logger.Info("Shutting down webhook after delay", "delay", s.ShutdownDelay)
	select {
	case <-s.Clock.After(s.ShutdownDelay):
	case err := <-errc:
		return fmt.Errorf("serve webhook: %w", err)
	}
	timeout := s.ShutdownTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down webhook: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve webhook: %w", err)
	}
	return nil
}
