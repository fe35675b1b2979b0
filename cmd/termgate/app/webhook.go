package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

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

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"termgate.dev/termgate/certs/certmanager"
	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/cmd/termgate/daemon"
	"termgate.dev/termgate/webhook"
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
	if err := o.Complete(); err != nil {
		return fmt.Errorf("webhook: %w", err)
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
	if o.ConfineDenyOnError {
		logger.Info("--confine-deny-on-error is deprecated and has no effect: the agent confinement always fails closed")
	}
	return serveWebhook(log.IntoContext(ctx, logger), o, clock.RealClock{})
}

// webhookDeps are the clients serveWebhook builds from the options.
type webhookDeps struct {
	clients webhook.Clients
	kube    kubernetes.Interface
	lease   kubernetes.Interface
	ctrl    client.WithWatch
	// config is the plain client configuration; the metrics
	// authentication copies it with a budget of its own.
	config *rest.Config
}

func newWebhookDeps(o *WebhookOptions) (*webhookDeps, error) {
	cfg, err := o.Client.Config("termgate-webhook")
	if err != nil {
		return nil, err
	}
	d := &webhookDeps{config: rest.CopyConfig(cfg)}
	if d.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d.clients.Kube = d.kube
	if d.clients.Metadata, err = metadata.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("metadata client: %w", err)
	}
	// Each concern reads on a budget of its own (see webhook.Clients).
	for _, b := range []struct {
		dst       *metadata.Interface
		qps       float64
		burst     int
		userAgent string
		purpose   string
	}{
		{&d.clients.BindRereads, o.ConfirmQPS, o.ConfirmBurst, "termgate-webhook-confirm", "node re-reads before binds"},
		{&d.clients.PinnedRereads, o.PinnedConfirmQPS, o.PinnedConfirmBurst, "termgate-webhook-confirm-pinned", "node re-reads before pinned pods"},
		{&d.clients.ConfineLists, o.ConfineQPS, o.ConfineBurst, "termgate-webhook-confine", "pod lists of draining nodes"},
		{&d.clients.ConfineReads, o.ConfineReadQPS, o.ConfineReadBurst, "termgate-webhook-confine-reads", "the confinement's single reads"},
	} {
		if *b.dst, err = metadata.NewForConfig(withBudget(cfg, b.qps, b.burst, b.userAgent)); err != nil {
			return nil, fmt.Errorf("client for %s: %w", b.purpose, err)
		}
	}
	if d.lease, err = kubernetes.NewForConfig(withBudget(cfg, o.Election.QPS, o.Election.Burst, cfg.UserAgent)); err != nil {
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

// withBudget copies cfg with a rate limiter of its own: each of the
// webhook's concerns gets its own budget, so none can starve another.
func withBudget(cfg *rest.Config, qps float64, burst int, userAgent string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst, c.UserAgent = float32(qps), burst, userAgent
	c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	return c
}

// serveWebhook runs every component until ctx ends or one fails.
func serveWebhook(ctx context.Context, o *WebhookOptions, clk clock.WithTicker) error {
	deps, err := newWebhookDeps(o)
	if err != nil {
		return err
	}
	wo := o.webhookOptions()
	reg, err := daemon.NewRegistry()
	if err != nil {
		return err
	}
	w, err := webhook.New(wo, deps.clients, newCertSource(o, deps, clk), reg, log.FromContext(ctx), clk)
	if err != nil {
		return err
	}
	ln, err := daemon.Listen(o.BindAddress)
	if err != nil {
		return err
	}
	g, ctx := daemon.NewGroup(ctx)
	if o.Serving.ProbesEnabled() {
		pln, err := daemon.Listen(o.Serving.ProbeAddress)
		if err != nil {
			return errors.Join(fmt.Errorf("probes: %w", err), g.Wait())
		}
		var ready []daemon.Check
		for _, c := range w.Checks() {
			ready = append(ready, daemon.Check{Name: c.Name, Fn: c.Fn})
		}
		probes := daemon.Server{Name: "probes", Handler: daemon.Probes(nil, ready), Limits: daemon.ProbeLimits()}
		g.Go("health probes", func() error { return probes.Serve(ctx, pln) })
	}
	if o.Serving.Metrics.Enabled() {
		m, err := daemon.NewMetricsServer(ctx, o.Serving.Metrics, deps.config, daemon.Gatherer(reg), reg, clk)
		if err != nil {
			return errors.Join(err, g.Wait())
		}
		log.FromContext(ctx).Info("Serving metrics", "address", m.Addr().String(), "secure", o.Serving.Metrics.Secure)
		g.Go("metrics", func() error { return m.Run(ctx) })
	}
	g.Go("webhook", func() error { return w.Run(ctx, ln) })
	return g.Wait()
}

// newCertSource returns the certificate source of the chosen mode; nil in
// files mode, where something else writes --cert-dir.
func newCertSource(o *WebhookOptions, deps *webhookDeps, clk clock.Clock) webhook.CertSource {
	switch o.CertMode {
	case CertModeSelfManaged:
		return selfmanaged.NewSource(deps.kube, deps.lease, selfmanaged.SourceOptions{
			Rotator: o.rotatorOptions(),
			Leader: selfmanaged.LeaderOptions{
				Namespace: o.Namespace, LeaseName: o.Election.LeaseName, Identity: identity(),
				LeaseDuration: o.Election.LeaseDuration, RenewDeadline: o.Election.RenewDeadline, RetryPeriod: o.Election.RetryPeriod,
			},
			Dir:          o.CertDir,
			SyncInterval: o.CertSyncInterval,
		}, clk)
	case CertModeCertManager:
		// Followed by a watch; the retry applies after a failed read.
		return certManagerSource{certmanager.New(deps.ctrl, types.NamespacedName{Namespace: o.Namespace, Name: o.CertificateName}, 5*time.Second, clk)}
	}
	return nil
}

// certManagerSource follows the serving Certificate that cert-manager
// issues into the Secret mounted at --cert-dir.
type certManagerSource struct{ *certmanager.Status }

func (s certManagerSource) Run(ctx context.Context) error { s.Status.Run(ctx); return nil }

// identity names this replica in the lease: the pod name when set.
func identity() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h + "_" + rand.String(6)
}
