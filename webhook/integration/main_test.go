// Package integration runs termgate's webhook in-process against a real
// local control plane (kube-apiserver, scheduler, controller-manager, kwok
// nodes), registered through the webhook configuration that ships in
// manifests/base with only its clientConfig pointed at the local server.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"net/http"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/nodepods"
	"termgate.dev/termgate/webhook/review"
)

const agentUser = "system:serviceaccount:termgate:termgate-agent"

var (
	env *cluster.Cluster
	wh  *runningWebhook
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// certwatcher logs through controller-runtime's global logger.
	ctrllog.SetLogger(logr.Discard())
	var stop func()
	code := testenv.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(3)}, &env, func(string) error {
		var err error
		wh, stop, err = startWebhook(env)
		if err != nil {
			return err
		}
		return wh.install(context.Background())
	})
	if stop != nil {
		stop()
	}
	if termgateBuild.dir != "" {
		_ = os.RemoveAll(termgateBuild.dir)
	}
	return code
}

// termgateBuild is termgate's binary, built once for the tests that run it
// as a process and removed when the package's tests end.
var termgateBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// termgateBinary builds cmd/termgate on first use and returns its path.
func termgateBinary(t *testing.T) string {
	t.Helper()
	b := &termgateBuild
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "termgate-webhook-integration-"); b.err != nil {
			return
		}
		b.path, b.err = localrun.Build(ctx(t), b.dir)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// runningWebhook is the webhook under test and what the tests steer.
type runningWebhook struct {
	client  kubernetes.Interface
	nodes   *nodecache.Cache
	pods    *nodepods.Cache
	certDir string
	addr    string
	caPEM   []byte
	// registry holds the webhook's metrics.
	registry *prometheus.Registry
	// handler serves the calls; a test may swap in another wiring.
	handler *swapHandler
}

// swapHandler lets a test replace the webhook's wiring for a while (the
// measurement of the old confinement path does).
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

func (s *swapHandler) swap(h http.Handler) http.Handler { return *s.h.Swap(&h) }

// confineClients returns the confinement's own clients, sharing one rate
// limiter as `termgate webhook` builds them.
func confineClients(c *cluster.Cluster) (kubernetes.Interface, metadata.Interface, error) {
	cfg := rest.CopyConfig(c.Config)
	cfg.QPS, cfg.Burst = 50, 100
	cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	mc, err := metadata.NewForConfig(cfg)
	return kc, mc, err
}

func startWebhook(c *cluster.Cluster) (*runningWebhook, func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	mc, err := metadata.NewForConfig(c.Config)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	confineKube, confineMeta, err := confineClients(c)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	atRisk, err := nodecache.ParseSelectors(nodecache.DefaultAtRisk)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w := &runningWebhook{client: c.Client, nodes: nodecache.New(mc, nodecache.SelectorLabelKeys(atRisk)), pods: nodepods.New(confineMeta),
		certDir: filepath.Join(c.Dir, "webhook-certs"), registry: prometheus.NewRegistry()}
	confirmMetrics, err := nodecache.NewConfirmMetrics(w.registry)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	confirmed := nodecache.NewConfirmer(w.nodes, mc.Resource(nodecache.NodesResource), atRisk, 500*time.Millisecond, confirmMetrics)
	w.nodes.OnTerminatingChange(w.pods.SetFollowed)
	pems, err := selfmanaged.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	if err := certs.WriteFiles(w.certDir, pems.Cert, pems.Key); err != nil {
		cancel()
		return nil, nil, err
	}
	w.caPEM = pems.CA
	srv, reloader, err := newServer(serverParts{nodes: confirmed, pods: w.pods, client: c.Client, confineClient: confineKube}, w.certDir, w.registry)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w.handler = &swapHandler{}
	wiring := srv.Handler
	w.handler.h.Store(&wiring)
	srv.Handler = w.handler
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w.addr = ln.Addr().String()
	done := make(chan struct{}, 4)
	go func() { _ = reloader.Start(ctx); done <- struct{}{} }()
	go func() { _ = w.nodes.Start(ctx); done <- struct{}{} }()
	go func() { _ = w.pods.Start(ctx); done <- struct{}{} }()
	go func() { _ = srv.Serve(ctx, ln); done <- struct{}{} }()
	stop := func() {
		cancel()
		for range 4 {
			<-done
		}
	}
	err = kit.Poll(ctx, 30*time.Second, func(context.Context) (bool, string, error) {
		if reloader.Loaded() != nil || !w.nodes.HasSynced() {
			return false, "certificate or node cache not ready", nil
		}
		return true, "", nil
	})
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("webhook not ready: %w", err)
	}
	return w, stop, nil
}

