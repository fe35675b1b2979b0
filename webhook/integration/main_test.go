// Package integration runs termgate's webhook in-process against a real
// local control plane (kube-apiserver, scheduler, controller-manager, kwok
// nodes), registered through the webhook configuration that ships in
// manifests/static/self-managed with only its clientConfig pointed at the local server.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"net/http"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/testenv"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/nodepods"
)

const agentUser = "system:serviceaccount:" + localrun.AgentNamespace + ":" + localrun.AgentServiceAccount

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
	replica *webhook.Webhook
	nodes   *nodecache.Cache
	pods    *nodepods.Index
	certDir string
	addr    string
	caPEM   []byte
	// registry holds the webhook's metrics.
	registry *prometheus.Registry
	// handler serves the calls; a test may swap in another wiring.
	handler *swapHandler
}

// swapHandler lets a test replace the webhook's wiring for a while (the
// stale-cache test does).
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

func (s *swapHandler) swap(h http.Handler) http.Handler { return *s.h.Swap(&h) }

// replicaClients are the clients `termgate webhook` builds, each with a
// rate limiter of its own and the binary's default budgets.
func replicaClients(c *cluster.Cluster) (webhook.Clients, error) {
	budget := func(qps float32, burst int) *rest.Config {
		cfg := rest.CopyConfig(c.Config)
		cfg.QPS, cfg.Burst = qps, burst
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
		return cfg
	}
	var out webhook.Clients
	var err error
	if out.Kube, err = kubernetes.NewForConfig(budget(20, 40)); err != nil {
		return out, err
	}
	for _, m := range []struct {
		dst   *metadata.Interface
		qps   float32
		burst int
	}{{&out.Metadata, 20, 40}, {&out.BindRereads, 100, 200}, {&out.PinnedRereads, 20, 40}, {&out.ConfineLists, 50, 100}, {&out.ConfineReads, 50, 100}} {
		if *m.dst, err = metadata.NewForConfig(budget(m.qps, m.burst)); err != nil {
			return out, err
		}
	}
	return out, nil
}

// replicaOptions are the binary's defaults for a replica serving certDir.
func replicaOptions(certDir string) (webhook.Options, error) {
	atRisk, err := nodecache.ParseSelectors(nodecache.DefaultAtRisk)
	if err != nil {
		return webhook.Options{}, err
	}
	return webhook.Options{
		TaintEffect: corev1.TaintEffectNoSchedule, AgentUsername: agentUser,
		ConfirmSelectors: atRisk, ConfirmTimeout: 500 * time.Millisecond,
		Limits: webhook.DefaultLimits(), CertDir: certDir,
	}, nil
}

// newReplica assembles a replica the way `termgate webhook` does, through
// webhook.New, counting its metrics in registry.
func newReplica(c *cluster.Cluster, certDir string, certSource webhook.CertSource, registry *prometheus.Registry) (*webhook.Webhook, error) {
	clients, err := replicaClients(c)
	if err != nil {
		return nil, err
	}
	opts, err := replicaOptions(certDir)
	if err != nil {
		return nil, err
	}
	return webhook.New(opts, clients, certSource, registry, testLogger(), clock.RealClock{})
}

func startWebhook(c *cluster.Cluster) (*runningWebhook, func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &runningWebhook{client: c.Client, certDir: filepath.Join(c.Dir, "webhook-certs"), registry: prometheus.NewRegistry()}
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
	if w.replica, err = newReplica(c, w.certDir, nil, w.registry); err != nil {
		cancel()
		return nil, nil, err
	}
	w.nodes, w.pods = w.replica.Nodes(), w.replica.Pods()
	w.handler = &swapHandler{}
	wiring := w.replica.Server().Handler
	w.handler.h.Store(&wiring)
	w.replica.Server().Handler = w.handler
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { _ = w.replica.Run(ctx, ln); close(done) }()
	stop := func() {
		cancel()
		<-done
	}
	err = kit.Poll(ctx, 30*time.Second, func(context.Context) (bool, string, error) {
		for _, ch := range w.replica.Checks() {
			if err := ch.Fn(); err != nil {
				return false, ch.Name + ": " + err.Error(), nil
			}
		}
		return true, "", nil
	})
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("webhook not ready: %w", err)
	}
	return w, stop, nil
}

// shippedConfigurations reads the configurations in manifests/static/self-managed.
func shippedConfigurations() (*localrun.WebhookConfigurations, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	return localrun.LoadWebhookConfigurations(filepath.Join(root, "manifests", manifest.StaticDir))
}

// install registers the shipped configurations (pointed at addr) and the
// agent's shipped ValidatingAdmissionPolicies, and waits until the API
// server calls the webhook.
func (w *runningWebhook) install(ctx context.Context) error {
	if err := w.register(ctx, w.addr, w.caPEM); err != nil {
		return err
	}
	if err := installPolicies(ctx, env); err != nil {
		return err
	}
	if err := localrun.WaitAgentPoliciesEnforced(ctx, env); err != nil {
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

// installPolicies applies the agent's shipped ValidatingAdmissionPolicies
// (its Node patches and its pod deletes), as they are.
func installPolicies(ctx context.Context, c *cluster.Cluster) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	for _, f := range []string{"agent-node-policy.yaml", "agent-delete-policy.yaml"} {
		if err := manifest.ApplyFile(ctx, c.Config, filepath.Join(root, "manifests", manifest.StaticDir, f)); err != nil {
			return err
		}
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

// testLogger logs the replicas' decisions to stderr when TERMGATE_TEST_LOG
// is set, for debugging a failing run; else nothing.
func testLogger() logr.Logger {
	if os.Getenv("TERMGATE_TEST_LOG") == "" {
		return logr.Discard()
	}
	return logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-2)}))
}
