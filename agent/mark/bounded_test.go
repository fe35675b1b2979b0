package mark

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
)

// An API server that accepts the connection and never answers (a
// black-holed route) must not hang the mark path: each call ends at
// callTimeout and the caller retries.
func TestMarkCallsEndAtTheirTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	mk := New(client, clock.RealClock{}, "n", false)
	done := make(chan error, 1)
	go func() { done <- mk.Mark(context.Background(), node(nil, nil), preempted, corev1.TaintEffectNoSchedule) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("mark succeeded against a server that never answers")
		}
	case <-time.After(callTimeout + 5*time.Second):
		t.Fatalf("mark still hanging %s after its %s call timeout", 5*time.Second, callTimeout)
	}
}
