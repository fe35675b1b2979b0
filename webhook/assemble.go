package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/nodepods"
	"termgate.dev/termgate/webhook/review"
)

// Options are the webhook's settings; cmd/termgate/app fills them from
// flags, tests and benchmarks from the same defaults.
type Options struct {
	// TaintEffect is the effect of the termination taint the agents write.
	TaintEffect corev1.TaintEffect
	// AgentUsername is the agent's service account, confined to its node.
	AgentUsername string
	// ConfirmSelectors pick the nodes a bind or pinned pod re-reads when
	// the cache says they are not terminating; ConfirmTimeout bounds each
	// read.
	ConfirmSelectors []labels.Selector
	ConfirmTimeout   time.Duration
	// RefuseUnconfirmed refuses a bind onto a node whose re-read failed,
	// instead of allowing it on the cache's word; RefuseUnconfirmedPinned
	// does the same for pinned pods.
	RefuseUnconfirmed       bool
	RefuseUnconfirmedPinned bool
	// ConfinePods tunes the index of the pods of draining nodes.
	ConfinePods nodepods.Options
	// Limits bound the admission server.
	Limits Limits
	// ExpectedPeers are the ranges the API server calls from (see
	// Server.ExpectedPeers).
	ExpectedPeers []netip.Prefix
	// ShutdownDelay and ShutdownTimeout pace the server's shutdown.
	ShutdownDelay, ShutdownTimeout time.Duration
	// CertDir holds the serving pair, reloaded on change.
	CertDir string
}

// Clients are the API clients the webhook runs on. Each concern gets a
// client with a rate limiter of its own, so that none can starve another:
// a burst of binds cannot spend the confinement's reads, nor a tenant's
// pinned pods the binds'.
type Clients struct {
	// Kube reads the pods of binds onto terminating nodes.
	Kube kubernetes.Interface
	// Metadata feeds the node cache.
	Metadata metadata.Interface
	// BindRereads and PinnedRereads re-read nodes before binds and before
	// pinned pods.
	BindRereads, PinnedRereads metadata.Interface
	// ConfineLists lists the pods of each node that becomes terminating;
	// ConfineReads reads the agent's node and the single pods the lists
	// do not answer.
	ConfineLists, ConfineReads metadata.Interface
}

// CertSource fills the certificate directory beside the webhook (the
// self-managed rotator and syncer), or follows what fills it (cert-manager's
// Certificate), and says whether it is ready.
type CertSource interface {
	Run(ctx context.Context) error
	Ready() error
}

// confineReadTimeout bounds the confinement's re-read of an agent's node:
// most of the 1.6 s a gate allows itself of the API server's 2 s.
const confineReadTimeout = 1200 * time.Millisecond

// Webhook is one replica: its caches, gates and admission server.
type Webhook struct {
	opts     Options
	nodes    *nodecache.Cache
	pods     *nodepods.Index
	reloader *certs.Reloader
	certs    CertSource
	handler  http.Handler
	server   *Server
}

// New assembles a replica. certSource may be nil when something else
// writes CertDir (files mode, tests).
func New(o Options, c Clients, certSource CertSource, reg prometheus.Registerer, logger logr.Logger, clk clock.WithTicker) (*Webhook, error) {
	if err := o.validate(c); err != nil {
		return nil, err
	}
	metrics, err := review.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	confirmMetrics, err := nodecache.NewConfirmMetrics(reg)
	if err != nil {
		return nil, err
	}
	nodes := nodecache.New(c.Metadata, nodecache.SelectorLabelKeys(o.ConfirmSelectors))
	reread := func(m metadata.Interface, timeout time.Duration) *nodecache.Rereader {
		return nodecache.NewRereader(m.Resource(nodecache.NodesResource), timeout)
	}
	pods := nodepods.New(nodepods.APILister{Client: c.ConfineLists}, nodepods.APILister{Client: c.ConfineReads}, clk, o.ConfinePods)
	nodes.OnTerminatingChange(pods.SetTerminating)
	reloader := certs.NewReloader(o.CertDir, clk)
	if err := registerIndexMetrics(reg, pods, reloader); err != nil {
		return nil, err
	}
	w := &Webhook{opts: o, nodes: nodes, pods: pods, reloader: reloader, certs: certSource}
	w.handler = Handler(Config{
		Nodes:       nodecache.NewConfirmer(nodes, reread(c.BindRereads, o.ConfirmTimeout), o.ConfirmSelectors, confirmMetrics),
		PinnedNodes: nodecache.NewConfirmer(nodes, reread(c.PinnedRereads, o.ConfirmTimeout), o.ConfirmSelectors, confirmMetrics),
		Pods:        APIPods{Client: c.Kube},
		// A bind that cannot be confirmed falls back on the cache; an
		// eviction that cannot be checked is refused, so the
		// confinement's re-read may use most of the call's time.
		AgentMarks:              nodecache.NewMarks(nodes, reread(c.ConfineReads, confineReadTimeout), pods.Warm),
		AgentPods:               pods,
		TaintEffect:             o.TaintEffect,
		RefuseUnconfirmed:       o.RefuseUnconfirmed,
		RefuseUnconfirmedPinned: o.RefuseUnconfirmedPinned,
		Agent:                   confine.Options{Username: o.AgentUsername},
		MaxBodyBytes:            o.Limits.MaxBodyBytes,
		Metrics:                 metrics,
		Log:                     logger,
		Clock:                   clk,
	})
	w.server = &Server{
		Handler:         w.handler,
		TLSConfig:       certs.ServerConfig(w.reloader.GetCertificate),
		ShutdownDelay:   o.ShutdownDelay,
		ShutdownTimeout: o.ShutdownTimeout,
		Clock:           clk,
		Limits:          o.Limits,
		Metrics:         metrics,
		ExpectedPeers:   o.ExpectedPeers,
	}
	return w, nil
}

