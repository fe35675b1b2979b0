package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/certmanager"
	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/cmd/termgate/daemon"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/nodepods"
	"termgate.dev/termgate/webhook/review"
)

func runWebhook(ctx context.Context, args []string) error {
	o := NewWebhookOptions()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("webhook: unexpected arguments %v", fs.Args())
	}
	if err := o.Validate(); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	logger := o.Log.Logger(os.Stderr).WithName("webhook")
	// controller-runtime's own components (certwatcher) log through its
	// global logger; set it here, in wiring, once.
	log.SetLogger(logger)
	// A flood of large calls is collected before the container's limit is
	// reached, instead of the kernel killing the replica.
	limit, err := daemon.SetMemoryLimit()
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	if limit > 0 {
		logger.Info("Go memory limit set from the container's", "bytes", limit)
	}
	return serveWebhook(log.IntoContext(ctx, logger), o, clock.RealClock{})
}

// WebhookDeps are the clients serveWebhook builds from the options; tests
// pass their own.
type webhookDeps struct {
	kube     kubernetes.Interface
	lease    kubernetes.Interface
	metadata metadata.Interface
	ctrl     client.WithWatch
	// confineKube and confineMetadata share a rate limiter of their own.
	confineKube     kubernetes.Interface
	confineMetadata metadata.Interface
	// confirmMetadata makes the fresh node reads, on a budget of its own.
	confirmMetadata metadata.Interface
}

func newWebhookDeps(o *WebhookOptions) (*webhookDeps, error) {
	cfg, err := daemon.ClientOptions{Kubeconfig: o.Kubeconfig, QPS: o.QPS, Burst: o.Burst}.Config("termgate-webhook")
	if err != nil {
		return nil, err
	}
	d := &webhookDeps{}
	if d.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if d.metadata, err = metadata.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("metadata client: %w", err)
	}
	// The confinement's two clients share one limiter, so the budget is
	// the flags' and not twice it.
	confineCfg := withBudget(cfg, o.ConfineQPS, o.ConfineBurst, "termgate-webhook-confine")
	confineCfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(confineCfg.QPS, confineCfg.Burst)
	if d.confineKube, err = kubernetes.NewForConfig(confineCfg); err != nil {
		return nil, fmt.Errorf("confinement client: %w", err)
	}
	if d.confineMetadata, err = metadata.NewForConfig(confineCfg); err != nil {
		return nil, fmt.Errorf("confinement metadata client: %w", err)
	}
	if d.confirmMetadata, err = metadata.NewForConfig(withBudget(cfg, o.ConfirmQPS, o.ConfirmBurst, "termgate-webhook-confirm")); err != nil {
		return nil, fmt.Errorf("node confirmation client: %w", err)
	}
	if d.lease, err = kubernetes.NewForConfig(withBudget(cfg, o.LeaseQPS, o.LeaseBurst, cfg.UserAgent)); err != nil {
		return nil, fmt.Errorf("lease client: %w", err)
	}
	if o.CertMode == CertModeCertManager {
		scheme := runtime.NewScheme()
		if err := cmapi.AddToScheme(scheme); err != nil {
			return nil, fmt.Errorf("cert-manager scheme: %w", err)
		}
		if d.ctrl, err = client.NewWithWatch(cfg, client.Options{Scheme: scheme}); err != nil {
			return nil, fmt.Errorf("cert-manager client: %w", err)
		}
	}
	return d, nil
}

// withBudget copies cfg with a rate limit of its own: each of the webhook's
// concerns gets its own budget, so none can starve another.
func withBudget(cfg *rest.Config, qps float64, burst int, userAgent string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst, c.UserAgent = float32(qps), burst, userAgent
	return c
}

