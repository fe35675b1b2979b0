package localrun

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"path/filepath"
	"strconv"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/proc"
)

// WebhookSpec says how to start the webhook.
type WebhookSpec struct {
	Binary     string
	Dir        string // log and certificate directory
	Kubeconfig string
	// Client registers the webhook configurations.
	Client kubernetes.Interface
	// Manifests holds the shipped webhook configurations; defaults to the
	// repository's manifests/static/self-managed.
	Manifests string
	// Namespace holds the webhook's certificate Secret and lease; created
	// if missing. Defaults to termgate.
	Namespace string
	Flags     []string // extra flags
	// Env is added to the process's environment after the Deployment's.
	Env []string
	// Unshipped starts the webhook without the Deployment's arguments and
	// environment: only for a test about the binary's defaults.
	Unshipped bool
	// URL is the scheme and host the configurations call; defaults to the
	// webhook's own address. Replicas behind one balancer share it.
	URL string
	// Registered says the configurations are in place already (another
	// replica registered them): registering again would clear the CA
	// bundle the leader injected.
	Registered bool
}

// Webhook is one running `termgate webhook` process, registered with the
// API server through the shipped configurations, rewritten to call it on
// loopback.
type Webhook struct {
	// Addr is the host:port of the HTTPS admission server.
	Addr string
	// HealthAddr serves /healthz and /readyz.
	HealthAddr string
	// MetricsAddr serves Prometheus /metrics over HTTPS to authorized
	// scrapers (MetricsReader).
	MetricsAddr string
	// ConfigName names the Validating- and MutatingWebhookConfiguration.
	ConfigName string

	client kubernetes.Interface
	proc   *proc.Process
}

// StartWebhook registers the shipped webhook configurations with a URL
// pointing at a free loopback port, starts the webhook with self-managed
// certificates for 127.0.0.1, and waits until it is ready and its CA is
// injected into every registered webhook.
func StartWebhook(ctx context.Context, s WebhookSpec) (*Webhook, error) {
	if s.Namespace == "" {
		s.Namespace = WebhookNamespace
	}
	if s.Manifests == "" {
		root, err := cluster.RepoRoot()
		if err != nil {
			return nil, err
		}
		s.Manifests = filepath.Join(root, "manifests", manifest.StaticDir)
	}
	configs, err := LoadWebhookConfigurations(s.Manifests)
	if err != nil {
		return nil, err
	}
	var shipped Container
	if !s.Unshipped {
		if shipped, err = ShippedWebhook(); err != nil {
			return nil, err
		}
	}
	return proc.RetryOnTakenPort(func() (*Webhook, error) { return startWebhookOnce(ctx, s, configs, shipped) })
}

func startWebhookOnce(ctx context.Context, s WebhookSpec, configs *WebhookConfigurations, shipped Container) (*Webhook, error) {
	ports, err := proc.FreePorts(3)
	if err != nil {
		return nil, err
	}
	w := &Webhook{
		Addr: "127.0.0.1:" + strconv.Itoa(ports[0]), HealthAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
		MetricsAddr: "127.0.0.1:" + strconv.Itoa(ports[2]), ConfigName: configs.Name, client: s.Client,
	}
	if err := kit.EnsureNamespace(ctx, s.Client, s.Namespace); err != nil {
		return nil, err
	}
	base := "https://" + w.Addr
	if s.URL != "" {
		base = s.URL
	}
	configs.PointAt(base, nil)
	if !s.Registered {
		if err := configs.Register(ctx, s.Client); err != nil {
			return nil, err
		}
	}
	// The Deployment's arguments first; then what differs on loopback,
	// each for its reason; then the test's own flags.
	args := append([]string{"webhook"}, shipped.Args...)
	args = append(args,
		"--kubeconfig="+s.Kubeconfig,
		"--bind-address="+w.Addr,
		"--health-probe-bind-address="+w.HealthAddr,
		"--metrics-bind-address="+w.MetricsAddr,
		"--namespace="+s.Namespace,
		"--cert-mode=self-managed",
		"--cert-dir="+filepath.Join(s.Dir, "webhook-certs"),
		"--cert-hosts=127.0.0.1",
		// The configurations registered, which a test may have renamed.
		"--webhook-config-name="+configs.Name,
		"--log-format=text",
		// Nothing load-balances to a loopback process: no need to keep
		// serving after turning not-ready.
		"--shutdown-delay=0s",
		// The local API server calls from loopback, its control-plane
		// range here.
		"--expected-peer-cidrs=127.0.0.0/8",
	)
	args = append(args, s.Flags...)
	env := append(shipped.Environ(), "POD_NAMESPACE="+s.Namespace, "POD_NAME=webhook-local")
	env = append(env, s.Env...)
	if w.proc, err = proc.Start(s.Dir, "webhook", env, s.Binary, args...); err != nil {
		w.unregister()
		return nil, err
	}
	if err := w.waitReady(ctx); err != nil {
		w.Stop()
		return nil, err
	}
	return w, nil
}

