package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
)

// The metrics registry policy, the same for both subcommands: termgate's
// own metrics go on a registry the wiring creates for the process
// (NewRegistry) and hands to each component's constructor, never on a
// global one, so a test can build several agents or webhooks in one
// process. What libraries register by themselves on controller-runtime's
// global registry (client-go's request counts, certwatcher) is served
// beside it (Gatherer).

// NewRegistry returns a process's registry with the Go runtime and process
// collectors.
func NewRegistry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return reg, nil
}

// Gatherer is what the binary serves: the process's own registry and the
// libraries' global one.
func Gatherer(own prometheus.Gatherer) prometheus.Gatherer {
	return prometheus.Gatherers{own, ctrlmetrics.Registry}
}

// The API calls that authenticate and authorize scrapes (scrapeAuth) have
// a budget of their own, apart from everything else the process does. A
// few scrapers make a few calls a minute; a flood of made-up tokens is
// held to this rate and never touches the evictions' or the webhook's
// budget.
const (
	metricsAuthQPS   = 5
	metricsAuthBurst = 10
)

// MetricsOptions say where and how /metrics is served.
type MetricsOptions struct {
	// BindAddress is host:port; "0" or empty disables the server.
	BindAddress string
	// Secure serves HTTPS and lets only callers through that the API
	// server authenticates and authorizes for get on /metrics.
	Secure bool
	// CertDir holds tls.crt and tls.key, reloaded on change; empty serves
	// a self-signed certificate made at start.
	CertDir string
}

// AddFlags binds the metrics flags with o's values as defaults.
func (o *MetricsOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.BindAddress, "metrics-bind-address", o.BindAddress, "Address serving Prometheus /metrics; \"0\" disables.")
	fs.BoolVar(&o.Secure, "metrics-secure", o.Secure, "Serve /metrics over HTTPS, only to callers the API server authenticates (TokenReview) and authorizes for get on /metrics (SubjectAccessReview; the termgate-metrics-reader ClusterRole grants it). false serves plain HTTP to anyone who reaches the address.")
	fs.StringVar(&o.CertDir, "metrics-cert-dir", o.CertDir, "Directory with tls.crt and tls.key for /metrics, reloaded on change; empty serves a self-signed certificate made at start.")
}

// Enabled says whether a metrics server is wanted.
func (o MetricsOptions) Enabled() bool { return o.BindAddress != "" && o.BindAddress != "0" }

// Validate checks the address.
func (o MetricsOptions) Validate() error {
	if !o.Enabled() {
		return nil
	}
	if err := validateAddress(o.BindAddress); err != nil {
		return fmt.Errorf("--metrics-bind-address: %w", err)
	}
	if o.CertDir != "" && !o.Secure {
		return errors.New("--metrics-cert-dir is set but --metrics-secure=false serves plain HTTP")
	}
	return nil
}

// ServingOptions are the probe and metrics addresses of a subcommand.
type ServingOptions struct {
	// ProbeAddress serves /healthz and /readyz; "0" or empty disables.
	ProbeAddress string
	Metrics      MetricsOptions
}

// AddFlags binds --health-probe-bind-address and the metrics flags.
func (o *ServingOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.ProbeAddress, "health-probe-bind-address", o.ProbeAddress, "Address serving /healthz and /readyz (plain HTTP, answered from memory); \"0\" disables.")
	o.Metrics.AddFlags(fs)
}

// ProbesEnabled says whether a probe server is wanted.
func (o ServingOptions) ProbesEnabled() bool { return o.ProbeAddress != "" && o.ProbeAddress != "0" }

// Validate checks both addresses.
func (o ServingOptions) Validate() error {
	var errs []error
	if o.ProbesEnabled() {
		if err := validateAddress(o.ProbeAddress); err != nil {
			errs = append(errs, fmt.Errorf("--health-probe-bind-address: %w", err))
		}
	}
	errs = append(errs, o.Metrics.Validate())
	if o.ProbesEnabled() && o.Metrics.Enabled() && o.ProbeAddress == o.Metrics.BindAddress && !strings.HasSuffix(o.ProbeAddress, ":0") {
		errs = append(errs, fmt.Errorf("probes and metrics cannot share %s", o.ProbeAddress))
	}
	return errors.Join(errs...)
}

