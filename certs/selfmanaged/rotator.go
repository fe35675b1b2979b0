package selfmanaged

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Options say what the rotator maintains.
type Options struct {
	// Namespace and SecretName locate the serving Secret: the serving pair
	// and the CA bundle, which every replica copies (Syncer).
	Namespace  string
	SecretName string
	// CASecretName names the CA Secret in Namespace: the CA bundle and the
	// current CA's key. Only the rotator reads it; the key never goes into
	// the serving Secret, so no replica holds it in memory or on disk
	// unless it is the leader signing a certificate.
	CASecretName string
	// WebhookConfigName names both the Validating- and the
	// MutatingWebhookConfiguration that receive the CA bundle.
	WebhookConfigName string
	// Hosts are the serving certificate's DNS names and IP addresses.
	Hosts []string
	// CAValidity and CARenewBefore: the CA is replaced when less than
	// CARenewBefore of its life is left. The old CA stays in the bundle
	// until it expires, so certificates it signed keep working.
	CAValidity, CARenewBefore time.Duration
	// CertValidity and CertRenewBefore do the same for the serving pair.
	CertValidity, CertRenewBefore time.Duration
	// Resync bounds the time between two checks, which is also how fast a
	// bundle someone else changed (drift) is put back.
	Resync time.Duration
}

// Validate checks that renewal leaves the certificates time to be used.
func (o Options) Validate() error {
	var errs []error
	if o.Namespace == "" || o.SecretName == "" || o.CASecretName == "" || o.WebhookConfigName == "" {
		errs = append(errs, errors.New("namespace, serving and CA secret names and webhook configuration name are required"))
	}
	if o.SecretName == o.CASecretName && o.SecretName != "" {
		errs = append(errs, fmt.Errorf("the CA secret must not be the serving secret %q: every replica reads that one", o.SecretName))
	}
	if len(o.Hosts) == 0 {
		errs = append(errs, errors.New("at least one host name is required for the serving certificate"))
	}
	if o.CARenewBefore <= 0 || o.CARenewBefore >= o.CAValidity {
		errs = append(errs, fmt.Errorf("CA renew-before %s must be positive and shorter than its validity %s", o.CARenewBefore, o.CAValidity))
	}
	if o.CertRenewBefore <= 0 || o.CertRenewBefore >= o.CertValidity {
		errs = append(errs, fmt.Errorf("certificate renew-before %s must be positive and shorter than its validity %s", o.CertRenewBefore, o.CertValidity))
	}
	if o.Resync <= 0 {
		errs = append(errs, errors.New("resync must be positive"))
	}
	return errors.Join(errs...)
}

// Rotator keeps the Secret and the injected CA bundle current. Only one
// replica runs it at a time (see RunLeader).
type Rotator struct {
	client  kubernetes.Interface
	opts    Options
	clock   clock.Clock
	written func()
}

// OnSecretWritten registers fn to run after each write of the Secret (the
// syncer of the same process picks the new pair up at once).
func (r *Rotator) OnSecretWritten(fn func()) { r.written = fn }

// NewRotator returns a rotator; opts must have passed Validate.
func NewRotator(client kubernetes.Interface, opts Options, clk clock.Clock) *Rotator {
	return &Rotator{client: client, opts: opts, clock: clk}
}

