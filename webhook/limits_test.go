package webhook

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
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
			h := newLimitCalls(held, tc.limits.withDefaults(), metrics, nil)
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
	}), Limits{MaxBodyBytes: 1000, MaxInFlight: 1, MaxInFlightBodyBytes: 1 << 20}.withDefaults(), nil, nil)
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

// readingCall is a call whose body arrives only when finish is called; the
// handler reads it to the end.
type readingCall struct {
	w      *httptest.ResponseRecorder
	body   *io.PipeWriter
	done   chan struct{}
	reader sync.Once
}

func (c *readingCall) finish() { c.reader.Do(func() { c.body.Close() }) }

// startCall sends a call of declared bytes from peer and returns once the
// handler is reading its body or the call was answered.
func startCall(t *testing.T, h http.Handler, entered chan struct{}, peer string, declared int64) *readingCall {
	t.Helper()
	pr, pw := io.Pipe()
	r := httptest.NewRequest(http.MethodPost, "/validate-binding", pr)
	r.ContentLength, r.RemoteAddr = declared, peer
	c := &readingCall{w: httptest.NewRecorder(), body: pw, done: make(chan struct{})}
	go func() { h.ServeHTTP(c.w, r); close(c.done) }()
	select {
	case <-entered:
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the call neither got in nor was refused")
	}
	t.Cleanup(func() { c.finish(); <-c.done })
	return c
}

func (c *readingCall) refused() bool {
	select {
	case <-c.done:
		return c.w.Code == http.StatusTooManyRequests
	default:
		return false
	}
}

func TestAPeerWithBodiesStillArrivingCannotTakeEverySlot(t *testing.T) {
	metrics, err := review.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{}, 16)
	reader := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		_, _ = io.Copy(io.Discard, r.Body)
	})
	l := Limits{MaxBodyBytes: 1 << 20, MaxInFlight: 10, MaxInFlightBodyBytes: 8 << 20, MaxReadingPerPeer: 2}.withDefaults()
	h := newLimitCalls(reader, l, metrics, []netip.Prefix{netip.MustParsePrefix("172.16.0.0/28")})
	const a, b = "192.0.2.1:40000", "192.0.2.2:40000"
	first := startCall(t, h, entered, a, 100)
	startCall(t, h, entered, a, 100)
	if c := startCall(t, h, entered, a, 100); !c.refused() {
		t.Fatalf("a third call of a peer with two bodies arriving was not refused (%d)", c.w.Code)
	}
	if c := startCall(t, h, entered, b, 100); c.refused() {
		t.Fatal("another peer's call was refused")
	}
	// Once a body has arrived the call no longer counts against its peer.
	first.finish()
	<-first.done
	if c := startCall(t, h, entered, a, 100); c.refused() {
		t.Fatal("the peer's call was refused after one of its bodies had arrived")
	}
	// A peer's declared bodies may hold a quarter of the budget (2 MiB).
	const big = "192.0.2.3:40000"
	startCall(t, h, entered, big, 1<<20)
	startCall(t, h, entered, big, 1<<20-minCallWeight)
	if c := startCall(t, h, entered, big, minCallWeight+1); !c.refused() {
		t.Fatal("a peer's bodies were admitted beyond its share of the body budget")
	}
}

// With the control plane's range given, calls from elsewhere are counted,
// and only they are bounded per peer; without it nobody is.
func TestCallsFromOutsideTheExpectedRangesAreCountedAndBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := review.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{}, 16)
	reader := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		_, _ = io.Copy(io.Discard, r.Body)
	})
	l := Limits{MaxBodyBytes: 1 << 20, MaxInFlight: 10, MaxInFlightBodyBytes: 8 << 20, MaxReadingPerPeer: 1}.withDefaults()
	h := newLimitCalls(reader, l, metrics, []netip.Prefix{netip.MustParsePrefix("172.16.0.0/28")})
	for range 3 {
		if c := startCall(t, h, entered, "172.16.0.2:443", 100); c.refused() {
			t.Fatal("the control plane was bounded per peer")
		}
	}
	startCall(t, h, entered, "10.8.0.5:5000", 100)
	if c := startCall(t, h, entered, "10.8.0.5:5001", 100); !c.refused() {
		t.Fatal("an unexpected peer was not bounded")
	}
	if c := startCall(t, h, entered, "[::ffff:172.16.0.3]:443", 100); c.refused() {
		t.Fatal("an IPv4-mapped control-plane address was taken for another peer")
	}
	if got := unexpectedCalls(t, reg); got != 2 {
		t.Fatalf("counted %v calls from unexpected peers, want 2", got)
	}
	open := newLimitCalls(reader, l, metrics, nil)
	for range 3 {
		if c := startCall(t, open, entered, "10.8.0.6:5000", 100); c.refused() {
			t.Fatal("a peer was bounded without expected ranges")
		}
	}
	if got := unexpectedCalls(t, reg); got != 2 {
		t.Fatalf("calls counted as unexpected without expected ranges (%v)", got)
	}
}

func unexpectedCalls(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "termgate_webhook_unexpected_peer_calls_total" {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}