func validateAddress(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port (host may be empty for every address)", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// isLoopback says whether addr listens on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// MetricsServer is a ready-to-run metrics server: its port is open and
// its authentication set up, so a bad option fails the start.
type MetricsServer struct {
	server   Server
	ln       net.Listener
	reloader *certs.Reloader
}

// NewMetricsServer listens on o.BindAddress and serves gatherer at
// /metrics. cfg is the process's API client configuration; the
// authentication and authorization calls get a copy of it with a rate
// limiter of their own. reg receives the server's own metrics (refused
// scrapes and shed connections).
func NewMetricsServer(ctx context.Context, o MetricsOptions, cfg *rest.Config, gatherer prometheus.Gatherer, reg prometheus.Registerer, clk clock.PassiveClock) (*MetricsServer, error) {
	logger := logr.FromContextOrDiscard(ctx).WithValues("server", "metrics")
	m, err := newServerMetrics(reg)
	if err != nil {
		return nil, err
	}
	h := promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		// Gathering costs CPU; two scrapers at once are plenty.
		MaxRequestsInFlight: 4,
		ErrorLog:            logAdapter{logger},
	})
	s := &MetricsServer{server: Server{Name: "metrics", Limits: MetricsLimits(), OnShed: m.shed.Inc}}
	if o.Secure {
		client, err := kubernetes.NewForConfig(metricsAuthConfig(cfg))
		if err != nil {
			return nil, fmt.Errorf("metrics authentication client: %w", err)
		}
		h = newScrapeAuth(client, clk).wrap(h, logger)
		if s.server.TLSConfig, s.reloader, err = metricsTLS(o.CertDir, clk); err != nil {
			return nil, err
		}
	} else if !isLoopback(o.BindAddress) {
		logger.Info("Serving /metrics over plain HTTP without authentication to anyone who reaches the address; set --metrics-secure", "address", o.BindAddress)
	}
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.Method(http.MethodGet, "/metrics", closeOnRefusal(h, m.refused))
	s.server.Handler = r
	if s.ln, err = Listen(o.BindAddress); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *MetricsServer) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends.
func (s *MetricsServer) Run(ctx context.Context) error {
	if s.reloader == nil {
		return s.server.Serve(ctx, s.ln)
	}
	g, gctx := NewGroup(ctx)
	g.Go("metrics certificate", func() error { return s.reloader.Start(gctx) })
	g.Go("metrics server", func() error { return s.server.Serve(gctx, s.ln) })
	return g.Wait()
}

// Close releases the port of a server that will not run.
func (s *MetricsServer) Close() error { return s.ln.Close() }

// metricsAuthConfig copies cfg with a rate limiter of its own, shared by
// the token and access reviews.
func metricsAuthConfig(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = metricsAuthQPS, metricsAuthBurst
	c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(metricsAuthQPS, metricsAuthBurst)
	c.UserAgent = cfg.UserAgent + " metrics-auth"
	return c
}

// metricsTLS serves the pair in dir, or a self-signed one when dir is
// empty. A scraper of the self-signed certificate must skip verification;
// the bearer token still travels encrypted.
func metricsTLS(dir string, clk clock.PassiveClock) (*tls.Config, *certs.Reloader, error) {
	if dir != "" {
		r := certs.NewReloader(dir, clk)
		return certs.ServerConfig(r.GetCertificate), r, nil
	}
	pems, err := selfmanaged.Issue([]string{"localhost", "127.0.0.1"}, clk.Now(), 10*365*24*time.Hour)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signed metrics certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(pems.Cert, pems.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signed metrics certificate: %w", err)
	}
	return certs.ServerConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil }), nil, nil
}

// serverMetrics count what the metrics server turned away.
type serverMetrics struct {
	refused *prometheus.CounterVec
	shed    prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "metrics_server", Name: "requests_refused_total",
			Help: "Requests to /metrics answered with an error, by HTTP status: 401 no token or one the API server did not accept, 403 not allowed get on /metrics, 500 a review call failed, 503 too many scrapes at once.",
		}, []string{"code"}),
		shed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "metrics_server", Name: "connections_shed_total",
			Help: "Connections to the metrics port closed at once because their peer already held its share.",
		}),
	}
	for _, c := range []prometheus.Collector{m.refused, m.shed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics server metrics: %w", err)
		}
	}
	return m, nil
}

// closeOnRefusal counts error answers and closes their connection, so a
// caller without a valid token cannot keep a connection (and its slot) by
// sending requests.
func closeOnRefusal(next http.Handler, refused *prometheus.CounterVec) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&refusalWriter{ResponseWriter: w, refused: refused}, r)
	})
}

type refusalWriter struct {
	http.ResponseWriter
	refused *prometheus.CounterVec
}

func (w *refusalWriter) WriteHeader(code int) {
	if code >= http.StatusBadRequest {
		w.Header().Set("Connection", "close")
		w.refused.WithLabelValues(strconv.Itoa(code)).Inc()
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logAdapter lets promhttp report gathering errors to the structured log.
type logAdapter struct{ log logr.Logger }

func (l logAdapter) Println(v ...any) { l.log.Info(fmt.Sprint(v...)) }
