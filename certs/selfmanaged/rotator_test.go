package selfmanaged

import (
	"bytes"
	"context"
	"crypto/x509"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"
)

const day = 24 * time.Hour

func testOptions() Options {
	return Options{
		Namespace: "termgate", SecretName: "certs", CASecretName: "ca", WebhookConfigName: "termgate",
		Hosts:      []string{"termgate-webhook.termgate.svc", "127.0.0.1"},
		CAValidity: 365 * day, CARenewBefore: 90 * day, CertValidity: 30 * day, CertRenewBefore: 10 * day, Resync: time.Minute,
	}
}

func webhookConfigs() (*admissionregistrationv1.ValidatingWebhookConfiguration, *admissionregistrationv1.MutatingWebhookConfiguration) {
	v := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "termgate"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "bind.termgate.dev"}, {Name: "pinned-pod.termgate.dev"}}}
	m := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "termgate"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "drain-order.termgate.dev"}}}
	return v, m
}

type env struct {
	t       *testing.T
	client  *fake.Clientset
	clock   *clocktesting.FakeClock
	rotator *Rotator
}

func newEnv(t *testing.T) *env {
	v, m := webhookConfigs()
	client := fake.NewClientset(v, m)
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return &env{t: t, client: client, clock: clk, rotator: NewRotator(client, testOptions(), clk)}
}

func (e *env) reconcile() time.Duration {
	e.t.Helper()
	next, err := e.rotator.Reconcile(context.Background())
	if err != nil {
		e.t.Fatalf("reconcile: %v", err)
	}
	return next
}

// secret is the serving Secret, the one every replica copies.
func (e *env) secret() *corev1.Secret { return e.secretNamed("certs") }

// caSecret is the CA Secret, read by the rotator alone.
func (e *env) caSecret() *corev1.Secret { return e.secretNamed("ca") }

func (e *env) secretNamed(name string) *corev1.Secret {
	e.t.Helper()
	s, err := e.client.CoreV1().Secrets("termgate").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// bundles returns the caBundle of every webhook in both configurations.
func (e *env) bundles() [][]byte {
	e.t.Helper()
	ctx := context.Background()
	v, err := e.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "termgate", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := e.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "termgate", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	var out [][]byte
	for _, w := range v.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	for _, w := range m.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

// verify checks that the serving certificate in the Secret chains to the
// injected bundle for every host at the current time.
func (e *env) verify() *x509.Certificate {
	e.t.Helper()
	s := e.secret()
	leaf, err := parseKeyPair(s.Data[KeyCert], s.Data[KeyKey])
	if err != nil {
		e.t.Fatalf("serving pair: %v", err)
	}
	for _, b := range e.bundles() {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			e.t.Fatalf("webhook bundle is empty or invalid: %q", b)
		}
		for _, h := range testOptions().Hosts {
			if _, err := leaf.cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: h, CurrentTime: e.clock.Now()}); err != nil {
				e.t.Fatalf("serving certificate does not verify for %s: %v", h, err)
			}
		}
	}
	return leaf.cert
}

func TestFirstReconcileCreatesSecretAndInjectsEveryWebhook(t *testing.T) {
	e := newEnv(t)
	next := e.reconcile()
	if s := e.secret(); s.Type != corev1.SecretTypeTLS || len(s.Data[KeyCert]) == 0 || len(s.Data[KeyKey]) == 0 {
		t.Fatalf("serving secret %+v", s)
	}
	e.verify()
	e.expectCAKeyOnlyInTheCASecret()
	if want := 20 * day; next > want+time.Hour || next < want-time.Hour {
		t.Fatalf("next check in %s, want about %s (validity minus renew-before)", next, want)
	}
}

func TestReconcileIsStableWhenNothingIsDue(t *testing.T) {
	e := newEnv(t)
	e.reconcile()
	before, caBefore := e.secret(), e.caSecret()
	e.clock.Step(5 * day)
	e.reconcile()
	after, caAfter := e.secret(), e.caSecret()
	if after.ResourceVersion != before.ResourceVersion || !bytes.Equal(after.Data[KeyCert], before.Data[KeyCert]) {
		t.Fatal("serving secret rewritten although nothing was due")
	}
	if caAfter.ResourceVersion != caBefore.ResourceVersion {
		t.Fatal("CA secret rewritten although nothing was due")
	}
}

