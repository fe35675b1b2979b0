package webhook_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/bindgate"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

// BenchmarkBindGate measures the bind fast path in process: decode, cache
// lookup, encode; no TLS.
func BenchmarkBindGate(b *testing.B) {
	store := nodecache.NewStore()
	for i := range 1000 {
		_ = store.Add(nodecache.NodeMeta("node-"+strconv.Itoa(i), nil))
	}
	gate := bindgate.New(nodecache.NewFromStore(store), noPods{}, bindgate.Options{TaintEffect: corev1.TaintEffectNoSchedule}, nil)
	h := review.NewHandler(gate, logr.Discard(), clock.RealClock{}, nil)
	body := bindReview("web-0", "node-500")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{header: http.Header{}}
		for pb.Next() {
			r := httptest.NewRequest(http.MethodPost, webhook.PathBinding, bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			h.ServeHTTP(w, r)
			if w.code != 0 && w.code != 200 {
				b.Fatalf("status %d", w.code)
			}
		}
	})
}

// BenchmarkBindGateHTTPS drives the real server over HTTPS keep-alive.
func BenchmarkBindGateHTTPS(b *testing.B) {
	f := startWebhook(b, 1000, 0, clock.RealClock{})
	body := bindReview("web-0", "node-501")
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := f.post(webhook.PathBinding, body)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

type discardWriter struct {
	header http.Header
	code   int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
