package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLogOptionsRefuseUnknownFormatsAndLogAtTheirVerbosity(t *testing.T) {
	if err := (LogOptions{Format: "xml"}).Validate(); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Fatalf("xml accepted: %v", err)
	}
	var buf bytes.Buffer
	log := LogOptions{Format: "json", Verbosity: 1}.Logger(&buf)
	log.V(1).Info("shown", "k", "v")
	log.V(2).Info("hidden")
	if !strings.Contains(buf.String(), `"msg":"shown"`) || strings.Contains(buf.String(), "hidden") {
		t.Fatalf("logged %q", buf.String())
	}
}

func TestClientConfigCarriesTheLimitsAndTheUserAgent(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	const body = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(kubeconfig, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	o := ClientOptions{Kubeconfig: kubeconfig, QPS: 7, Burst: 9}
	cfg, err := o.Config("termgate-test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.QPS != 7 || cfg.Burst != 9 || cfg.UserAgent != "termgate-test" || cfg.Host != "https://127.0.0.1:6443" {
		t.Fatalf("got %+v", cfg)
	}
	if _, err := (ClientOptions{Kubeconfig: filepath.Join(t.TempDir(), "missing")}).Config("x"); err == nil {
		t.Fatal("a missing kubeconfig was accepted")
	}
	if err := (ClientOptions{QPS: 0, Burst: 1}).Validate(); err == nil {
		t.Fatal("QPS 0 accepted")
	}
}

// The first component to fail stops the others, and Wait reports it.
func TestGroupStopsEveryComponentOnTheFirstFailure(t *testing.T) {
	g, ctx := NewGroup(context.Background())
	g.Go("waits", func() error { <-ctx.Done(); return nil })
	g.Go("fails", func() error { return errors.New("boom") })
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "fails: boom") {
			t.Fatalf("Wait returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting component was not stopped")
	}
}
