package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
)

// readyzServer stands in for the API server's /readyz and counts calls.
type readyzServer struct {
	calls   atomic.Int64
	failing atomic.Bool
}

func (s *readyzServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/readyz" {
		http.NotFound(w, r)
		return
	}
	s.calls.Add(1)
	if s.failing.Load() {
		http.Error(w, "etcd not ready", http.StatusInternalServerError)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// However often readiness is asked, the API server is asked once per
// interval; the answer follows the API server's, and goes stale when the
// checks stop.
func TestReadinessAsksTheAPIServerOncePerIntervalWhateverTheProbeRate(t *testing.T) {
	api := &readyzServer{}
	srv := httptest.NewServer(api)
	defer srv.Close()
	dc, err := discovery.NewDiscoveryClientForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakeClock(time.Now())
	check := NewAPICheck(dc.RESTClient(), clk, 10*time.Second)
	if err := check.Err(); err == nil {
		t.Fatal("ready before the first check")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- check.Run(ctx) }()
	waitFor(t, "the first check", func() bool { return check.Err() == nil })
	for range 10000 {
		if err := check.Err(); err != nil {
			t.Fatalf("not ready after a good check: %v", err)
		}
	}
	if n := api.calls.Load(); n != 1 {
		t.Fatalf("10000 readiness answers made %d API calls, want 1", n)
	}

	api.failing.Store(true)
	waitFor(t, "the ticker", clk.HasWaiters)
	clk.Step(10 * time.Second)
	waitFor(t, "the failed check", func() bool { return check.Err() != nil })
	if err := check.Err(); !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("failed check reported as %v", err)
	}
	if n := api.calls.Load(); n != 2 {
		t.Fatalf("%d API calls after one interval, want 2", n)
	}

	api.failing.Store(false)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	clk.Step(31 * time.Second)
	if err := check.Err(); err == nil || !strings.Contains(err.Error(), "last checked") {
		t.Fatalf("checks stopped 31s ago, readiness says %v", err)
	}
}
