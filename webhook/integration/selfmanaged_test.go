package integration

import (
	"bytes"
	"context"
	"encoding/pem"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

// TestSelfManagedCertificatesAreIssuedInjectedAndServed runs a second
// webhook whose certificate comes only from the self-managed source: the
// leader creates the Secret and injects the CA into its own pair of webhook
// configurations (copies of the shipped ones, limited to one namespace), the
// syncer writes the pair to disk, and the API server then calls it.
func TestSelfManagedCertificatesAreIssuedInjectedAndServed(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	const configName = "termgate-self-managed-test"
	if err := kit.EnsureNamespace(t.Context(), env.Client, "termgate"); err != nil {
		t.Fatal(err)
	}

	registry := prometheus.NewRegistry()
	dir := filepath.Join(t.TempDir(), "certs")
	source := selfmanaged.NewSource(env.Client, env.Client, selfmanaged.SourceOptions{
		Rotator: selfmanaged.Options{
			Namespace: "termgate", SecretName: "self-managed-test-certs", CASecretName: "self-managed-test-ca", WebhookConfigName: configName,
			Hosts: []string{"127.0.0.1"}, CAValidity: 24 * time.Hour, CARenewBefore: time.Hour,
			CertValidity: 2 * time.Hour, CertRenewBefore: time.Hour, Resync: 200 * time.Millisecond,
		},
		Leader: selfmanaged.LeaderOptions{
			Namespace: "termgate", LeaseName: "self-managed-test", Identity: "test",
			LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		},
		Dir: dir, SyncInterval: 200 * time.Millisecond,
	}, clock.RealClock{})
	replica, err := newReplica(env, dir, source, registry)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	registerLimited(t, configName, ln.Addr().String(), ns)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() { _ = replica.Run(ctx, ln); close(done) }()

	ready := func() error {
		for _, c := range replica.Checks() {
			if err := c.Fn(); err != nil {
				return err
			}
		}
		return nil
	}
	testenv.Eventually(t, 30*time.Second, "serving certificate written and loaded", func(context.Context) (bool, string, error) {
		if err := ready(); err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
	testenv.Eventually(t, 30*time.Second, "the API server calling the self-managed webhook", func(ctx context.Context) (bool, string, error) {
		if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, kit.Pod(ns, "probe"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			return false, err.Error(), nil
		}
		return counterSum(t, registry, "termgate_webhook_decisions_total", map[string]string{"gate": "drain-order"}) > 0, "no drain-order decision recorded", nil
	})

	// Drift: someone overwrites the bundle; the leader puts it back.
	adm := env.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	if _, err := adm.Patch(ctx, configName, types.JSONPatchType, []byte(`[{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":"c3RhbGU="}]`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the CA bundle re-injected", func(ctx context.Context) (bool, string, error) {
		secret, err := env.Client.CoreV1().Secrets("termgate").Get(ctx, "self-managed-test-certs", metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		v, err := adm.Get(ctx, configName, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return bytes.Equal(v.Webhooks[0].ClientConfig.CABundle, secret.Data[selfmanaged.KeyCA]), "bundle still drifted", nil
	})
}

// registerLimited installs copies of the shipped configurations named name,
// pointed at addr without a CA bundle, and limited to namespace ns so other
// tests never call this webhook.
func registerLimited(t *testing.T, name, addr, ns string) {
	t.Helper()
	c, err := shippedConfigurations()
	if err != nil {
		t.Fatal(err)
	}
	c.PointAt("https://"+addr, nil)
	only := &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	c.Name, c.Validating.Name, c.Mutating.Name = name, name, name
	for i := range c.Validating.Webhooks {
		c.Validating.Webhooks[i].NamespaceSelector = only
	}
	for i := range c.Mutating.Webhooks {
		c.Mutating.Webhooks[i].NamespaceSelector = only
	}
	if err := c.Register(t.Context(), env.Client); err != nil {
		t.Fatal(err)
	}
	adm := env.Client.AdmissionregistrationV1()
	t.Cleanup(func() {
		_ = adm.ValidatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
		_ = adm.MutatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// TestAnUpgradedSelfManagedInstallMovesItsCAKeyAndServesOn runs termgate's
// webhook process on its own service account under the self-managed
// overlay's RBAC. An install from before the CA Secret kept the CA key in
// the serving Secret that every replica copies; this one starts from that
// layout. The leader moves the key into the CA Secret and drops it from the
// serving Secret, keeping the serving pair and the bundle, and the API
// server calls the webhook throughout. The account reads its two Secrets by
// name and no other.
func TestAnUpgradedSelfManagedInstallMovesItsCAKeyAndServesOn(t *testing.T) {
	ns := localrun.WebhookNamespace
	const serving, caName = "termgate-webhook-certs", "termgate-webhook-ca"
	bin := termgateBinary(t)
	wh.restoreRegistrationsAtEnd(t)
	kubeconfig, err := localrun.NewWebhookIdentity(ctx(t), localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: t.TempDir()}, localrun.CertSourceSelfManaged)
	if err != nil {
		t.Fatal(err)
	}
	start := func() *localrun.Webhook {
		w, err := localrun.StartWebhook(ctx(t), localrun.WebhookSpec{Binary: bin, Dir: t.TempDir(), Kubeconfig: kubeconfig, Client: env.Client})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	secrets := env.Client.CoreV1().Secrets(ns)
	get := func(name string) *corev1.Secret {
		s, err := secrets.Get(ctx(t), name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("secret %s: %v", name, err)
		}
		return s
	}

	// The old layout: the CA key in the serving Secret, no CA Secret. A
	// first run makes a CA and a pair for this host; then the key goes
	// back where older versions kept it.
	start().Stop()
	old := get(serving)
	old.Data[selfmanaged.KeyCAKey] = get(caName).Data[selfmanaged.KeyCAKey]
	if _, err := secrets.Update(ctx(t), old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Delete(ctx(t), caName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	legacy := get(serving)

	w := start()
	t.Cleanup(w.Stop)
	if err := wh.waitStamping(ctx(t)); err != nil {
		t.Fatalf("the API server does not reach the upgraded webhook: %v", err)
	}
	now := get(serving)
	if _, held := now.Data[selfmanaged.KeyCAKey]; held {
		t.Fatal("the serving Secret still holds the CA key after the upgrade")
	}
	if !bytes.Equal(now.Data[selfmanaged.KeyCert], legacy.Data[selfmanaged.KeyCert]) || !bytes.Equal(now.Data[selfmanaged.KeyCA], legacy.Data[selfmanaged.KeyCA]) {
		t.Fatal("the upgrade replaced the serving certificate or the bundle: replicas and the API server would have to follow")
	}
	if !bytes.Equal(get(caName).Data[selfmanaged.KeyCAKey], legacy.Data[selfmanaged.KeyCAKey]) {
		t.Fatal("the CA Secret does not hold the install's CA key")
	}
	if !bytes.Equal(servedCert(t, w.Addr), pemBlock(t, legacy.Data[selfmanaged.KeyCert])) {
		t.Fatal("the webhook serves another certificate than the one it had")
	}

	// RBAC by name: its two Secrets, nothing else in its namespace.
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	own, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "not-termgates-" + rand.String(5), Namespace: ns}, StringData: map[string]string{"k": "v"}}
	if _, err := secrets.Create(ctx(t), other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = secrets.Delete(context.Background(), other.Name, metav1.DeleteOptions{}) })
	for _, name := range []string{serving, caName} {
		if _, err := own.CoreV1().Secrets(ns).Get(ctx(t), name, metav1.GetOptions{}); err != nil {
			t.Errorf("the webhook's account cannot read its Secret %s: %v", name, err)
		}
	}
	if _, err := own.CoreV1().Secrets(ns).Get(ctx(t), other.Name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the webhook's account reading another Secret: got %v, want Forbidden", err)
	}
	if _, err := own.CoreV1().Secrets(ns).List(ctx(t), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the webhook's account listing Secrets: got %v, want Forbidden", err)
	}
}

// pemBlock returns the DER bytes of the first PEM block.
func pemBlock(t *testing.T, data []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return b.Bytes
}