func (o Options) validate(c Clients) error {
	var errs []error
	if o.AgentUsername == "" {
		errs = append(errs, errors.New("the agent's user name is required: it names the account confined to its own node"))
	}
	if o.CertDir == "" {
		errs = append(errs, errors.New("the certificate directory is required"))
	}
	if o.ConfirmTimeout <= 0 {
		errs = append(errs, errors.New("the node re-read timeout must be positive"))
	}
	if c.Kube == nil || c.Metadata == nil || c.BindRereads == nil || c.PinnedRereads == nil || c.ConfineLists == nil || c.ConfineReads == nil {
		errs = append(errs, errors.New("every client is required"))
	}
	return errors.Join(errs...)
}

// registerIndexMetrics reports what the confinement holds in memory.
func registerIndexMetrics(reg prometheus.Registerer, pods *nodepods.Index, served *certs.Reloader) error {
	for _, g := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "followed_nodes",
			Help: "Nodes marked terminating whose pods the webhook holds in memory for the agent confinement.",
		}, func() float64 { return float64(pods.Stats().Marked) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "confinement_pods",
			Help: "Pods held in memory for the agent confinement, of nodes draining now or recently.",
		}, func() float64 { return float64(pods.Stats().Pods) }),
		// Whatever renews the certificate (the rotator, cert-manager, a
		// person), this is what the API server is shown: an alert on it
		// covers every certificate mode.
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "serving_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the serving certificate in use expires; 0 until one is loaded.",
		}, func() float64 {
			if at := served.NotAfter(); !at.IsZero() {
				return float64(at.Unix())
			}
			return 0
		}),
	} {
		if err := reg.Register(g); err != nil {
			return fmt.Errorf("register webhook metrics: %w", err)
		}
	}
	return nil
}

// Checks are the replica's readiness conditions.
func (w *Webhook) Checks() []Check {
	checks := []Check{
		{Name: "serving-certificate", Fn: w.reloader.Loaded},
		{Name: "node-cache", Fn: func() error {
			if !w.nodes.HasSynced() {
				return errors.New("node cache not synced")
			}
			return nil
		}},
		{Name: "shutdown", Fn: w.server.Draining},
	}
	if w.certs != nil {
		checks = append(checks, Check{Name: "certificate-source", Fn: w.certs.Ready})
	}
	return checks
}

// Run serves admission on ln, with the caches and the certificate source
// beside it, until ctx ends or one of them fails.
func (w *Webhook) Run(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		name string
		err  error
	}
	parts := map[string]func(context.Context) error{
		"node cache":           w.nodes.Start,
		"confinement pods":     w.pods.Start,
		"certificate reloader": w.reloader.Start,
		"webhook server":       func(ctx context.Context) error { return w.server.Serve(ctx, ln) },
	}
	if w.certs != nil {
		parts["certificate source"] = w.certs.Run
	}
	done := make(chan result, len(parts))
	for name, run := range parts {
		go func() { done <- result{name, run(ctx)} }()
	}
	// A part may return early with no error (the node cache, once synced,
	// leaves its informer running); only a failure stops the others.
	var first error
	for range parts {
		r := <-done
		if r.err != nil && first == nil && ctx.Err() == nil {
			first = fmt.Errorf("%s: %w", r.name, r.err)
			log.FromContext(ctx).Error(r.err, "Webhook component failed; stopping", "component", r.name)
			cancel()
		}
	}
	return first
}

// Handler is the mux of the gates, without the server's limits (tests).
func (w *Webhook) Handler() http.Handler { return w.handler }

// Nodes is the replica's node cache (tests).
func (w *Webhook) Nodes() *nodecache.Cache { return w.nodes }

// Pods is the replica's index of the pods of draining nodes (tests).
func (w *Webhook) Pods() *nodepods.Index { return w.pods }

// Server is the replica's admission server, for its limits (tests).
func (w *Webhook) Server() *Server { return w.server }
