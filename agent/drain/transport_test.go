package drain

import (
	"net/http"
	"net/http/httptest"
	"testing"
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
