package selfmanaged

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

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
	// Namespace and SecretName locate the Secret holding CA and serving pair.
	Namespace  string
	SecretName string
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
	if o.Namespace == "" || o.SecretName == "" || o.WebhookConfigName == "" {
		errs = append(errs, errors.New("namespace, secret name and webhook configuration name are required"))
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

// Reconcile makes the Secret hold a valid CA and serving pair and the webhook
// configurations trust the CA. It returns the time until the next renewal.
func (r *Rotator) Reconcile(ctx context.Context) (time.Duration, error) {
	secret, err := r.client.CoreV1().Secrets(r.opts.Namespace).Get(ctx, r.opts.SecretName, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, fmt.Errorf("read secret %s/%s: %w", r.opts.Namespace, r.opts.SecretName, err)
	}
	if apierrors.IsNotFound(err) {
		secret = nil
	}
	st, changed, err := r.desired(ctx, secret)
	if err != nil {
		return 0, err
	}
	if changed {
		if err := r.write(ctx, secret, st); err != nil {
			return 0, err
		}
		if r.written != nil {
			r.written()
		}
	}
	if err := r.inject(ctx, st.bundle); err != nil {
		return 0, err
	}
	return st.untilRenewal(r.clock.Now(), r.opts), nil
}

// state is what the Secret holds.
type state struct {
	ca      *keyPair
	bundle  []byte
	serving *keyPair
}

func (s *state) untilRenewal(now time.Time, o Options) time.Duration {
	caDue := s.ca.cert.NotAfter.Add(-o.CARenewBefore)
	certDue := s.serving.cert.NotAfter.Add(-o.CertRenewBefore)
	return max(min(caDue.Sub(now), certDue.Sub(now)), 0)
}

// desired reads the Secret and replaces what is missing, broken or due.
func (r *Rotator) desired(ctx context.Context, secret *corev1.Secret) (*state, bool, error) {
	logger := log.FromContext(ctx)
	now := r.clock.Now()
	var data map[string][]byte
	if secret != nil {
		data = secret.Data
	}
	st := &state{}
	changed := false
	if ca, err := parseKeyPair(data[KeyCA], data[KeyCAKey]); err == nil && ca.cert.IsCA && now.Add(r.opts.CARenewBefore).Before(ca.cert.NotAfter) {
		st.ca = ca
	} else {
		fresh, err := newCA(now, r.opts.CAValidity)
		if err != nil {
			return nil, false, fmt.Errorf("create CA: %w", err)
		}
		logger.Info("Created webhook CA", "notAfter", fresh.cert.NotAfter)
		st.ca, changed = fresh, true
	}
	// Keep every CA of the old bundle that is still valid, so serving
	// certificates it signed stay trusted until they are replaced.
	st.bundle = mergeBundle(st.ca.certPEM, data[KeyCA], now)
	if !bytes.Equal(st.bundle, data[KeyCA]) {
		changed = true
	}
	trusted, _ := parseCerts(st.bundle)
	if serving, err := parseKeyPair(data[KeyCert], data[KeyKey]); err == nil && r.servingUsable(serving, trusted, now) {
		st.serving = serving
		return st, changed, nil
	}
	serving, err := newServing(st.ca, r.opts.Hosts, now, r.opts.CertValidity)
	if err != nil {
		return nil, false, fmt.Errorf("create serving certificate: %w", err)
	}
	logger.Info("Issued webhook serving certificate", "hosts", r.opts.Hosts, "notAfter", serving.cert.NotAfter)
	st.serving = serving
	return st, true, nil
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

func (r *Rotator) write(ctx context.Context, old *corev1.Secret, st *state) error {
	data := map[string][]byte{
		KeyCA:    st.bundle,
		KeyCAKey: st.ca.keyPEM,
		KeyCert:  st.serving.certPEM,
		KeyKey:   st.serving.keyPEM,
	}
	secrets := r.client.CoreV1().Secrets(r.opts.Namespace)
	if old == nil {
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: r.opts.SecretName, Namespace: r.opts.Namespace, Labels: map[string]string{"app.kubernetes.io/name": "termgate-webhook"}},
			Type:       corev1.SecretTypeTLS,
			Data:       data,
		}
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create secret %s/%s: %w", r.opts.Namespace, r.opts.SecretName, err)
		}
		return nil
	}
	s := old.DeepCopy()
	s.Data = data
	// The resourceVersion from the read makes this a compare-and-swap: a
	// concurrent writer (a leader that just lost its lease) makes it fail.
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret %s/%s: %w", r.opts.Namespace, r.opts.SecretName, err)
	}
	return nil
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
	name := r.opts.WebhookConfigName
	logger := log.FromContext(ctx)
	vwc, err := r.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		logger.V(1).Info("Validating webhook configuration not installed, nothing to inject", "name", name)
	case err != nil:
		return fmt.Errorf("read validating webhook configuration %s: %w", name, err)
	default:
		var names []string
		var bundles [][]byte
		for _, w := range vwc.Webhooks {
			names, bundles = append(names, w.Name), append(bundles, w.ClientConfig.CABundle)
		}
		if p := caPatch(names, bundles, bundle); p != nil {
			if _, err := r.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Patch(ctx, name, types.JSONPatchType, p, metav1.PatchOptions{}); err != nil {
				return fmt.Errorf("inject CA into validating webhook configuration %s: %w", name, err)
			}
			logger.Info("Injected CA bundle", "configuration", "validating/"+name)
		}
	}
	mwc, err := r.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		logger.V(1).Info("Mutating webhook configuration not installed, nothing to inject", "name", name)
	case err != nil:
		return fmt.Errorf("read mutating webhook configuration %s: %w", name, err)
	default:
		var names []string
		var bundles [][]byte
		for _, w := range mwc.Webhooks {
			names, bundles = append(names, w.Name), append(bundles, w.ClientConfig.CABundle)
		}
		if p := caPatch(names, bundles, bundle); p != nil {
			if _, err := r.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Patch(ctx, name, types.JSONPatchType, p, metav1.PatchOptions{}); err != nil {
				return fmt.Errorf("inject CA into mutating webhook configuration %s: %w", name, err)
			}
			logger.Info("Injected CA bundle", "configuration", "mutating/"+name)
		}
	}
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
