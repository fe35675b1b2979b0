// Command cert-manager runs the part of cert-manager v1.21.2 that termgate's
// cert-manager overlay relies on, built from cert-manager's own packages, as
// one process for the local test cluster:
//
//   - the certificates controllers (trigger, key manager, request manager,
//     issuing, readiness, revision manager), which turn a Certificate into a
//     CertificateRequest and the signed pair into its Secret;
//   - the CertificateRequest approver and the CA and SelfSigned issuers;
//   - the issuers and clusterissuers controllers, which set Issuer Ready;
//   - the CA injector for Validating- and MutatingWebhookConfigurations
//     (the cert-manager.io/inject-ca-from annotation).
//
// ACME, Vault and Venafi, the CertificateSigningRequest signers, the
// ingress/gateway shims, the metrics controller, cert-manager's own webhook
// and leader election are left out: the overlay uses none of them, and
// leaving their packages unimported keeps them out of the binary (the
// controllers and issuer types register themselves from init()).
//
// Upstream's main packages (cmd/controller, cmd/cainjector) are separate Go
// modules that the module proxy does not serve, so this small main wires the
// library packages the way they do.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	cmutil "github.com/cert-manager/cert-manager/pkg/util"

	// Each import registers one controller (or issuer type) from init().
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

type options struct {
	kubeconfig               string
	namespace                string
	clusterResourceNamespace string
	workers                  int
	qps                      float64
	burst                    int
	cainjector               bool
}

func main() {
	o := options{}
	fs := flag.NewFlagSet("cert-manager", flag.ExitOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig (required: this binary runs outside the cluster).")
	fs.StringVar(&o.namespace, "namespace", "", "Only watch this namespace; empty watches all.")
	fs.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "kube-system", "Namespace holding the Secrets ClusterIssuers refer to.")
	fs.IntVar(&o.workers, "concurrent-workers", 5, "Workers per controller.")
	fs.Float64Var(&o.qps, "kube-api-qps", 50, "Client QPS when the API server has no priority and fairness.")
	fs.IntVar(&o.burst, "kube-api-burst", 100, "Client burst when the API server has no priority and fairness.")
	fs.BoolVar(&o.cainjector, "cainjector", true, "Run the CA injector for webhook configurations.")
	klog.InitFlags(fs) // -v and friends, as upstream's binaries accept them
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cert-manager: unexpected arguments %v\n", fs.Args())
		os.Exit(2)
	}
	if o.kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "cert-manager: --kubeconfig is required")
		os.Exit(2)
	}
	klog.EnableContextualLogging(true)
	logger := klog.Background()
	ctrl.SetLogger(logger)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = klog.NewContext(ctx, logger)
	if err := run(ctx, o); err != nil {
		logger.Error(err, "cert-manager stopped")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

// controllers are the names this binary runs, checked against what the
// imports registered so that a renamed controller fails loudly at start.
var controllers = []string{
	"certificates-trigger",
	"certificates-key-manager",
	"certificates-request-manager",
	"certificates-issuing",
	"certificates-readiness",
	"certificates-revision-manager",
	"certificaterequests-approver",
	"certificaterequests-issuer-ca",
	"certificaterequests-issuer-selfsigned",
	"issuers",
	"clusterissuers",
}

// run starts every component; the first to fail stops the rest.
func run(ctx context.Context, o options) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	goRun := func(name string, fn func() error) {
		wg.Go(func() {
			if err := fn(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
				cancel()
			}
		})
	}
	if err := startControllers(ctx, o, goRun); err != nil {
		cancel()
		wg.Wait()
		return err
	}
	if o.cainjector {
		mgr, err := newCAInjector(ctx, o)
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		goRun("cainjector", func() error { return mgr.Start(ctx) })
	}
	klog.FromContext(ctx).Info("cert-manager running", "controllers", controllers, "cainjector", o.cainjector)
	wg.Wait()
	return errors.Join(errs...)
}

// startControllers builds each controller from the shared context factory,
// then starts the informer factories they registered with, as upstream's
// controller binary does.
func startControllers(ctx context.Context, o options, goRun func(string, func() error)) error {
	known := controllerpkg.Known()
	for _, name := range controllers {
		if _, ok := known[name]; !ok {
			return fmt.Errorf("controller %q is not registered by this build (registered: %s)", name, strings.Join(sortedNames(known), ", "))
		}
	}
	for name := range known {
		if !slices.Contains(controllers, name) {
			return fmt.Errorf("controller %q is linked in but not meant to run: remove its import", name)
		}
	}
	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         o.kubeconfig,
		KubernetesAPIQPS:   float32(o.qps),
		KubernetesAPIBurst: o.burst,
		Namespace:          o.namespace,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: o.clusterResourceNamespace,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			// upstream's defaults for --certificate-request-minimum-backoff-duration
			// and its maximum.
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}
	for _, name := range controllers {
		c, err := known[name](factory)
		if err != nil {
			return fmt.Errorf("build controller %s: %w", name, err)
		}
		goRun(name, func() error { return c.Run(o.workers, ctx) })
	}
	// The constructors registered their informers with the factories that
	// every Context shares; starting them now begins the watches.
	shared, err := factory.Build()
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	return nil
}

// newCAInjector sets up a controller-runtime manager with cert-manager's
// injectors for webhook configurations only: termgate ships no APIService
// and no CRD conversion webhook.
func newCAInjector(ctx context.Context, o options) (ctrl.Manager, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("cainjector: load kubeconfig: %w", err)
	}
	cfg = cmutil.RestConfigWithUserAgent(cfg, "cainjector")
	cfg.QPS, cfg.Burst = float32(o.qps), o.burst
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("cainjector scheme: %w", err)
		}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
		Client: client.Options{Cache: &client.CacheOptions{
			// The injectors watch Secrets by metadata only and read the one
			// they need directly, as upstream's cainjector does.
			DisableFor: []client.Object{&corev1.Secret{}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("cainjector manager: %w", err)
	}
	err = cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		Namespace:                    o.namespace,
		EnableCertificatesDataSource: true,
		EnabledReconcilersFor: map[string]bool{
			cainjector.ValidatingWebhookConfigurationName: true,
			cainjector.MutatingWebhookConfigurationName:   true,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cainjector: %w", err)
	}
	return mgr, nil
}

func sortedNames(m map[string]controllerpkg.Constructor) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