// serverParts are the caches and clients a webhook server reads.
type serverParts struct {
	nodes         nodecache.Lookup
	pods          *nodepods.Cache
	client        kubernetes.Interface
	confineClient kubernetes.Interface
}

// newServer wires the webhook the way `termgate webhook` does, serving the
// certificate in certDir and counting decisions in registry.
func newServer(p serverParts, certDir string, registry *prometheus.Registry) (*webhook.Server, *certs.Reloader, error) {
	metrics, err := review.NewMetrics(registry)
	if err != nil {
		return nil, nil, err
	}
	reloader := certs.NewReloader(certDir, clock.RealClock{})
	return &webhook.Server{
		Handler: webhook.Handler(webhook.Config{
			Nodes: p.nodes, Pods: webhook.APIPods{Client: p.client},
			AgentPods: webhook.APIPods{Client: p.confineClient}, AgentPodLocator: p.pods,
			TaintEffect: corev1.TaintEffectNoSchedule,
			Agent:       confine.Options{Username: agentUser}, Metrics: metrics, Log: logr.Discard(), Clock: clock.RealClock{},
		}),
		TLSConfig: certs.ServerConfig(reloader.GetCertificate),
		Clock:     clock.RealClock{},
		Limits:    webhook.DefaultLimits(),
		Metrics:   metrics,
	}, reloader, nil
}

// shippedConfigurations reads the configurations in manifests/base.
func shippedConfigurations() (*localrun.WebhookConfigurations, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	return localrun.LoadWebhookConfigurations(filepath.Join(root, "manifests", "base"))
}

// install registers the shipped configurations (pointed at addr) and the
// shipped ValidatingAdmissionPolicy, and waits until the API server calls
// the webhook.
func (w *runningWebhook) install(ctx context.Context) error {
	if err := w.register(ctx, w.addr, w.caPEM); err != nil {
		return err
	}
	if err := installPolicy(ctx, w.client); err != nil {
		return err
	}
	return w.waitStamping(ctx)
}

func (w *runningWebhook) register(ctx context.Context, addr string, caPEM []byte) error {
	c, err := shippedConfigurations()
	if err != nil {
		return err
	}
	c.PointAt("https://"+addr, caPEM)
	return c.Register(ctx, w.client)
}

// restoreRegistrationsAtEnd points the shipped registrations back at this
// webhook when t ends and waits until the API server calls it again, for a
// test that points them elsewhere or lets a process take them over.
func (w *runningWebhook) restoreRegistrationsAtEnd(t *testing.T) {
	t.Cleanup(func() {
		if err := w.register(context.Background(), w.addr, w.caPEM); err != nil {
			t.Errorf("re-register webhook: %v", err)
		}
		if err := w.waitStamping(context.Background()); err != nil {
			t.Errorf("webhook not back: %v", err)
		}
	})
}

func installPolicy(ctx context.Context, client kubernetes.Interface) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(root, "manifests", "base", "webhook-agent-policy.yaml"))
	if err != nil {
		return err
	}
	docs := strings.Split(string(data), "\n---\n")
	p := &admissionregistrationv1.ValidatingAdmissionPolicy{}
	b := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	if err := yaml.UnmarshalStrict([]byte(docs[0]), p); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), b); err != nil {
		return fmt.Errorf("policy binding: %w", err)
	}
	adm := client.AdmissionregistrationV1()
	if _, err := adm.ValidatingAdmissionPolicies().Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create policy: %w", err)
	}
	if _, err := adm.ValidatingAdmissionPolicyBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create policy binding: %w", err)
	}
	return nil
}

// waitStamping creates dry-run pods until one comes back stamped, which
// proves the API server reaches the webhook with the current CA bundle.
func (w *runningWebhook) waitStamping(ctx context.Context) error {
	pod := kit.Pod("default", "probe")
	return kit.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, string, error) {
		got, err := w.client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err.Error(), nil
		}
		_, ok := got.Annotations[nodemark.AnnotationDefaultDrainOrder]
		return ok, "pod not stamped", nil
	})
}

// servedCert returns the leaf the webhook presents now.
func servedCert(t *testing.T, addr string) []byte {
	t.Helper()
	conn, err := tlsDial(addr)
	if err != nil {
		t.Fatalf("dial webhook: %v", err)
	}
	defer conn.Close()
	return bytes.Clone(conn.ConnectionState().PeerCertificates[0].Raw)
}
