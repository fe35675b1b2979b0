package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// ServerLimits bound what clients can hold on a probe or metrics server.
// Its legitimate clients are few and quick: the kubelet's probes (a fresh
// connection each, a few hundred bytes) and one or two Prometheus scrapers
// (a keep-alive connection each). Everything else is someone holding
// connections, headers or goroutines, and each limit caps what that costs.
type ServerLimits struct {
	// ReadHeaderTimeout bounds the TLS handshake and the request headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing an answer (a slow reader of /metrics).
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections left unused this long.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request line and headers (431 beyond).
	MaxHeaderBytes int
	// MaxConnections bounds open connections; further ones wait in the
	// kernel's listen backlog, costing the process nothing, until one
	// closes.
	MaxConnections int
	// MaxConnectionsPerPeer bounds the open connections of one remote
	// address; its further connections are closed at once, so one client
	// cannot take every slot. Zero means no per-peer bound: right for a
	// loopback listener, whose clients all share one address.
	MaxConnectionsPerPeer int
}

// ProbeLimits suit a loopback probe server: the kubelet opens a connection
// per probe and sends a few hundred bytes.
func ProbeLimits() ServerLimits {
	return ServerLimits{
		ReadHeaderTimeout: 2 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      5 * time.Second,
		IdleTimeout:       10 * time.Second,
		MaxHeaderBytes:    8 << 10,
		MaxConnections:    16,
	}
}

// MetricsLimits suit a metrics server reachable from other pods. A bearer
// token is one or two KiB, well inside the header limit. The idle timeout
// is shorter than any usual scrape interval, so a scraper reconnects per
// scrape (one TLS handshake, the token review is cached) and an idle
// connection holds its slot for ten seconds at most. 32 connections of
// about 40 KiB each (goroutine, TLS and HTTP buffers) cost under 2 MiB.
func MetricsLimits() ServerLimits {
	return ServerLimits{
		ReadHeaderTimeout:     2 * time.Second,
		ReadTimeout:           5 * time.Second,
		WriteTimeout:          10 * time.Second,
		IdleTimeout:           10 * time.Second,
		MaxHeaderBytes:        8 << 10,
		MaxConnections:        32,
		MaxConnectionsPerPeer: 4,
	}
}

// Validate reports limits that would leave the server unbounded or unable
// to serve.
func (l ServerLimits) Validate() error {
	var errs []error
	if l.ReadHeaderTimeout <= 0 || l.ReadTimeout <= 0 || l.WriteTimeout <= 0 || l.IdleTimeout <= 0 {
		errs = append(errs, errors.New("server timeouts must be positive"))
	}
	if l.MaxHeaderBytes <= 0 || l.MaxConnections <= 0 {
		errs = append(errs, errors.New("header and connection limits must be positive"))
	}
	if l.MaxConnectionsPerPeer < 0 || l.MaxConnectionsPerPeer > l.MaxConnections {
		errs = append(errs, fmt.Errorf("connections per peer %d must be between 0 (no bound) and the connection limit %d", l.MaxConnectionsPerPeer, l.MaxConnections))
	}
	return errors.Join(errs...)
}

// Server is one probe or metrics server. Both subcommands build theirs
// here, so every port termgate opens besides the admission server has the
// same limits and the same shutdown.
type Server struct {
	// Name says what the server is for in logs and errors ("probes").
	Name    string
	Handler http.Handler
	Limits  ServerLimits
	// TLSConfig serves HTTPS when set, plain HTTP otherwise.
	TLSConfig *tls.Config
	// OnShed is called for each connection closed because its peer held
	// its share (a metric); may be nil.
	OnShed func()
}

// Serve serves on ln until ctx ends, then shuts the server down, giving
// requests in flight up to five seconds. HTTP/2 is not offered: a probe or
// a scrape gains nothing from it, and its stream handling is surface an
// attacker could use (rapid reset).
func (s Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.Limits.Validate(); err != nil {
		return fmt.Errorf("%s server: %w", s.Name, err)
	}
	logger := logr.FromContextOrDiscard(ctx).WithValues("server", s.Name)
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: s.Limits.ReadHeaderTimeout,
		ReadTimeout:       s.Limits.ReadTimeout,
		WriteTimeout:      s.Limits.WriteTimeout,
		IdleTimeout:       s.Limits.IdleTimeout,
		MaxHeaderBytes:    s.Limits.MaxHeaderBytes,
		// A non-nil, empty map turns HTTP/2 off.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		// Handshake failures and closed connections are routine on a port
		// anyone can reach; they go to the structured log at V(1).
		ErrorLog: slog.NewLogLogger(logr.ToSlogHandler(logger.V(1)), slog.LevelInfo),
	}
	ln = newLimitedListener(ln, s.Limits.MaxConnections, s.Limits.MaxConnectionsPerPeer, s.OnShed)
	errc := make(chan error, 1)
	go func() {
		if s.TLSConfig != nil {
			srv.TLSConfig = s.TLSConfig.Clone()
			srv.TLSConfig.NextProtos = []string{"http/1.1"}
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s on %s: %w", s.Name, ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s on %s: %w", s.Name, ln.Addr(), err)
	}
	return nil
}

// limitedListener bounds open connections in total and per remote address.
// Beyond the total, Accept waits for a connection to close (new ones wait
// in the kernel's backlog); beyond a peer's share, its new connection is
// closed at once and Accept goes on to the next.
type limitedListener struct {
	net.Listener
	slots   chan struct{}
	perPeer int
	onShed  func()
	done    chan struct{}
	close   sync.Once

	mu    sync.Mutex
	peers map[netip.Addr]int
}

func newLimitedListener(ln net.Listener, total, perPeer int, onShed func()) *limitedListener {
	return &limitedListener{
		Listener: ln, slots: make(chan struct{}, total), perPeer: perPeer, onShed: onShed,
		done: make(chan struct{}), peers: map[netip.Addr]int{},
	}
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		peer, ok := peerOf(c.RemoteAddr())
		if !l.admit(peer, ok) {
			_ = c.Close()
			<-l.slots
			if l.onShed != nil {
				l.onShed()
			}
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.leave(peer, ok); <-l.slots }}, nil
	}
}

func (l *limitedListener) Close() error {
	l.close.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// admit counts a connection of peer, unless the peer holds its share.
// Addresses that cannot be read (not TCP) are not bounded per peer.
func (l *limitedListener) admit(peer netip.Addr, known bool) bool {
	if l.perPeer <= 0 || !known {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.peers[peer] >= l.perPeer {
		return false
	}
	l.peers[peer]++
	return true
}

func (l *limitedListener) leave(peer netip.Addr, known bool) {
	if l.perPeer <= 0 || !known {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.peers[peer]--; l.peers[peer] <= 0 {
		delete(l.peers, peer)
	}
}

// peerOf returns the IP of a remote address, IPv4-mapped IPv6 unmapped so
// one host counts once.
func peerOf(a net.Addr) (netip.Addr, bool) {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(tcp.IP)
	return ip.Unmap(), ok
}

// limitedConn gives its slot back once, on the first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
