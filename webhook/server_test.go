package webhook_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

// fixture is a webhook Server serving over HTTPS on 127.0.0.1:0.
type fixture struct {
	url       string
	addr      string
	tlsConfig *tls.Config // trusts the server's certificate
	client    *http.Client
	server    *webhook.Server
	stop      func()
	done      chan error
}

// startWebhook serves every gate with n nodes in the cache, every tenth of
// them terminating.
func startWebhook(tb testing.TB, nodes int, shutdownDelay time.Duration, clk clock.Clock) *fixture {
	tb.Helper()
	store := nodecache.NewStore()
	for i := range nodes {
		var ann map[string]string
		if i%10 == 0 {
			ann = nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: time.Now(), Deadline: time.Now().Add(30 * time.Second)}.Annotations()
		}
		_ = store.Add(nodecache.NodeMeta(fmt.Sprintf("node-%d", i), ann))
	}
	metrics, err := review.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	return startServer(tb, &webhook.Server{
		Handler: webhook.Handler(webhook.Config{
			Nodes: nodecache.NewFromStore(store), Pods: noPods{}, TaintEffect: corev1.TaintEffectNoSchedule,
			Agent: confine.Options{Username: "agent"}, Metrics: metrics, Log: logr.Discard(), Clock: clk,
		}),
		ShutdownDelay: shutdownDelay,
		Clock:         clk,
	}, clk)
}

// startServer gives srv a fresh certificate, serves it on loopback and
// returns once it answers over TLS; cleanup stops it.
func startServer(tb testing.TB, srv *webhook.Server, clk clock.Clock) *fixture {
	tb.Helper()
	pems, err := selfmanaged.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	if err := certs.WriteFiles(dir, pems.Cert, pems.Key); err != nil {
		tb.Fatal(err)
	}
	reloader := certs.NewReloader(dir, clk)
	srv.TLSConfig = certs.ServerConfig(reloader.GetCertificate)
	ctx, cancel := context.WithCancel(context.Background())
	reloaded := make(chan struct{})
	go func() { _ = reloader.Start(ctx); close(reloaded) }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		<-reloaded
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pems.CA)
	tlsConfig := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     tlsConfig.Clone(),
		MaxIdleConnsPerHost: 64,
	}, Timeout: 10 * time.Second}
	addr := ln.Addr().String()
	f := &fixture{url: "https://" + addr, addr: addr, tlsConfig: tlsConfig, client: client, server: srv, done: done}
	var once sync.Once
	f.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("webhook server: %v", err)
			}
			<-reloaded
			client.CloseIdleConnections()
		})
	}
	tb.Cleanup(f.stop)
	waitServing(tb, f)
	return f
}

// waitServing polls until the certificate is loaded and the server answers
// a review (with any status: the handler may not be a gate).
func waitServing(tb testing.TB, f *fixture) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := f.post(webhook.PathBinding, bindReview("p", "node-1"))
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("webhook not serving: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) post(path string, body []byte) (*http.Response, error) {
	return f.client.Post(f.url+path, "application/json", bytes.NewReader(body))
}

type noPods struct{}

func (noPods) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	p.Name, p.Namespace = name, ns
	return p, nil
}

func bindReview(pod, node string) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"0f9a1c7e-5b7e-4a55-9a55-2b1f3c1e1a10","kind":{"group":"","version":"v1","kind":"Binding"},"resource":{"group":"","version":"v1","resource":"pods"},"subResource":"binding","requestKind":{"group":"","version":"v1","kind":"Binding"},"requestResource":{"group":"","version":"v1","resource":"pods"},"requestSubResource":"binding","name":"` + pod + `","namespace":"default","operation":"CREATE","userInfo":{"username":"system:kube-scheduler","groups":["system:authenticated"]},"object":{"kind":"Binding","apiVersion":"v1","metadata":{"name":"` + pod + `","namespace":"default","uid":"9b0e2c0a-3f1e-4a8e-8f51-7d2f0e6c4b11","creationTimestamp":null},"target":{"kind":"Node","name":"` + node + `"}},"oldObject":null,"dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}`)
}

func decode(t *testing.T, resp *http.Response) *admissionv1.AdmissionResponse {
	t.Helper()
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var r admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &r); err != nil || r.Response == nil {
		t.Fatalf("bad review %s: %v", body, err)
	}
	return r.Response
}

