package localrun

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/proc"
)

// CertificateGVR is cert-manager's Certificate resource.
var CertificateGVR = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}

// injectCAFrom is the annotation cert-manager's CA injector follows.
const injectCAFrom = "cert-manager.io/inject-ca-from"

// CertManagerWebhookSpec says how to start the webhook with certificates
// from the real cert-manager.
type CertManagerWebhookSpec struct {
	Binary string
	// Cluster must run cert-manager (cluster.Options.CertManager).
	Cluster *cluster.Cluster
	// Overlay is the kustomize directory rendered for the certificate
	// resources and webhook configurations; defaults to the shipped
	// manifests/overlays/cert-manager.
	Overlay string
	Flags   []string // extra webhook flags
}

// CertManagerWebhook is the webhook in --cert-mode=cert-manager, serving the
// pair cert-manager issued into the overlay's Secret, registered through the
// overlay's webhook configurations whose CA bundle cert-manager's CA
// injector fills.
//
// The overlay's serving Certificate names the Service; a loopback process is
// dialled as 127.0.0.1, so the Certificate gets that IP address as well, the
// way a user's own overlay would add a name. Nothing else is changed.
type CertManagerWebhook struct {
	*Webhook
	Namespace string
	// Certificate is the serving Certificate (the inject-ca-from target and
	// --certificate-name); CACertificate the one its CA Issuer signs with.
	Certificate, CACertificate string
	// Secret holds the serving pair; CertDir is where the kubelet would
	// mount it (here: mirrored by this process in the kubelet's layout).
	Secret, CertDir string
	// CASecret holds the CA the CA Issuer signs with.
	CASecret string

	// AppliedAt is when the overlay's Issuers and Certificates were
	// applied; ReadyAt when the webhook was ready, its CA injected and
	// its certificate verified against the injected bundle.
	AppliedAt, ReadyAt time.Time
	// CertificateReadyAt is when the serving Certificate was first seen
	// Ready, InjectedAt when both configurations first carried a bundle:
	// cert-manager's share of the time to Ready.
	CertificateReadyAt, InjectedAt time.Time
	// NotReadyBeforeApply is what /readyz said while no certificate
	// existed; empty means it claimed to be ready (a bug).
	NotReadyBeforeApply string
	// ReadyBeforeCertificate is set when /readyz answered 200 while the
	// Certificate was not Ready (a bug).
	ReadyBeforeCertificate bool

	dyn        dynamic.Interface
	stopMirror func()
}

// StartCertManagerWebhook renders the overlay, registers its webhook
// configurations pointing at a loopback port (keeping the inject-ca-from
// annotation, without a CA bundle), starts the webhook, then applies the
// overlay's Issuers and Certificates and waits until cert-manager has
// issued the chain, the CA injector has filled both configurations and the
// webhook serves a certificate that verifies against the injected bundle.
func StartCertManagerWebhook(ctx context.Context, s CertManagerWebhookSpec) (*CertManagerWebhook, error) {
	c := s.Cluster
	if s.Overlay == "" {
		root, err := cluster.RepoRoot()
		if err != nil {
			return nil, err
		}
		s.Overlay = filepath.Join(root, "manifests", "overlays", "cert-manager")
	}
	o, err := renderCertManagerOverlay(ctx, c, s.Overlay)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	ports, err := proc.FreePorts(3)
	if err != nil {
		return nil, err
	}
	w := &CertManagerWebhook{
		Webhook: &Webhook{
			Addr: "127.0.0.1:" + strconv.Itoa(ports[0]), HealthAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
			ConfigName: o.configs.Name, client: c.Client,
		},
		Namespace: o.namespace, Certificate: o.serving, CACertificate: o.ca, Secret: o.secret, CASecret: o.caSecret,
		CertDir: filepath.Join(c.Dir, "webhook-cert-manager-certs"), dyn: dyn,
	}
	// A pair left by an earlier start must not be served before
	// cert-manager has issued this one.
	if err := os.RemoveAll(w.CertDir); err != nil {
		return nil, fmt.Errorf("clear %s: %w", w.CertDir, err)
	}
	if err := kit.EnsureNamespace(ctx, c.Client, o.namespace); err != nil {
		return nil, err
	}
	o.configs.PointAt("https://"+w.Addr, nil)
	if err := o.configs.Register(ctx, c.Client); err != nil {
		return nil, err
	}
	if w.stopMirror, err = mirrorSecret(ctx, c, o.namespace, o.secret, w.CertDir); err != nil {
		w.unregister()
		return nil, err
	}
	// The webhook's own account under the cert-manager overlay's grants:
	// reading and watching its Certificate is all it may do there.
	kubeconfig, err := NewWebhookIdentity(ctx, IdentitySpec{Admin: c.Client, AdminConfig: c.Config, Dir: c.Dir}, CertSourceCertManager)
	if err != nil {
		w.Stop()
		return nil, err
	}
	args := append([]string{"webhook",
		"--kubeconfig=" + kubeconfig,
		"--bind-address=" + w.Addr,
		"--health-probe-bind-address=" + w.HealthAddr,
		"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(ports[2]),
		"--namespace=" + o.namespace,
		"--cert-mode=cert-manager",
		"--certificate-name=" + o.serving,
		"--cert-dir=" + w.CertDir,
		"--webhook-config-name=" + o.configs.Name,
		"--log-format=text",
		"--shutdown-delay=0s",
	}, s.Flags...)
	if w.proc, err = proc.Start(c.Dir, "webhook-cert-manager", []string{"POD_NAMESPACE=" + o.namespace, "POD_NAME=webhook-local"}, s.Binary, args...); err != nil {
		w.Stop()
		return nil, err
	}
	if err := w.waitUp(ctx); err != nil {
		w.Stop()
		return nil, err
	}
	w.NotReadyBeforeApply = w.readyz()
	w.AppliedAt = time.Now()
	applier, err := manifest.NewApplier(c.Config)
	if err != nil {
		w.Stop()
		return nil, err
	}
	if err := applier.Apply(ctx, o.apply...); err != nil {
		w.Stop()
		return nil, fmt.Errorf("cert-manager objects of the overlay: %w", err)
	}
	if err := w.waitReady(ctx); err != nil {
		w.Stop()
		return nil, err
	}
	w.ReadyAt = time.Now()
	return w, nil
}

