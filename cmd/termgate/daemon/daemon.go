// Package daemon is the process plumbing both termgate subcommands share:
// structured logging, API client configuration, the probe and metrics
// servers (serve.go, probes.go, metrics.go: the same limits, router and
// registry policy on both sides), a run group with graceful shutdown and
// the Go memory limit. The
// subcommands in cmd/termgate/app keep only their options and wiring.
package daemon

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// LogOptions choose the log format and verbosity.
type LogOptions struct {
	// Format is json or text.
	Format string
	// Verbosity is logr's V level to log up to.
	Verbosity int
}

// AddFlags binds --log-format and -v.
func (o *LogOptions) AddFlags(fs *flag.FlagSet) {
	if o.Format == "" {
		o.Format = "json"
	}
	fs.StringVar(&o.Format, "log-format", o.Format, "Log format: json or text.")
	fs.IntVar(&o.Verbosity, "v", o.Verbosity, "Log verbosity: 0 decisions and lifecycle, 1 details, 2 every request.")
}

// Validate checks the format.
func (o LogOptions) Validate() error {
	if o.Format != "json" && o.Format != "text" {
		return fmt.Errorf("--log-format %q: want json or text", o.Format)
	}
	if o.Verbosity < 0 {
		return fmt.Errorf("-v %d: want 0 or more", o.Verbosity)
	}
	return nil
}

// Logger logs structured records to w through log/slog; logr's V(n) maps to
// slog level -n.
func (o LogOptions) Logger(w io.Writer) logr.Logger {
	opts := &slog.HandlerOptions{Level: slog.Level(-o.Verbosity)}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if o.Format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return logr.FromSlogHandler(h)
}

// ClientOptions configure the connection to the API server.
type ClientOptions struct {
	// Kubeconfig is a kubeconfig file; empty means in-cluster.
	Kubeconfig string
	// QPS and Burst size the client's rate limiter.
	QPS   float64
	Burst int
}

// AddFlags binds --kubeconfig, --kube-api-qps and --kube-api-burst;
// budgetFor says what the main client's budget is spent on, for their help.
func (o *ClientOptions) AddFlags(fs *flag.FlagSet, budgetFor string) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig; empty uses the in-cluster configuration.")
	fs.Float64Var(&o.QPS, "kube-api-qps", o.QPS, "Client QPS for "+budgetFor+".")
	fs.IntVar(&o.Burst, "kube-api-burst", o.Burst, "Client burst for "+budgetFor+".")
}

// Validate checks the rate limits.
func (o ClientOptions) Validate() error {
	if o.QPS <= 0 || o.Burst <= 0 {
		return fmt.Errorf("client QPS %g and burst %d must be positive", o.QPS, o.Burst)
	}
	return nil
}

// Config loads the kubeconfig (or the in-cluster configuration) and applies
// the rate limits and userAgent. No client-wide timeout: watches and
// hanging requests need none, and each call that must end sets its own.
func (o ClientOptions) Config(userAgent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if o.Kubeconfig == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("in-cluster config (set --kubeconfig outside a cluster): %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig); err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", o.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = float32(o.QPS), o.Burst
	cfg.UserAgent = userAgent
	return cfg, nil
}

// Listen opens addr now, so that a port in use fails the start, not a
// goroutine later.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// Group runs a process's components; the first one to fail cancels the
// others, and Wait returns that failure.
type Group struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

// NewGroup returns a group and the context its components run in.
func NewGroup(ctx context.Context) (*Group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &Group{cancel: cancel}, ctx
}

// Go runs fn as the component name.
func (g *Group) Go(name string, fn func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(); err != nil {
			g.mu.Lock()
			if g.err == nil {
				g.err = fmt.Errorf("%s: %w", name, err)
			}
			g.mu.Unlock()
			g.cancel()
		}
	}()
}

// Wait waits for every component and returns the first failure.
func (g *Group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}