// serveWebhook runs every component until ctx ends or one fails.
func serveWebhook(ctx context.Context, o *WebhookOptions, clk clock.Clock) error {
	deps, err := newWebhookDeps(o)
	if err != nil {
		return err
	}
	logger := log.FromContext(ctx)

	metrics, err := review.NewMetrics(ctrlmetrics.Registry)
	if err != nil {
		return err
	}
	atRisk, err := nodecache.ParseSelectors(o.ConfirmNodeSelectors)
	if err != nil {
		return err
	}
	confirmMetrics, err := nodecache.NewConfirmMetrics(ctrlmetrics.Registry)
	if err != nil {
		return err
	}
	nodes := nodecache.New(deps.metadata, nodecache.SelectorLabelKeys(atRisk))
	confirmed := nodecache.NewConfirmer(nodes, deps.confirmMetadata.Resource(nodecache.NodesResource), atRisk, o.ConfirmTimeout, confirmMetrics)
	// The pods of marked nodes, followed while the mark is there: the
	// confinement's answer without an API read per eviction.
	nodePods := nodepods.New(deps.confineMetadata)
	nodes.OnTerminatingChange(nodePods.SetFollowed)
	if err := ctrlmetrics.Registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "termgate", Subsystem: "webhook", Name: "followed_nodes",
		Help: "Marked nodes whose pods the webhook holds in memory for the agent confinement.",
	}, func() float64 { return float64(len(nodePods.Followed())) })); err != nil {
		return fmt.Errorf("register webhook metrics: %w", err)
	}
	limits := o.Limits
	reloader := certs.NewReloader(o.CertDir, clk)
	server := &webhook.Server{
		Handler: webhook.Handler(webhook.Config{
			Nodes:           confirmed,
			Pods:            webhook.APIPods{Client: deps.kube},
			AgentPods:       webhook.APIPods{Client: deps.confineKube},
			AgentPodLocator: nodePods,
			TaintEffect:     corev1.TaintEffect(o.TaintEffect),
			Agent:           confine.Options{Username: o.AgentUsername, DenyOnError: o.ConfineDenyOnError},
			MaxBodyBytes:    limits.MaxBodyBytes,
			Metrics:         metrics,
			Log:             logger,
			Clock:           clk,
		}),
		TLSConfig:       certs.ServerConfig(reloader.GetCertificate),
		ShutdownDelay:   o.ShutdownDelay,
		ShutdownTimeout: o.ShutdownTimeout,
		Clock:           clk,
		Limits:          limits,
		Metrics:         metrics,
	}
	checks := []webhook.Check{
		{Name: "serving-certificate", Fn: reloader.Loaded},
		{Name: "node-cache", Fn: func() error {
			if !nodes.HasSynced() {
				return errors.New("node cache not synced")
			}
			return nil
		}},
		{Name: "shutdown", Fn: server.Draining},
	}

	ln, err := daemon.Listen(o.BindAddress)
	if err != nil {
		return err
	}
	g, ctx := daemon.NewGroup(ctx)
	g.Go("node cache", func() error { return nodes.Start(ctx) })
	g.Go("node pods", func() error { return nodePods.Start(ctx) })
	g.Go("certificate reloader", func() error { return reloader.Start(ctx) })
	checks = append(checks, startCertSource(ctx, g, o, deps, clk)...)
	if o.HealthAddress != "0" && o.HealthAddress != "" {
		if err := serveOn(ctx, g, "health probes", o.HealthAddress, webhook.Probes(checks)); err != nil {
			return errors.Join(err, g.Wait())
		}
	}
	if o.MetricsAddr != "0" && o.MetricsAddr != "" {
		mm := http.NewServeMux()
		mm.Handle("/metrics", promhttp.HandlerFor(ctrlmetrics.Registry, promhttp.HandlerOpts{}))
		if err := serveOn(ctx, g, "metrics", o.MetricsAddr, mm); err != nil {
			return errors.Join(err, g.Wait())
		}
	}
	g.Go("webhook server", func() error { return server.Serve(ctx, ln) })
	return g.Wait()
}

// serveOn listens on addr now and serves h in the group until ctx ends.
func serveOn(ctx context.Context, g *daemon.Group, name, addr string, h http.Handler) error {
	ln, err := daemon.Listen(addr)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	g.Go(name, func() error { return daemon.ServeHTTP(ctx, ln, h) })
	return nil
}

// startCertSource starts what provides the serving pair in the chosen mode
// and returns the readiness checks it adds.
func startCertSource(ctx context.Context, g *daemon.Group, o *WebhookOptions, deps *webhookDeps, clk clock.Clock) []webhook.Check {
	switch o.CertMode {
	case CertModeSelfManaged:
		syncer := selfmanaged.NewSyncer(deps.kube, o.Namespace, o.CertSecret, o.CertDir, o.CertSyncInterval, clk)
		g.Go("certificate syncer", func() error { syncer.Run(ctx); return nil })
		rotator := selfmanaged.NewRotator(deps.kube, o.rotatorOptions(), clk)
		rotator.OnSecretWritten(syncer.Kick)
		lo := selfmanaged.LeaderOptions{
			Namespace: o.Namespace, LeaseName: o.LeaseName, Identity: identity(),
			LeaseDuration: o.LeaseDuration, RenewDeadline: o.LeaseRenewDeadline, RetryPeriod: o.LeaseRetryPeriod,
		}
		g.Go("certificate leader", func() error { return selfmanaged.RunLeader(ctx, deps.lease, lo, rotator.Run) })
	case CertModeCertManager:
		// Followed by a watch; the retry applies after a failed read.
		st := certmanager.New(deps.ctrl, types.NamespacedName{Namespace: o.Namespace, Name: o.CertificateName}, 5*time.Second, clk)
		g.Go("cert-manager status", func() error { st.Run(ctx); return nil })
		return []webhook.Check{{Name: "cert-manager-certificate", Fn: st.Ready}}
	}
	return nil
}

// identity names this replica in the lease: the pod name when set.
func identity() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h + "_" + rand.String(6)
}
