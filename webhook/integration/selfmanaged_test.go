package integration

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/test/kit"
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