// Run reconciles until ctx ends: at every Resync and when a certificate is
// due for renewal, whichever comes first. Errors are logged and retried.
func (r *Rotator) Run(ctx context.Context) {
	logger := log.FromContext(ctx)
	for {
		wait, err := r.Reconcile(ctx)
		if err != nil {
			logger.Error(err, "Reconcile webhook certificates")
			wait = min(r.opts.Resync, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.clock.After(min(wait, r.opts.Resync)):
		}
	}
}

// Reconcile makes the CA Secret hold a valid CA, the serving Secret a
// serving pair it signed, and the webhook configurations trust the CA. It
// returns the time until the next renewal.
//
// An installation from before the CA Secret kept the CA key in the serving
// Secret. Reconcile moves it: it writes the CA Secret from the serving
// Secret's CA first, then rewrites the serving Secret without the key. The
// serving pair and the bundle stay as they were, so serving never breaks,
// and a failure between the two writes leaves the key in both, never in
// neither.
func (r *Rotator) Reconcile(ctx context.Context) (time.Duration, error) {
	serving, err := r.read(ctx, r.opts.SecretName)
	if err != nil {
		return 0, err
	}
	caSecret, err := r.read(ctx, r.opts.CASecretName)
	if err != nil {
		return 0, err
	}
	st, err := r.desired(ctx, heldCA(caSecret, serving), dataOf(serving))
	if err != nil {
		return 0, err
	}
	if err := r.write(ctx, r.opts.CASecretName, caSecret, corev1.SecretTypeOpaque, st.caData()); err != nil {
		return 0, err
	}
	if written, err := r.writeIfChanged(ctx, r.opts.SecretName, serving, corev1.SecretTypeTLS, st.servingData()); err != nil {
		return 0, err
	} else if written && r.written != nil {
		r.written()
	}
	if err := r.inject(ctx, st.bundle); err != nil {
		return 0, err
	}
	return st.untilRenewal(r.clock.Now(), r.opts), nil
}

// read returns the Secret name in the rotator's namespace, or nil when it
// does not exist.
func (r *Rotator) read(ctx context.Context, name string) (*corev1.Secret, error) {
	s, err := r.client.CoreV1().Secrets(r.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", r.opts.Namespace, name, err)
	}
	return s, nil
}

func dataOf(s *corev1.Secret) map[string][]byte {
	if s == nil {
		return nil
	}
	return s.Data
}

// heldCA is where the CA is kept: the CA Secret once it holds a key, else
// the serving Secret of an installation from before the CA Secret.
func heldCA(caSecret, serving *corev1.Secret) map[string][]byte {
	if caSecret != nil && len(caSecret.Data[KeyCAKey]) > 0 {
		return caSecret.Data
	}
	if serving != nil && len(serving.Data[KeyCAKey]) > 0 {
		return map[string][]byte{KeyCA: serving.Data[KeyCA], KeyCAKey: serving.Data[KeyCAKey]}
	}
	return nil
}

// state is what the two Secrets hold.
type state struct {
	ca      *keyPair
	bundle  []byte
	serving *keyPair
}

// caData is the CA Secret's content: the bundle and the current CA's key.
func (s *state) caData() map[string][]byte {
	return map[string][]byte{KeyCA: s.bundle, KeyCAKey: s.ca.keyPEM}
}

// servingData is the serving Secret's content: the pair and the bundle, no
// CA key.
func (s *state) servingData() map[string][]byte {
	return map[string][]byte{KeyCert: s.serving.certPEM, KeyKey: s.serving.keyPEM, KeyCA: s.bundle}
}

func (s *state) untilRenewal(now time.Time, o Options) time.Duration {
	caDue := s.ca.cert.NotAfter.Add(-o.CARenewBefore)
	certDue := s.serving.cert.NotAfter.Add(-o.CertRenewBefore)
	return max(min(caDue.Sub(now), certDue.Sub(now)), 0)
}

// desired keeps what the Secrets hold (ca: the held CA, serving: the
// serving Secret) and replaces what is missing, broken or due.
func (r *Rotator) desired(ctx context.Context, ca, serving map[string][]byte) (*state, error) {
	logger := log.FromContext(ctx)
	now := r.clock.Now()
	st := &state{}
	if kp, err := parseKeyPair(ca[KeyCA], ca[KeyCAKey]); err == nil && kp.cert.IsCA && now.Add(r.opts.CARenewBefore).Before(kp.cert.NotAfter) {
		st.ca = kp
	} else {
		fresh, err := newCA(now, r.opts.CAValidity)
		if err != nil {
			return nil, fmt.Errorf("create CA: %w", err)
		}
		logger.Info("Created webhook CA", "notAfter", fresh.cert.NotAfter)
		st.ca = fresh
	}
	// Keep every CA of the old bundle that is still valid, so serving
	// certificates it signed stay trusted until they are replaced.
	st.bundle = mergeBundle(st.ca.certPEM, ca[KeyCA], now)
	trusted, _ := parseCerts(st.bundle)
	if kp, err := parseKeyPair(serving[KeyCert], serving[KeyKey]); err == nil && r.servingUsable(kp, trusted, now) {
		st.serving = kp
		return st, nil
	}
	kp, err := newServing(st.ca, r.opts.Hosts, now, r.opts.CertValidity)
	if err != nil {
		return nil, fmt.Errorf("create serving certificate: %w", err)
	}
	logger.Info("Issued webhook serving certificate", "hosts", r.opts.Hosts, "notAfter", kp.cert.NotAfter)
	st.serving = kp
	return st, nil
}

// servingUsable: signed by a trusted CA, names the right hosts, not due.
func (r *Rotator) servingUsable(s *keyPair, trusted []*x509.Certificate, now time.Time) bool {
	if !now.Add(r.opts.CertRenewBefore).Before(s.cert.NotAfter) || !coversHosts(s.cert, r.opts.Hosts) {
		return false
	}
	for _, ca := range trusted {
		if s.cert.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

// write is writeIfChanged for a Secret whose writes nobody waits for.
func (r *Rotator) write(ctx context.Context, name string, old *corev1.Secret, typ corev1.SecretType, data map[string][]byte) error {
	_, err := r.writeIfChanged(ctx, name, old, typ, data)
	return err
}

// writeIfChanged makes Secret name hold exactly data, creating it (of type
// typ) when old is nil, and reports whether it wrote.
func (r *Rotator) writeIfChanged(ctx context.Context, name string, old *corev1.Secret, typ corev1.SecretType, data map[string][]byte) (bool, error) {
	secrets := r.client.CoreV1().Secrets(r.opts.Namespace)
	if old == nil {
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.opts.Namespace, Labels: map[string]string{"app.kubernetes.io/name": "termgate-webhook"}},
			Type:       typ,
			Data:       data,
		}
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("create secret %s/%s: %w", r.opts.Namespace, name, err)
		}
		return true, nil
	}
	if sameData(old.Data, data) {
		return false, nil
	}
	s := old.DeepCopy()
	s.Data = data
	// The resourceVersion from the read makes this a compare-and-swap: a
	// concurrent writer (a leader that just lost its lease) makes it fail.
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("update secret %s/%s: %w", r.opts.Namespace, name, err)
	}
	return true, nil
}