// StartWebhookWithOwnIdentity starts the webhook as a replica of the
// self-managed install runs: with its own service account's token under the
// shipped RBAC, CA-bundle policy and FlowSchema (NewWebhookIdentity), since
// an admin's requests would skip API priority and fairness and the policy.
// It sets s.Kubeconfig; s.Dir and s.Client default to c's.
func StartWebhookWithOwnIdentity(ctx context.Context, c *cluster.Cluster, s WebhookSpec) (*Webhook, error) {
	s, err := withOwnIdentity(ctx, c, s)
	if err != nil {
		return nil, err
	}
	w, err := StartWebhook(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("start webhook: %w", err)
	}
	return w, nil
}

// withOwnIdentity fills s's defaults from c and gives it the shipped
// service account's kubeconfig (self-managed certificates).
func withOwnIdentity(ctx context.Context, c *cluster.Cluster, s WebhookSpec) (WebhookSpec, error) {
	if s.Dir == "" {
		s.Dir = c.Dir
	}
	if s.Client == nil {
		s.Client = c.Client
	}
	kubeconfig, err := NewWebhookIdentity(ctx, IdentitySpec{Admin: c.Client, AdminConfig: c.Config, Dir: s.Dir, Manifests: s.Manifests}, CertSourceSelfManaged)
	if err != nil {
		return s, fmt.Errorf("the webhook's identity: %w", err)
	}
	s.Kubeconfig = kubeconfig
	return s, nil
}