// expectCAKeyOnlyInTheCASecret: the serving Secret, which every replica
// reads, holds no CA key; the CA Secret holds the key of the bundle's
// first CA, which signed the serving certificate.
func (e *env) expectCAKeyOnlyInTheCASecret() {
	e.t.Helper()
	serving, ca := e.secret(), e.caSecret()
	if _, ok := serving.Data[KeyCAKey]; ok {
		e.t.Fatalf("the serving secret holds the CA key (keys %v)", keys(serving.Data))
	}
	kp, err := parseKeyPair(ca.Data[KeyCA], ca.Data[KeyCAKey])
	if err != nil {
		e.t.Fatalf("CA secret: %v", err)
	}
	leaf, err := parseKeyPair(serving.Data[KeyCert], serving.Data[KeyKey])
	if err != nil {
		e.t.Fatalf("serving secret: %v", err)
	}
	if err := leaf.cert.CheckSignatureFrom(kp.cert); err != nil {
		e.t.Fatalf("the CA secret's CA did not sign the serving certificate: %v", err)
	}
	if !bytes.Equal(serving.Data[KeyCA], ca.Data[KeyCA]) {
		e.t.Fatal("the serving secret's bundle differs from the CA secret's")
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// An installation from before the CA Secret keeps the CA key in the
// serving Secret. The rotator moves it to the CA Secret and strips it from
// the serving Secret, keeping the CA, the bundle and the serving pair: the
// configurations are not re-injected and replicas serve on.
func TestAnUpgradeMovesTheCAKeyOutOfTheServingSecretWithoutBreakingServing(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	ca, err := newCA(now, testOptions().CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := newServing(ca, testOptions().Hosts, now, testOptions().CertValidity)
	if err != nil {
		t.Fatal(err)
	}
	legacy := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "certs", Namespace: "termgate"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{KeyCert: leaf.certPEM, KeyKey: leaf.keyPEM, KeyCA: ca.certPEM, KeyCAKey: ca.keyPEM},
	}
	if _, err := e.client.CoreV1().Secrets("termgate").Create(context.Background(), legacy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The configurations trust the old install's CA, as its leader left them.
	if err := e.rotator.inject(context.Background(), ca.certPEM); err != nil {
		t.Fatal(err)
	}
	injected := e.bundles()
	written := 0
	e.rotator.OnSecretWritten(func() { written++ })

	e.reconcile()
	e.expectCAKeyOnlyInTheCASecret()
	s := e.secret()
	if !bytes.Equal(s.Data[KeyCert], leaf.certPEM) || !bytes.Equal(s.Data[KeyKey], leaf.keyPEM) {
		t.Fatal("the serving pair changed: replicas would switch certificates for nothing")
	}
	if got := e.caSecret().Data[KeyCAKey]; !bytes.Equal(got, ca.keyPEM) {
		t.Fatal("the CA secret does not hold the old install's CA key: a new CA would re-inject every configuration")
	}
	for i, b := range e.bundles() {
		if !bytes.Equal(b, injected[i]) {
			t.Fatalf("webhook %d re-injected during the upgrade", i)
		}
	}
	e.verify()
	if written != 1 {
		t.Fatalf("serving secret written %d times, want once (the key removed)", written)
	}
	// Nothing left to move: the next reconcile writes nothing.
	e.reconcile()
	if written != 1 {
		t.Fatalf("serving secret written again after the move (%d writes)", written)
	}
}

// A CA Secret already written while the serving Secret still holds the
// key (a leader lost between the two writes): the CA Secret wins and the
// serving Secret loses the key.
func TestAnInterruptedMoveIsFinished(t *testing.T) {
	e := newEnv(t)
	e.reconcile()
	s := e.secret()
	s.Data[KeyCAKey] = e.caSecret().Data[KeyCAKey]
	if _, err := e.client.CoreV1().Secrets("termgate").Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	e.expectCAKeyOnlyInTheCASecret()
	e.verify()
}

func TestDriftedBundleIsPutBack(t *testing.T) {
	e := newEnv(t)
	e.reconcile()
	v, _ := e.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(context.Background(), "termgate", metav1.GetOptions{})
	v.Webhooks[1].ClientConfig.CABundle = []byte("stale")
	if _, err := e.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(context.Background(), v, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	e.verify()
}

func TestServingCertificateIsRenewedBeforeExpiryWithTheSameCA(t *testing.T) {
	e := newEnv(t)
	e.reconcile()
	first := e.verify()
	caBefore := e.caSecret().Data[KeyCA]
	e.clock.Step(21 * day) // inside the renew-before window
	e.reconcile()
	second := e.verify()
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("serving certificate not renewed inside its renew-before window")
	}
	if !bytes.Equal(caBefore, e.caSecret().Data[KeyCA]) {
		t.Fatal("CA bundle changed for a serving-certificate renewal")
	}
}

func TestCARotationKeepsTheOldCATrusted(t *testing.T) {
	e := newEnv(t)
	e.reconcile()
	oldCA, _ := parseCerts(e.secret().Data[KeyCA])
	// Walk time in steps so the serving certificate is renewed as it would
	// be, until the CA is inside its renew-before window.
	for range 10 {
		e.clock.Step(28 * day)
		e.reconcile()
		e.verify()
	}
	cas, err := parseCerts(e.secret().Data[KeyCA])
	if err != nil {
		t.Fatal(err)
	}
	if len(cas) != 2 || !cas[1].Equal(oldCA[0]) || cas[0].Equal(oldCA[0]) {
		t.Fatalf("bundle after CA rotation has %d CAs; want the new one first and the old one kept", len(cas))
	}
	e.expectCAKeyOnlyInTheCASecret()
	// Once the old CA has expired it drops out of the bundle.
	for range 4 {
		e.clock.Step(28 * day)
		e.reconcile()
		e.verify()
	}
	if cas, _ := parseCerts(e.secret().Data[KeyCA]); len(cas) != 1 {
		t.Fatalf("expired CA still in bundle (%d CAs)", len(cas))
	}
}

func TestBrokenSecretIsReplaced(t *testing.T) {
	e := newEnv(t)
	_, err := e.client.CoreV1().Secrets("termgate").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "certs", Namespace: "termgate"},
		Data:       map[string][]byte{KeyCert: []byte("junk"), KeyCA: []byte("junk")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.reconcile()
	e.verify()
}

func TestMissingWebhookConfigurationsAreNotAnError(t *testing.T) {
	client := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Now())
	if _, err := NewRotator(client, testOptions(), clk).Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestOptionsValidate(t *testing.T) {
	o := testOptions()
	o.CertRenewBefore = o.CertValidity
	if o.Validate() == nil {
		t.Fatal("renew-before equal to validity accepted")
	}
	o = testOptions()
	o.CASecretName = o.SecretName
	if o.Validate() == nil {
		t.Fatal("the CA key in the serving secret accepted")
	}
	if testOptions().Validate() != nil {
		t.Fatal("valid options refused")
	}
}
