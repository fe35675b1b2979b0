package drain

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestWithoutHiddenRetriesLeavesRetriesToTheQueue(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	rt := WithoutHiddenRetries(http.DefaultTransport)
	for _, tc := range []struct {
		method, path string
		stripped     bool
	}{
		{http.MethodPost, "/api/v1/namespaces/a/pods/p/eviction", true},
		{http.MethodDelete, "/api/v1/namespaces/a/pods/p", true},
		{http.MethodPatch, "/api/v1/nodes/n", false},
		{http.MethodGet, "/api/v1/namespaces/a/pods/p", false},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Retry-After") == ""; got != tc.stripped {
			t.Errorf("%s %s: Retry-After removed = %v, want %v", tc.method, tc.path, got, tc.stripped)
		}
	}
}

// TestTheAskedWaitReachesTheQueue: the header client-go would act on is
// removed, and the wait it asked for is handed to the call's note, so the
// queue can honour a throttling server's Retry-After itself.
func TestTheAskedWaitReachesTheQueue(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3")
		http.Error(w, "Too many requests, please try again later.", http.StatusTooManyRequests)
	}))
	defer srv.Close()
	ctx, note := withRetryAfterNote(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/api/v1/namespaces/a/pods/p/eviction", nil)
	resp, err := WithoutHiddenRetries(http.DefaultTransport).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Retry-After") != "" {
		t.Error("Retry-After left for client-go to act on")
	}
	if got := note.get(); got != 3*time.Second {
		t.Errorf("note holds %s, want 3s", got)
	}
}