// waitReady polls /readyz and the configurations' caBundle. Thirty seconds
// covers leader election, certificate generation and injection many times
// over; more means the webhook is broken.
func (w *Webhook) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: time.Second}
	var last string
	for {
		if gone, err := w.proc.Exited(); gone {
			return err
		}
		last = w.notReady(ctx, hc)
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("webhook not ready (%s; log: %s): %w", last, w.proc.LogPath(), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// notReady says what the webhook still lacks, or "" when it is ready.
func (w *Webhook) notReady(ctx context.Context, hc *http.Client) string {
	resp, err := hc.Get("http://" + w.HealthAddr + "/readyz?verbose")
	if err != nil {
		return "readyz: " + err.Error()
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "readyz: " + string(bytes.TrimSpace(body))
	}
	if missing := w.missingBundles(ctx); missing != "" {
		return "no CA bundle injected into " + missing
	}
	// The API server dials the same address with the injected CA; one
	// handshake here proves the serving certificate is in place.
	conn, err := tls.Dial("tcp", w.Addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only checks that TLS is served
	if err != nil {
		return "TLS: " + err.Error()
	}
	conn.Close()
	return ""
}

func (w *Webhook) missingBundles(ctx context.Context) string {
	v, err := w.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, w.ConfigName, metav1.GetOptions{})
	if err == nil {
		for _, h := range v.Webhooks {
			if len(h.ClientConfig.CABundle) == 0 {
				return h.Name
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return err.Error()
	}
	m, err := w.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, w.ConfigName, metav1.GetOptions{})
	if err == nil {
		for _, h := range m.Webhooks {
			if len(h.ClientConfig.CABundle) == 0 {
				return h.Name
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return err.Error()
	}
	return ""
}

// Stop ends the webhook and removes its configurations, so the API server
// stops calling an address nothing serves.
func (w *Webhook) Stop() {
	w.unregister()
	w.proc.Stop(5 * time.Second)
}

func (w *Webhook) unregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = (&WebhookConfigurations{Name: w.ConfigName}).Unregister(ctx, w.client)
}

// Exited returns an error if the webhook process has ended.
func (w *Webhook) Exited() error {
	if gone, err := w.proc.Exited(); gone {
		return err
	}
	return nil
}

// PID is the webhook's process id (for its memory use in /proc).
func (w *Webhook) PID() int { return w.proc.PID() }

// LogPath is the webhook's log file.
func (w *Webhook) LogPath() string { return w.proc.LogPath() }

// WebhookConfigurations are the shipped admission registrations.
type WebhookConfigurations struct {
	// Name is shared by both configurations: the webhook injects its CA
	// into the configurations of that name.
	Name       string
	Validating *admissionv1.ValidatingWebhookConfiguration
	Mutating   *admissionv1.MutatingWebhookConfiguration
}

// LoadWebhookConfigurations reads every YAML file of dir and keeps the
// Validating- and MutatingWebhookConfiguration.
func LoadWebhookConfigurations(dir string) (*WebhookConfigurations, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("list manifests in %s: %w", dir, err)
	}
	c := &WebhookConfigurations{}
	for _, f := range files {
		if err := c.load(f); err != nil {
			return nil, err
		}
	}
	if c.Validating == nil && c.Mutating == nil {
		return nil, fmt.Errorf("no webhook configuration in %s", dir)
	}
	if c.Validating != nil && c.Mutating != nil && c.Validating.Name != c.Mutating.Name {
		return nil, fmt.Errorf("webhook configurations named %q and %q: the webhook injects its CA into one name", c.Validating.Name, c.Mutating.Name)
	}
	return c, nil
}

func (c *WebhookConfigurations) load(file string) error {
	objs, err := manifest.ReadFile(file)
	if err != nil {
		return err
	}
	for _, u := range objs {
		switch u.GetKind() {
		case "ValidatingWebhookConfiguration":
			c.Validating = &admissionv1.ValidatingWebhookConfiguration{}
			err = manifest.Into(u, c.Validating)
			c.Name = c.Validating.Name
		case "MutatingWebhookConfiguration":
			c.Mutating = &admissionv1.MutatingWebhookConfiguration{}
			err = manifest.Into(u, c.Mutating)
			c.Name = c.Mutating.Name
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
	return nil
}

// PointAt replaces every webhook's Service reference by a URL on base
// (scheme and host), keeping its path, and sets the CA bundle (nil leaves it
// for the webhook to inject).
func (c *WebhookConfigurations) PointAt(base string, caBundle []byte) {
	url := func(cc *admissionv1.WebhookClientConfig) {
		// The path of the Service reference, or of the URL an earlier
		// PointAt wrote: pointing again moves only the host.
		path := ""
		switch {
		case cc.Service != nil && cc.Service.Path != nil:
			path = *cc.Service.Path
		case cc.URL != nil:
			if u, err := neturl.Parse(*cc.URL); err == nil {
				path = u.Path
			}
		}
		u := base + path
		cc.Service, cc.URL, cc.CABundle = nil, &u, caBundle
	}
	if c.Validating != nil {
		for i := range c.Validating.Webhooks {
			url(&c.Validating.Webhooks[i].ClientConfig)
		}
	}
	if c.Mutating != nil {
		for i := range c.Mutating.Webhooks {
			url(&c.Mutating.Webhooks[i].ClientConfig)
		}
	}
}

// Unregister deletes both configurations of c.Name; missing ones are not
// an error.
func (c *WebhookConfigurations) Unregister(ctx context.Context, client kubernetes.Interface) error {
	api := client.AdmissionregistrationV1()
	if err := api.ValidatingWebhookConfigurations().Delete(ctx, c.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove ValidatingWebhookConfiguration %s: %w", c.Name, err)
	}
	if err := api.MutatingWebhookConfigurations().Delete(ctx, c.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove MutatingWebhookConfiguration %s: %w", c.Name, err)
	}
	return nil
}

// Register creates the configurations, or updates those of the same name
// left by an earlier run or registration.
func (c *WebhookConfigurations) Register(ctx context.Context, client kubernetes.Interface) error {
	api := client.AdmissionregistrationV1()
	if c.Validating != nil {
		v := c.Validating.DeepCopy()
		_, err := api.ValidatingWebhookConfigurations().Create(ctx, v, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			var old *admissionv1.ValidatingWebhookConfiguration
			if old, err = api.ValidatingWebhookConfigurations().Get(ctx, v.Name, metav1.GetOptions{}); err == nil {
				v.ResourceVersion = old.ResourceVersion
				_, err = api.ValidatingWebhookConfigurations().Update(ctx, v, metav1.UpdateOptions{})
			}
		}
		if err != nil {
			return fmt.Errorf("register ValidatingWebhookConfiguration %s: %w", v.Name, err)
		}
	}
	if c.Mutating != nil {
		m := c.Mutating.DeepCopy()
		_, err := api.MutatingWebhookConfigurations().Create(ctx, m, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			var old *admissionv1.MutatingWebhookConfiguration
			if old, err = api.MutatingWebhookConfigurations().Get(ctx, m.Name, metav1.GetOptions{}); err == nil {
				m.ResourceVersion = old.ResourceVersion
				_, err = api.MutatingWebhookConfigurations().Update(ctx, m, metav1.UpdateOptions{})
			}
		}
		if err != nil {
			return fmt.Errorf("register MutatingWebhookConfiguration %s: %w", m.Name, err)
		}
	}
	return nil
}
