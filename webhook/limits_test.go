package webhook

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"termgate.dev/termgate/webhook/review"
)

// heldHandler blocks every call until released, so tests can fill the
// server's slots.
type heldHandler struct {
	entered chan struct{}
	release chan struct{}
}

func (h *heldHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	h.entered <- struct{}{}
	<-h.release
	w.WriteHeader(http.StatusOK)
}

func call(h http.Handler, body string, declared int64) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/validate-binding", strings.NewReader(body))
	r.ContentLength = declared
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestCallsBeyondTheLimitsAreRefusedAtOnce(t *testing.T) {
	tests := map[string]struct {
		limits   Limits
		held     []int64 // declared lengths of the calls holding slots
		declared int64   // the call tried next
		want     int
	}{
		"A call beyond the in-flight count gets 429.": {
			limits: Limits{MaxBodyBytes: 1 << 20, MaxInFlight: 2, MaxInFlightBodyBytes: 8 << 20}, held: []int64{100, 100}, declared: 100, want: http.StatusTooManyRequests,
		},
		"A large call beyond the body budget gets 429.": {
			limits: Limits{MaxBodyBytes: 2 << 20, MaxInFlight: 10, MaxInFlightBodyBytes: 2 << 20}, held: []int64{1 << 20}, declared: 1<<20 + 1, want: http.StatusTooManyRequests,
		},
		"A small call still passes while large calls fill most of the budget.": {
			limits: Limits{MaxBodyBytes: 1 << 20, MaxInFlight: 10, MaxInFlightBodyBytes: 2<<20 + minCallWeight}, held: []int64{1 << 20, 1 << 20}, declared: 200, want: http.StatusOK,
		},
		"A call of unknown length counts as the largest body.": {
			limits: Limits{MaxBodyBytes: 1 << 20, MaxInFlight: 10, MaxInFlightBodyBytes: 3 << 19}, held: []int64{-1}, declared: 1<<19 + 1, want: http.StatusTooManyRequests,
		},
		"A declared body over the cap gets 413 even when idle.": {
			limits: Limits{MaxBodyBytes: 1 << 20, MaxInFlight: 10, MaxInFlightBodyBytes: 8 << 20}, declared: 1<<20 + 1, want: http.StatusRequestEntityTooLarge,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			metrics, err := review.NewMetrics(prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			held := &heldHandler{entered: make(chan struct{}), release: make(chan struct{})}
			h := newLimitCalls(held, tc.limits, metrics)
			var wg sync.WaitGroup
			for _, n := range tc.held {
				wg.Go(func() { call(h, "", n) })
				select {
				case <-held.entered:
				case <-time.After(10 * time.Second):
					t.Fatalf("a call of %d bytes filling a slot was not admitted", n)
				}
			}
			done := make(chan *httptest.ResponseRecorder, 1)
			go func() { done <- call(h, "", tc.declared) }()
			var got *httptest.ResponseRecorder
			select {
			case got = <-done:
			case <-held.entered: // admitted: let every call finish
				close(held.release)
				got = <-done
			case <-time.After(10 * time.Second):
				t.Fatal("the call neither got in nor was refused")
			}
			select {
			case <-held.release:
			default:
				close(held.release)
			}
			wg.Wait()
			if got.Code != tc.want {
				t.Fatalf("got %d (%s), want %d", got.Code, strings.TrimSpace(got.Body.String()), tc.want)
			}
			if got.Code == http.StatusTooManyRequests && got.Header().Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
			if h.inFlight.Load() != 0 || h.bytes.Load() != 0 {
				t.Fatalf("slots leaked: %d calls, %d bytes", h.inFlight.Load(), h.bytes.Load())
			}
		})
	}
}

func TestAnUndeclaredBodyIsCutAtTheCap(t *testing.T) {
	var readErr error
	h := newLimitCalls(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, readErr = io.Copy(io.Discard, r.Body)
	}), Limits{MaxBodyBytes: 1000, MaxInFlight: 1, MaxInFlightBodyBytes: 1 << 20}, nil)
	call(h, strings.Repeat("x", 1001), -1)
	var tooLarge *http.MaxBytesError
	if !errors.As(readErr, &tooLarge) {
		t.Fatalf("read error %v, want the body cut at 1000 bytes", readErr)
	}
}

func TestLimitsAreValidated(t *testing.T) {
	if err := DefaultLimits().Validate(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	l := DefaultLimits()
	l.MaxInFlightBodyBytes = l.MaxBodyBytes - 1
	if err := l.Validate(); err == nil || !strings.Contains(err.Error(), "never be served") {
		t.Fatalf("a budget below one body: got %v", err)
	}
	l = DefaultLimits()
	l.ReadTimeout = 0
	if err := l.Validate(); err == nil {
		t.Fatal("a zero read timeout was accepted")
	}
}
