package daemon

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"
)

// serve starts s on a loopback port and returns its address; cleanup stops
// it and checks it shut down cleanly.
func serve(t *testing.T, s Server) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("shutdown: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server still running after its context ended")
		}
	})
	return ln.Addr().String()
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })

// testLimits are ProbeLimits with short timeouts, so a test that waits
// for one to pass is quick; a lost setting still fails it (the defaults
// of net/http are none or minutes).
func testLimits() ServerLimits {
	l := ProbeLimits()
	l.ReadHeaderTimeout, l.IdleTimeout = 300*time.Millisecond, 300*time.Millisecond
	return l
}

func TestServeAnswersUntilItsContextEnds(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(ln.Addr().String()); err == nil {
		t.Fatal("a port in use was accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- (Server{Name: "test", Handler: okHandler, Limits: ProbeLimits()}).Serve(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("answered %q", b)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server still running after its context ended")
	}
}

func TestServerLimitsAreValidated(t *testing.T) {
	for name, l := range map[string]ServerLimits{"probes": ProbeLimits(), "metrics": MetricsLimits()} {
		if err := l.Validate(); err != nil {
			t.Errorf("%s defaults refused: %v", name, err)
		}
	}
	tests := map[string]func(*ServerLimits){
		"A zero idle timeout is refused.":                        func(l *ServerLimits) { l.IdleTimeout = 0 },
		"No connection limit is refused.":                        func(l *ServerLimits) { l.MaxConnections = 0 },
		"No header limit is refused.":                            func(l *ServerLimits) { l.MaxHeaderBytes = 0 },
		"A peer share above the connection limit is refused.":    func(l *ServerLimits) { l.MaxConnectionsPerPeer = l.MaxConnections + 1 },
		"A negative peer share is refused.":                      func(l *ServerLimits) { l.MaxConnectionsPerPeer = -1 },
		"A zero header timeout, which net/http reads as none.":   func(l *ServerLimits) { l.ReadHeaderTimeout = 0 },
		"A zero write timeout lets a slow reader hold the slot.": func(l *ServerLimits) { l.WriteTimeout = 0 },
	}
	for name, change := range tests {
		t.Run(name, func(t *testing.T) {
			l := MetricsLimits()
			change(&l)
			if err := l.Validate(); err == nil {
				t.Fatalf("%+v accepted", l)
			}
			if err := (Server{Name: "x", Handler: okHandler, Limits: l}).Serve(context.Background(), nil); err == nil {
				t.Fatal("Serve started with invalid limits")
			}
		})
	}
}

// An idle keep-alive connection is closed after the idle timeout, and one
// that never sends a request after the header timeout: neither holds a
// slot for long.
func TestIdleAndSilentConnectionsAreClosed(t *testing.T) {
	addr := serve(t, Server{Name: "test", Handler: okHandler, Limits: testLimits()})
	for name, request := range map[string]string{
		"silent":     "",
		"keep-alive": "GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if request != "" {
				if _, err := io.WriteString(conn, request); err != nil {
					t.Fatal(err)
				}
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			start := time.Now()
			_, err = io.Copy(io.Discard, conn) // the answer, if any, then EOF
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				t.Fatal("the server kept the connection open for 10s")
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("closed after %v, want about 300ms", d)
			}
		})
	}
}

func TestLargeHeadersAreRefused(t *testing.T) {
	addr := serve(t, Server{Name: "test", Handler: okHandler, Limits: ProbeLimits()})
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("X-Fill", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("64 KiB of headers answered %d, want 431", resp.StatusCode)
	}
}

// dialHeld opens a connection and proves the server accepted it (it
// answers a request on it), leaving it open.
func dialHeld(t *testing.T, local, addr string) (net.Conn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	resp.Body.Close()
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

func TestAPeerBeyondItsShareIsClosedWhileOthersAreServed(t *testing.T) {
	var shed atomic.Int64
	l := ProbeLimits()
	l.MaxConnections, l.MaxConnectionsPerPeer = 4, 2
	addr := serve(t, Server{Name: "test", Handler: okHandler, Limits: l, OnShed: func() { shed.Add(1) }})
	for range 2 {
		c, err := dialHeld(t, "127.0.0.1", addr)
		if err != nil {
			t.Fatalf("a connection within the share: %v", err)
		}
		defer c.Close()
	}
	if c, err := dialHeld(t, "127.0.0.1", addr); err == nil {
		c.Close()
		t.Fatal("a third connection of the same peer was served")
	}
	if shed.Load() != 1 {
		t.Fatalf("%d connections counted as shed, want 1", shed.Load())
	}
	c, err := dialHeld(t, "127.0.0.2", addr)
	if err != nil {
		t.Fatalf("another peer was not served: %v", err)
	}
	c.Close()
}

func TestConnectionsBeyondTheCapWaitForAFreeSlot(t *testing.T) {
	l := ProbeLimits()
	l.MaxConnections = 1
	addr := serve(t, Server{Name: "test", Handler: okHandler, Limits: l})
	first, err := dialHeld(t, "127.0.0.1", addr)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 1)
	go func() {
		c, err := dialHeld(t, "127.0.0.1", addr)
		if err == nil {
			c.Close()
		}
		waiting <- err
	}()
	select {
	case err := <-waiting:
		t.Fatalf("a second connection was answered while the limit is 1 (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	first.Close()
	if err := <-waiting; err != nil {
		t.Fatalf("the waiting connection was not served after a slot freed: %v", err)
	}
}

func TestHTTP2IsNotOffered(t *testing.T) {
	tlsCfg, _, err := metricsTLS("", clock.RealClock{})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, Server{Name: "test", Handler: okHandler, Limits: MetricsLimits(), TLSConfig: tlsCfg})
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}) //nolint:gosec // self-signed
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Fatal("the server negotiated HTTP/2")
	}
}
