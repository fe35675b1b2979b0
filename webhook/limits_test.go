package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
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

func TestConnectionsBeyondTheLimitWaitForAFreeSlot(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newLimitListener(inner, 1)
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	first := <-accepted
	dial()
	select {
	case <-accepted:
		t.Fatal("a second connection was accepted while the limit is 1")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting connection was not accepted after a slot freed")
	}
}

// serveTLS runs a Server with limits on loopback and returns its address.
func serveTLS(t *testing.T, limits Limits, h http.Handler) string {
	t.Helper()
	pems, err := selfmanaged.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := certs.WriteFiles(dir, pems.Cert, pems.Key); err != nil {
		t.Fatal(err)
	}
	reloader := certs.NewReloader(dir, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Handler: h, TLSConfig: certs.ServerConfig(reloader.GetCertificate), Clock: clock.RealClock{}, Limits: limits}
	done := make(chan struct{}, 2)
	go func() { _ = reloader.Start(ctx); done <- struct{}{} }()
	go func() { _ = srv.Serve(ctx, ln); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	return ln.Addr().String()
}

func TestASilentConnectionIsClosedAfterTheHeaderTimeout(t *testing.T) {
	addr := serveTLS(t, Limits{ReadHeaderTimeout: 300 * time.Millisecond}, http.NotFoundHandler())
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Send nothing, not even a TLS hello: the server must hang up.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = conn.Read(make([]byte, 1))
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatal("the server kept a silent connection open for 10s")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v, want about 300ms", d)
	}
}

func TestTheServerOffersHTTP2WithItsStreamCap(t *testing.T) {
	addr := serveTLS(t, Limits{MaxConcurrentStreams: 7}, http.NotFoundHandler())
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // loopback test server
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	// Client preface, then read the server's SETTINGS frame.
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	header := make([]byte, 9)
	if _, err := io.ReadFull(conn, header); err != nil {
		t.Fatal(err)
	}
	if header[3] != 0x4 {
		t.Fatalf("first frame type %d, want SETTINGS", header[3])
	}
	payload := make([]byte, int(header[0])<<16|int(header[1])<<8|int(header[2]))
	if _, err := io.ReadFull(conn, payload); err != nil {
		t.Fatal(err)
	}
	for i := 0; i+6 <= len(payload); i += 6 {
		id := int(payload[i])<<8 | int(payload[i+1])
		val := int(payload[i+2])<<24 | int(payload[i+3])<<16 | int(payload[i+4])<<8 | int(payload[i+5])
		if id == 0x3 { // SETTINGS_MAX_CONCURRENT_STREAMS
			if val != 7 {
				t.Fatalf("max concurrent streams %d, want 7", val)
			}
			return
		}
	}
	t.Fatal("the server's SETTINGS carry no stream cap")
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