// sameData reports whether two Secrets' data hold the same keys and values.
func sameData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// inject sets caBundle on every webhook of both configurations. Each
// replacement is guarded by a test of the webhook's name, so a concurrent
// reordering makes the patch fail instead of writing the wrong entry.
func (r *Rotator) inject(ctx context.Context, bundle []byte) error {
	for _, c := range r.webhookConfigs() {
		if err := r.injectInto(ctx, c, bundle); err != nil {
			return err
		}
	}
	return nil
}

// webhookConfig is one of the configurations the CA bundle goes into,
// read and patched through its own typed client.
type webhookConfig struct {
	kind string // validating or mutating
	// read returns the configuration's webhook names and their bundles.
	read  func(ctx context.Context, name string) (names []string, bundles [][]byte, err error)
	patch func(ctx context.Context, name string, patch []byte) error
}

func (r *Rotator) webhookConfigs() []webhookConfig {
	api := r.client.AdmissionregistrationV1()
	validating, mutating := api.ValidatingWebhookConfigurations(), api.MutatingWebhookConfigurations()
	return []webhookConfig{{
		kind: "validating",
		read: bundlesOf(validating.Get, func(c *admissionregistrationv1.ValidatingWebhookConfiguration) (names []string, bundles [][]byte) {
			for _, w := range c.Webhooks {
				names, bundles = append(names, w.Name), append(bundles, w.ClientConfig.CABundle)
			}
			return names, bundles
		}),
		patch: patchWith(validating.Patch),
	}, {
		kind: "mutating",
		read: bundlesOf(mutating.Get, func(c *admissionregistrationv1.MutatingWebhookConfiguration) (names []string, bundles [][]byte) {
			for _, w := range c.Webhooks {
				names, bundles = append(names, w.Name), append(bundles, w.ClientConfig.CABundle)
			}
			return names, bundles
		}),
		patch: patchWith(mutating.Patch),
	}}
}

// bundlesOf reads a configuration with get and lists its webhooks' names
// and bundles with list.
func bundlesOf[C any](get func(context.Context, string, metav1.GetOptions) (*C, error), list func(*C) ([]string, [][]byte)) func(context.Context, string) ([]string, [][]byte, error) {
	return func(ctx context.Context, name string) ([]string, [][]byte, error) {
		c, err := get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, nil, err
		}
		names, bundles := list(c)
		return names, bundles, nil
	}
}

// patchWith applies a JSON patch through a typed client's Patch.
func patchWith[C any](patch func(context.Context, string, types.PatchType, []byte, metav1.PatchOptions, ...string) (*C, error)) func(context.Context, string, []byte) error {
	return func(ctx context.Context, name string, p []byte) error {
		_, err := patch(ctx, name, types.JSONPatchType, p, metav1.PatchOptions{})
		return err
	}
}

// injectInto patches the webhooks of one configuration whose bundle
// differs; a configuration not installed is left alone.
func (r *Rotator) injectInto(ctx context.Context, c webhookConfig, bundle []byte) error {
	name := r.opts.WebhookConfigName
	logger := log.FromContext(ctx)
	names, bundles, err := c.read(ctx, name)
	switch {
	case apierrors.IsNotFound(err):
		logger.V(1).Info("Webhook configuration not installed, nothing to inject", "configuration", c.kind+"/"+name)
		return nil
	case err != nil:
		return fmt.Errorf("read %s webhook configuration %s: %w", c.kind, name, err)
	}
	p := caPatch(names, bundles, bundle)
	if p == nil {
		return nil
	}
	if err := c.patch(ctx, name, p); err != nil {
		return fmt.Errorf("inject CA into %s webhook configuration %s: %w", c.kind, name, err)
	}
	logger.Info("Injected CA bundle", "configuration", c.kind+"/"+name)
	return nil
}

// caPatch returns a JSON patch for the webhooks whose bundle differs, or nil.
func caPatch(names []string, have [][]byte, want []byte) []byte {
	var ops []jsonPatchOp
	for i := range names {
		if bytes.Equal(have[i], want) {
			continue
		}
		ops = append(ops,
			jsonPatchOp{Op: "test", Path: fmt.Sprintf("/webhooks/%d/name", i), Value: names[i]},
			jsonPatchOp{Op: "add", Path: fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), Value: want})
	}
	if ops == nil {
		return nil
	}
	b, _ := json.Marshal(ops) // strings and byte slices always marshal
	return b
}
