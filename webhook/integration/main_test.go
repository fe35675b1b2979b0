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
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/utils/clock"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/nodecache"
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
	code := kit.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(3)}, &env, func(string) error {
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
	return code
}

// runningWebhook is the webhook under test and what the tests steer.
type runningWebhook struct {
	client  kubernetes.Interface
	nodes   *nodecache.Cache
	certDir string
	addr    string
	caPEM   []byte
}

func startWebhook(c *cluster.Cluster) (*runningWebhook, func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	mc, err := metadata.NewForConfig(c.Config)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w := &runningWebhook{client: c.Client, nodes: nodecache.New(mc), certDir: filepath.Join(c.Dir, "webhook-certs")}
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
	metrics, err := review.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		cancel()
		return nil, nil, err
	}
	reloader := certs.NewReloader(w.certDir, clock.RealClock{})
	srv := &webhook.Server{
		Handler: webhook.Handler(webhook.Config{
			Nodes: w.nodes, Pods: webhook.APIPods{Client: c.Client}, TaintEffect: corev1.TaintEffectNoSchedule,
			Agent: confine.Options{Username: agentUser}, Metrics: metrics, Log: logr.Discard(), Clock: clock.RealClock{},
		}),
		TLSConfig: certs.ServerConfig(reloader.GetCertificate),
		Clock:     clock.RealClock{},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w.addr = ln.Addr().String()
	done := make(chan struct{}, 3)
	go func() { _ = reloader.Start(ctx); done <- struct{}{} }()
	go func() { _ = w.nodes.Start(ctx); done <- struct{}{} }()
	go func() { _ = srv.Serve(ctx, ln); done <- struct{}{} }()
	stop := func() {
		cancel()
		for range 3 {
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

// shippedConfigurations reads manifests/base/webhook-configurations.yaml.
func shippedConfigurations() (*admissionregistrationv1.ValidatingWebhookConfiguration, *admissionregistrationv1.MutatingWebhookConfiguration, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(filepath.Join(root, "manifests", "base", "webhook-configurations.yaml"))
	if err != nil {
		return nil, nil, err
	}
	docs := strings.Split(string(data), "\n---\n")
	if len(docs) != 2 {
		return nil, nil, fmt.Errorf("webhook-configurations.yaml: %d documents, want 2", len(docs))
	}
	v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	m := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := yaml.UnmarshalStrict([]byte(docs[0]), v); err != nil {
		return nil, nil, fmt.Errorf("validating configuration: %w", err)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), m); err != nil {
		return nil, nil, fmt.Errorf("mutating configuration: %w", err)
	}
	return v, m, nil
}

// pointAt rewrites every clientConfig to https://addr<path> with caPEM.
func pointAt(v *admissionregistrationv1.ValidatingWebhookConfiguration, m *admissionregistrationv1.MutatingWebhookConfiguration, addr string, caPEM []byte) {
	rewrite := func(cc *admissionregistrationv1.WebhookClientConfig) {
		url := "https://" + addr + *cc.Service.Path
		cc.URL, cc.Service, cc.CABundle = &url, nil, caPEM
	}
	for i := range v.Webhooks {
		if v.Webhooks[i].ClientConfig.Service != nil {
			rewrite(&v.Webhooks[i].ClientConfig)
		}
	}
	for i := range m.Webhooks {
		if m.Webhooks[i].ClientConfig.Service != nil {
			rewrite(&m.Webhooks[i].ClientConfig)
		}
	}
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
	v, m, err := shippedConfigurations()
	if err != nil {
		return err
	}
	pointAt(v, m, addr, caPEM)
	adm := w.client.AdmissionregistrationV1()
	if old, err := adm.ValidatingWebhookConfigurations().Get(ctx, v.Name, metav1.GetOptions{}); err == nil {
		v.ResourceVersion = old.ResourceVersion
		_, err = adm.ValidatingWebhookConfigurations().Update(ctx, v, metav1.UpdateOptions{})
		if err != nil {
			return err
		}
	} else if _, err := adm.ValidatingWebhookConfigurations().Create(ctx, v, metav1.CreateOptions{}); err != nil {
		return err
	}
	if old, err := adm.MutatingWebhookConfigurations().Get(ctx, m.Name, metav1.GetOptions{}); err == nil {
		m.ResourceVersion = old.ResourceVersion
		_, err = adm.MutatingWebhookConfigurations().Update(ctx, m, metav1.UpdateOptions{})
		return err
	}
	_, err = adm.MutatingWebhookConfigurations().Create(ctx, m, metav1.CreateOptions{})
	return err
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
		_, ok := got.Annotations["termgate.dev/drain-order"]
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