// certManagerOverlay is what the tests take from the rendered overlay.
type certManagerOverlay struct {
	namespace, serving, ca, secret, caSecret string
	configs                                  *WebhookConfigurations
	apply                                    []*unstructured.Unstructured
}

// renderCertManagerOverlay builds the overlay with kubectl kustomize, keeps
// the webhook configurations and the cert-manager.io objects, and checks
// that the names that must agree do: inject-ca-from, --certificate-name and
// the Secret the Deployment mounts.
func renderCertManagerOverlay(ctx context.Context, c *cluster.Cluster, dir string) (*certManagerOverlay, error) {
	out, err := c.Kubectl(ctx, "kustomize", dir)
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(c.Dir, "overlay-")
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "overlay.yaml"), out, 0o600); err != nil {
		return nil, fmt.Errorf("render %s: %w", dir, err)
	}
	o := &certManagerOverlay{}
	if o.configs, err = LoadWebhookConfigurations(tmp); err != nil {
		return nil, err
	}
	var refs []string
	if v := o.configs.Validating; v != nil {
		refs = append(refs, v.Annotations[injectCAFrom])
	}
	if m := o.configs.Mutating; m != nil {
		refs = append(refs, m.Annotations[injectCAFrom])
	}
	for _, r := range refs {
		if r == "" || r != refs[0] {
			return nil, fmt.Errorf("overlay %s: webhook configurations inject the CA from %q: want one Certificate, named on both", dir, refs)
		}
	}
	ns, name, ok := strings.Cut(refs[0], "/")
	if !ok {
		return nil, fmt.Errorf("overlay %s: %s %q is not namespace/name", dir, injectCAFrom, refs[0])
	}
	o.namespace, o.serving = ns, name

	var deployArgs []string
	var mountedSecret string
	objs, err := manifest.Decode(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("parse rendered %s: %w", dir, err)
	}
	for _, u := range objs {
		switch {
		case u.GetAPIVersion() == "cert-manager.io/v1":
			o.apply = append(o.apply, u)
		case u.GetKind() == "Deployment" && u.GetName() == "termgate-webhook":
			containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			if len(containers) > 0 {
				deployArgs = ExpandedArgs(containers[0].(map[string]any))
			}
			volumes, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "volumes")
			for _, v := range volumes {
				if n, _, _ := unstructured.NestedString(v.(map[string]any), "secret", "secretName"); n != "" {
					mountedSecret = n
				}
			}
		}
	}
	var serving *unstructured.Unstructured
	for _, u := range o.apply {
		if u.GetKind() == "Certificate" && u.GetName() == o.serving && u.GetNamespace() == o.namespace {
			serving = u
		}
	}
	if serving == nil {
		return nil, fmt.Errorf("overlay %s: no Certificate %s, which the webhook configurations inject the CA from", dir, refs[0])
	}
	// The API server dials the Service the configurations name, so the
	// Certificate must carry its DNS name.
	dnsNames, _, _ := unstructured.NestedStringSlice(serving.Object, "spec", "dnsNames")
	for _, svc := range o.configs.services() {
		if !slices.Contains(dnsNames, svc) {
			return nil, fmt.Errorf("overlay %s: Certificate %s names %v, not the Service %s the webhook configurations call", dir, o.serving, dnsNames, svc)
		}
	}
	o.secret, _, _ = unstructured.NestedString(serving.Object, "spec", "secretName")
	if o.secret != mountedSecret {
		return nil, fmt.Errorf("overlay %s: Certificate %s writes Secret %q but the webhook mounts %q", dir, o.serving, o.secret, mountedSecret)
	}
	if !slices.Contains(deployArgs, "--certificate-name="+o.serving) || !slices.Contains(deployArgs, "--cert-mode=cert-manager") {
		return nil, fmt.Errorf("overlay %s: the webhook Deployment's args %v lack --cert-mode=cert-manager --certificate-name=%s", dir, deployArgs, o.serving)
	}
	// The CA Issuer the serving Certificate uses names the CA's Secret;
	// the CA Certificate is the one writing that Secret.
	issuer, _, _ := unstructured.NestedString(serving.Object, "spec", "issuerRef", "name")
	for _, u := range o.apply {
		if u.GetKind() == "Issuer" && u.GetName() == issuer {
			o.caSecret, _, _ = unstructured.NestedString(u.Object, "spec", "ca", "secretName")
		}
	}
	for _, u := range o.apply {
		if s, _, _ := unstructured.NestedString(u.Object, "spec", "secretName"); u.GetKind() == "Certificate" && o.caSecret != "" && s == o.caSecret {
			o.ca = u.GetName()
		}
	}
	if o.ca == "" {
		return nil, fmt.Errorf("overlay %s: no CA Certificate behind Issuer %q of Certificate %s", dir, issuer, o.serving)
	}
	// What a user's overlay adds for a webhook reached at an address
	// rather than through the Service: the API server dials 127.0.0.1.
	if err := unstructured.SetNestedStringSlice(serving.Object, []string{"127.0.0.1"}, "spec", "ipAddresses"); err != nil {
		return nil, fmt.Errorf("add 127.0.0.1 to Certificate %s: %w", o.serving, err)
	}
	return o, nil
}

