package certs_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
)

func issue(t *testing.T) selfmanaged.PEMs {
	t.Helper()
	p, err := selfmanaged.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func served(r *certs.Reloader) []byte {
	c, err := r.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || c == nil {
		return nil
	}
	return c.Certificate[0]
}

func TestReloaderServesANewPairWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	r := certs.NewReloader(dir, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	if r.Loaded() == nil {
		t.Fatal("ready before any certificate exists")
	}
	if !r.NotAfter().IsZero() {
		t.Fatalf("expiry %v before any certificate exists", r.NotAfter())
	}
	if _, err := r.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Fatal("a handshake got a certificate before any exists")
	}
	for i, p := range []selfmanaged.PEMs{issue(t), issue(t)} {
		if err := certs.WriteFiles(dir, p.Cert, p.Key); err != nil {
			t.Fatal(err)
		}
		want, err := tls.X509KeyPair(p.Cert, p.Key)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for !bytes.Equal(served(r), want.Certificate[0]) {
			if time.Now().After(deadline) {
				t.Fatalf("pair %d not served within 15s", i)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := r.Loaded(); err != nil {
			t.Fatalf("not ready with pair %d: %v", i, err)
		}
		leaf, err := x509.ParseCertificate(want.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := r.NotAfter(); !got.Equal(leaf.NotAfter) {
			t.Errorf("pair %d: expiry %v, want the served certificate's %v", i, got, leaf.NotAfter)
		}
	}
}

func TestServerConfigRequiresTLS12(t *testing.T) {
	if c := certs.ServerConfig(nil); c.MinVersion != tls.VersionTLS12 {
		t.Fatalf("min version %x", c.MinVersion)
	}
}
