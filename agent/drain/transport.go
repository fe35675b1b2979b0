package drain

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// WithoutHiddenRetries wraps the agent's API transport so that evictions
// and pod deletes are retried by the eviction queue alone. client-go
// retries a 429 or 5xx that carries Retry-After by itself, inside one call
// and out of the queue's sight: such a call goes on sending evictions after
// the drain was stopped (a withdrawn notice), and its waits are not the
// queue's jittered backoff. Removing the header from these answers leaves
// every retry to the queue, which checks the drain is still wanted first.
// The wait the server asked for is not lost: it is handed to the call's
// retryAfterNote, if the call's context carries one.
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
		if note, ok := r.Context().Value(retryAfterKey{}).(*retryAfterNote); ok {
			note.set(resp.Header.Get("Retry-After"))
		}
		resp.Header.Del("Retry-After")
	}
	return resp, err
}

type retryAfterKey struct{}

// retryAfterNote receives the Retry-After of one call's answer.
type retryAfterNote struct{ d atomic.Int64 }

// withRetryAfterNote returns a context whose calls report the server's
// Retry-After (in seconds, the only form the API server sends) to note.
func withRetryAfterNote(ctx context.Context) (context.Context, *retryAfterNote) {
	note := &retryAfterNote{}
	return context.WithValue(ctx, retryAfterKey{}, note), note
}

func (n *retryAfterNote) set(header string) {
	if secs, err := strconv.Atoi(strings.TrimSpace(header)); err == nil && secs > 0 {
		n.d.Store(int64(time.Duration(secs) * time.Second))
	}
}

// get is the wait asked for, zero if none.
func (n *retryAfterNote) get() time.Duration { return time.Duration(n.d.Load()) }

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