// services lists the DNS names (name.namespace.svc) of the Services the
// configurations call, before PointAt replaces them.
func (c *WebhookConfigurations) services() []string {
	var names []string
	add := func(cc admissionv1.WebhookClientConfig) {
		if cc.Service != nil {
			if n := cc.Service.Name + "." + cc.Service.Namespace + ".svc"; !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	if c.Validating != nil {
		for _, h := range c.Validating.Webhooks {
			add(h.ClientConfig)
		}
	}
	if c.Mutating != nil {
		for _, h := range c.Mutating.Webhooks {
			add(h.ClientConfig)
		}
	}
	return names
}

// ExpandedArgs returns a container's args with $(VAR) replaced from its
// literal env values, as the kubelet expands them.
func ExpandedArgs(container map[string]any) []string {
	args, _, _ := unstructured.NestedStringSlice(container, "args")
	list, _, _ := unstructured.NestedSlice(container, "env")
	env := map[string]string{}
	for _, e := range list {
		e, _ := e.(map[string]any)
		name, _ := e["name"].(string)
		if v, ok := e["value"].(string); ok && name != "" {
			env[name] = v
		}
	}
	for i, a := range args {
		args[i] = expand(a, env)
	}
	return args
}

// waitUp waits until the webhook answers /readyz at all (ready or not).
// Ten seconds covers a process start many times over.
func (w *CertManagerWebhook) waitUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if gone, err := w.proc.Exited(); gone {
			return err
		}
		if !strings.HasPrefix(w.readyz(), "readyz: ") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("webhook does not answer /readyz (log: %s): %w", w.proc.LogPath(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readyz returns "" when /readyz answers 200, else what it said.
func (w *CertManagerWebhook) readyz() string {
	hc := &http.Client{Timeout: time.Second}
	resp, err := hc.Get("http://" + w.HealthAddr + "/readyz?verbose")
	if err != nil {
		return "readyz: " + err.Error()
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	return strings.TrimSpace(string(body))
}

// CertificateReady reads the Ready condition of a Certificate and the
// revision cert-manager has issued.
func (w *CertManagerWebhook) CertificateReady(ctx context.Context, name string) (ready bool, revision int64, err error) {
	return CertificateReady(ctx, w.dyn, w.Namespace, name)
}

// CertificateReady reads the Ready condition of cert-manager's Certificate
// namespace/name and the revision cert-manager has issued.
func CertificateReady(ctx context.Context, dyn dynamic.Interface, namespace, name string) (ready bool, revision int64, err error) {
	u, err := dyn.Resource(CertificateGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, 0, fmt.Errorf("read Certificate %s/%s: %w", namespace, name, err)
	}
	revision, _, _ = unstructured.NestedInt64(u.Object, "status", "revision")
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Ready" {
			return m["status"] == "True", revision, nil
		}
	}
	return false, revision, nil
}

// waitReady polls until the webhook is ready and serves a certificate the
// injected bundle verifies, recording whether /readyz ever answered 200
// before the Certificate was Ready. cert-manager issues the two-level chain
// in a few seconds and the webhook follows the Certificate with a watch; 60 s
// is far beyond both.
func (w *CertManagerWebhook) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last string
	for {
		if gone, err := w.proc.Exited(); gone {
			return err
		}
		certReady, _, _ := w.CertificateReady(ctx, w.Certificate)
		if certReady && w.CertificateReadyAt.IsZero() {
			w.CertificateReadyAt = time.Now()
		}
		if _, err := w.InjectedBundle(ctx); err == nil && w.InjectedAt.IsZero() {
			w.InjectedAt = time.Now()
		}
		last = w.readyz()
		if last == "" {
			// Read the Certificate again after the 200: it may have turned
			// Ready between the first read and /readyz, which the webhook's
			// watch may see first. Still not Ready now means the webhook was
			// ready before it.
			if ready, _, err := w.CertificateReady(ctx, w.Certificate); err == nil && !ready {
				w.ReadyBeforeCertificate = true
			}
			if _, err := w.ServedCertificate(ctx); err != nil {
				last = err.Error()
			} else {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("webhook with cert-manager certificates not ready (%s; webhook log: %s): %w", last, w.proc.LogPath(), ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// ServedCertificate dials the webhook the way the API server does: it
// checks that both configurations carry the same CA bundle and that the
// served certificate verifies against it for 127.0.0.1, and returns the
// served leaf.
func (w *CertManagerWebhook) ServedCertificate(ctx context.Context) (*x509.Certificate, error) {
	bundle, err := w.InjectedBundle(ctx)
	if err != nil {
		return nil, err
	}
	return ServedCertificate(ctx, w.Addr, "127.0.0.1", bundle)
}

// ServedCertificate dials a webhook at addr the way the API server does:
// TLS verified for serverName (what the webhook configuration names: the
// Service's DNS name, or an address) with bundle, the injected caBundle, as
// the only root. It returns the served leaf.
func ServedCertificate(ctx context.Context, addr, serverName string, bundle []byte) (*x509.Certificate, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return nil, errors.New("injected CA bundle holds no certificate")
	}
	d := &tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}}
	// A handshake with a serving webhook takes milliseconds, on loopback
	// or to a pod on the real node; 5 s bounds one that hangs on the
	// shared 2-core machine without masking it.
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TLS to the webhook at %s as %s, verified with the injected bundle: %w", addr, serverName, err)
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// InjectedBundle returns the CA bundle of every webhook of both
// configurations, failing when one is empty or they differ.
func (w *CertManagerWebhook) InjectedBundle(ctx context.Context) ([]byte, error) {
	return InjectedBundle(ctx, w.client, w.ConfigName)
}

// InjectedBundle returns the CA bundle of every webhook of the Validating-
// and MutatingWebhookConfiguration called configName, failing when one is
// empty or they differ: the API server trusts one CA for all of them.
func InjectedBundle(ctx context.Context, client kubernetes.Interface, configName string) ([]byte, error) {
	var bundles [][]byte
	v, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, configName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read ValidatingWebhookConfiguration %s: %w", configName, err)
	}
	for _, h := range v.Webhooks {
		bundles = append(bundles, h.ClientConfig.CABundle)
	}
	m, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, configName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read MutatingWebhookConfiguration %s: %w", configName, err)
	}
	for _, h := range m.Webhooks {
		bundles = append(bundles, h.ClientConfig.CABundle)
	}
	if len(bundles) == 0 {
		return nil, fmt.Errorf("configurations %s hold no webhook", configName)
	}
	for _, b := range bundles {
		if len(b) == 0 {
			return nil, errors.New("no CA bundle injected yet")
		}
		if !bytes.Equal(b, bundles[0]) {
			return nil, errors.New("the webhooks carry different CA bundles")
		}
	}
	return bundles[0], nil
}

// Stop ends the webhook, removes its configurations and stops mirroring
// the Secret. The overlay's cert-manager objects stay: the cluster is
// shared and they are namespaced.
func (w *CertManagerWebhook) Stop() {
	if w.proc != nil {
		w.Webhook.Stop()
	} else {
		w.unregister()
	}
	if w.stopMirror != nil {
		w.stopMirror()
		w.stopMirror = nil
	}
	_ = os.RemoveAll(w.CertDir)
}

// Renew asks cert-manager to re-issue a Certificate now, as `cmctl renew`
// does: it sets the Issuing condition. It returns the revision the
// Certificate had, so callers can wait for the next one.
func (w *CertManagerWebhook) Renew(ctx context.Context, name string) (revision int64, err error) {
	api := w.dyn.Resource(CertificateGVR).Namespace(w.Namespace)
	// A conflict means cert-manager wrote the status meanwhile: re-read.
	for range 5 {
		u, err := api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return 0, fmt.Errorf("renew %s: %w", name, err)
		}
		revision, _, _ = unstructured.NestedInt64(u.Object, "status", "revision")
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		conds = append(conds, map[string]any{
			"type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
			"message":            "Certificate re-issuance manually triggered by termgate's tests",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
			"observedGeneration": u.GetGeneration(),
		})
		if err := unstructured.SetNestedSlice(u.Object, conds, "status", "conditions"); err != nil {
			return 0, fmt.Errorf("renew %s: %w", name, err)
		}
		_, err = api.UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: "termgate-test"})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("renew %s: %w", name, err)
		}
		return revision, nil
	}
	return 0, fmt.Errorf("renew %s: status kept changing under five attempts", name)
}