func TestEveryGateIsServedAtItsPath(t *testing.T) {
	f := startWebhook(t, 20, 0, clock.RealClock{})
	pinned := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","namespace":"default","operation":"CREATE","object":{"metadata":{"name":"p"},"spec":{"nodeName":"node-10"}}}}`
	plainPod := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","namespace":"default","operation":"CREATE","object":{"metadata":{"name":"p"},"spec":{}}}}`
	eviction := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","name":"p","namespace":"default","operation":"CREATE","subResource":"eviction","userInfo":{"username":"agent"},"object":{}}}`
	tests := map[string]struct {
		path, body  string
		wantAllowed bool
		wantPatch   bool
		wantMessage string
	}{
		"The bind path allows a bind onto a healthy node.":               {path: webhook.PathBinding, body: string(bindReview("p", "node-1")), wantAllowed: true},
		"The bind path denies a bind onto a terminating node.":           {path: webhook.PathBinding, body: string(bindReview("p", "node-10")), wantMessage: "node node-10 is terminating"},
		"The pinned-pod path denies a pod pinned to a terminating node.": {path: webhook.PathPinnedPod, body: pinned, wantMessage: "node node-10 is terminating"},
		"The drain-order path stamps a new pod.":                         {path: webhook.PathDrainOrder, body: plainPod, wantAllowed: true, wantPatch: true},
		"The agent path denies an eviction by an unbound agent token.":   {path: webhook.PathAgent, body: eviction, wantMessage: confine.ExtraNodeName},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			resp, err := f.post(tc.path, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			r := decode(t, resp)
			if r.Allowed != tc.wantAllowed || (len(r.Patch) > 0) != tc.wantPatch {
				t.Fatalf("got %+v", r)
			}
			if tc.wantMessage != "" && (r.Result == nil || !strings.Contains(r.Result.Message, tc.wantMessage)) {
				t.Fatalf("got %+v, want message containing %q", r.Result, tc.wantMessage)
			}
		})
	}
}

func TestTLSBelow12IsRefused(t *testing.T) {
	f := startWebhook(t, 1, 0, clock.RealClock{})
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}}} //nolint:gosec // the point of the test
	if _, err := c.Post(f.url+webhook.PathBinding, "application/json", bytes.NewReader(bindReview("p", "node-1"))); err == nil {
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
}

func TestShutdownKeepsServingThroughTheDelay(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	f := startWebhook(t, 5, time.Minute, clk)
	stopped := make(chan struct{})
	go func() { f.stop(); close(stopped) }()
	// Readiness turns false first...
	deadline := time.Now().Add(5 * time.Second)
	for f.server.Draining() == nil {
		if time.Now().After(deadline) {
			t.Fatal("server never reported draining")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// ...while reviews are still answered until the delay has passed.
	resp, err := f.post(webhook.PathBinding, bindReview("p", "node-1"))
	if err != nil {
		t.Fatalf("review during the shutdown delay failed: %v", err)
	}
	if r := decode(t, resp); !r.Allowed {
		t.Fatalf("got %+v", r)
	}
	// The server starts its shutdown delay on the fake clock at once; a
	// second of real time is a bound only a broken server exceeds.
	for bound := time.Now().Add(time.Second); !clk.HasWaiters(); time.Sleep(time.Millisecond) {
		if time.Now().After(bound) {
			t.Fatal("the server never started its shutdown delay")
		}
	}
	clk.Step(time.Minute)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop after the delay")
	}
}

func TestConnectionsBeyondTheLimitWaitForAFreeSlot(t *testing.T) {
	f := startServer(t, &webhook.Server{Handler: http.NotFoundHandler(), Clock: clock.RealClock{}, Limits: webhook.Limits{MaxConnections: 1}}, clock.RealClock{})
	// waitServing's keep-alive connection holds the only slot: let it go.
	f.client.CloseIdleConnections()
	type dialed struct {
		conn *tls.Conn
		err  error
	}
	// A TLS handshake completes only once the server has accepted the
	// connection; the dialer's timeout bounds connect and handshake.
	dial := func() <-chan dialed {
		ch := make(chan dialed, 1)
		go func() {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", f.addr, f.tlsConfig)
			ch <- dialed{c, err}
		}()
		return ch
	}
	first := <-dial()
	if first.err != nil {
		t.Fatalf("the first connection: %v", first.err)
	}
	defer first.conn.Close()
	waiting := dial()
	select {
	case d := <-waiting:
		if d.conn != nil {
			d.conn.Close()
		}
		t.Fatalf("a second connection was served while the limit is 1 (handshake error: %v)", d.err)
	case <-time.After(200 * time.Millisecond):
	}
	first.conn.Close()
	d := <-waiting
	if d.err != nil {
		t.Fatalf("the waiting connection was not served after a slot freed: %v", d.err)
	}
	d.conn.Close()
}

func TestASilentConnectionIsClosedAfterTheHeaderTimeout(t *testing.T) {
	f := startServer(t, &webhook.Server{Handler: http.NotFoundHandler(), Clock: clock.RealClock{}, Limits: webhook.Limits{ReadHeaderTimeout: 300 * time.Millisecond}}, clock.RealClock{})
	conn, err := net.Dial("tcp", f.addr)
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
	// Well below the 5s default, so a lost setting fails.
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v, want about 300ms", d)
	}
}

func TestTheServerOffersHTTP2WithItsStreamCap(t *testing.T) {
	f := startServer(t, &webhook.Server{Handler: http.NotFoundHandler(), Clock: clock.RealClock{}, Limits: webhook.Limits{MaxConcurrentStreams: 7}}, clock.RealClock{})
	cfg := f.tlsConfig.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", f.addr, cfg)
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
