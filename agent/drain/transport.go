package drain

import (
	"net/http"
	"strings"
)

// WithoutHiddenRetries wraps the agent's API transport so that evictions
// and pod deletes are retried by the eviction queue alone. client-go
// retries a 429 or 5xx that carries Retry-After by itself, inside one call
// and out of the queue's sight: such a call goes on sending evictions after
// the drain was stopped (a withdrawn notice), and its waits are not the
// queue's jittered backoff. Removing the header from these answers leaves
// every retry to the queue, which checks the drain is still wanted first.
func WithoutHiddenRetries(next http.RoundTripper) http.RoundTripper {
	return hiddenRetryStripper{next: next}
}

type hiddenRetryStripper struct{ next http.RoundTripper }

func (s hiddenRetryStripper) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(r)
	if err != nil || resp == nil || !isPodRemoval(r) {
		return resp, err
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= http.StatusInternalServerError {
		resp.Header.Del("Retry-After")
	}
	return resp, err
}

// isPodRemoval matches POST .../pods/<name>/eviction and DELETE .../pods/<name>.
func isPodRemoval(r *http.Request) bool {
	p := r.URL.Path
	switch r.Method {
	case http.MethodPost:
		return strings.HasSuffix(p, "/eviction") && strings.Contains(p, "/pods/")
	case http.MethodDelete:
		return strings.Contains(p, "/pods/")
	}
	return false
}