// WaitRenewed waits until Certificate name is Ready at a revision after
// revision. cert-manager re-issues within seconds; budget bounds it.
func (w *CertManagerWebhook) WaitRenewed(ctx context.Context, name string, revision int64, budget time.Duration) error {
	return kit.Poll(ctx, budget, func(ctx context.Context) (bool, string, error) {
		ready, rev, err := w.CertificateReady(ctx, name)
		if err != nil {
			return false, "", err
		}
		return ready && rev > revision, fmt.Sprintf("Certificate %s Ready=%v revision %d (was %d)", name, ready, rev, revision), nil
	})
}

// PID is the webhook's process ID: a rotation must not change it.
func (w *CertManagerWebhook) PID() int { return w.proc.PID() }

// mirrorSecret plays the kubelet's Secret volume for a process outside any
// pod: every version of the Secret is written into dir the way the kubelet's
// atomic writer does (a timestamped directory, a ..data symlink swapped in
// one rename, one symlink per key), so the webhook sees exactly the file
// events a pod sees. Unlike the kubelet, which refreshes a mounted Secret
// within about a minute, this writes at once.
func mirrorSecret(ctx context.Context, c *cluster.Cluster, ns, name, dir string) (stop func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mirror Secret %s: %w", name, err)
	}
	// The mirror lives until stop, like the volume it plays, not until
	// the start-up context ends.
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	factory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + name }))
	inf := factory.Core().V1().Secrets().Informer()
	var mu sync.Mutex
	write := func(obj any) {
		s, ok := obj.(*corev1.Secret)
		if !ok || len(s.Data[corev1.TLSCertKey]) == 0 || len(s.Data[corev1.TLSPrivateKeyKey]) == 0 {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if err := writeAtomicDir(dir, s.Data); err != nil {
			fmt.Fprintf(os.Stderr, "mirror Secret %s/%s: %v\n", ns, name, err)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    write,
		UpdateFunc: func(_, obj any) { write(obj) },
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("mirror Secret %s: %w", name, err)
	}
	factory.Start(ctx.Done())
	return func() { cancel(); factory.Shutdown() }, nil
}

// writeAtomicDir writes data as the kubelet's atomic writer lays out a
// volume: files in a fresh ..<timestamp> directory, ..data pointing at it
// (swapped by rename), and key -> ..data/key links; the previous directory
// is removed afterwards.
func writeAtomicDir(dir string, data map[string][]byte) error {
	ts, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(ts, k), v, 0o600); err != nil {
			return err
		}
	}
	dataLink := filepath.Join(dir, "..data")
	old, _ := os.Readlink(dataLink)
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return err
	}
	for k := range data {
		link := filepath.Join(dir, k)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
			return err
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}
