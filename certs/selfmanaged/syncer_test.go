package selfmanaged

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/certs"
)

func TestSyncerWritesTheSecretsPairAndFollowsChanges(t *testing.T) {
	client := fake.NewClientset()
	dir := t.TempDir()
	s := NewSyncer(client, "termgate", "certs", dir, time.Second, clocktesting.NewFakeClock(time.Now()))
	ctx := context.Background()
	if err := s.SyncOnce(ctx); err != nil {
		t.Fatalf("a missing secret is not an error: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, certs.CertFile)); !os.IsNotExist(err) {
		t.Fatal("files written without a secret")
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "certs", Namespace: "termgate"}, Data: map[string][]byte{KeyCert: []byte("c1"), KeyKey: []byte("k1")}}
	if _, err := client.CoreV1().Secrets("termgate").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"c1", "c2"} {
		if err := s.SyncOnce(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, certs.CertFile))
		if err != nil || string(got) != want {
			t.Fatalf("cert file %q (%v), want %q", got, err, want)
		}
		secret.Data = map[string][]byte{KeyCert: []byte("c2"), KeyKey: []byte("k2")}
		if _, err := client.CoreV1().Secrets("termgate").Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if key, _ := os.ReadFile(filepath.Join(dir, certs.KeyFile)); string(key) != "k2" {
		t.Fatalf("key file %q", key)
	}
}
