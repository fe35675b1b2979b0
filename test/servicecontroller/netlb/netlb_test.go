package netlb

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeNetwork: each host has a health answer the test flips and a backend
// that answers with the host's name.
type fakeNetwork struct {
	mu      sync.Mutex
	healthy map[string]bool
	down    map[string]bool
	health  *httptest.Server
	backend net.Listener
}

func newFakeNetwork(t *testing.T) *fakeNetwork {
	f := &fakeNetwork{healthy: map[string]bool{}, down: map[string]bool{}}
	f.health = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		ok := f.healthy[strings.TrimPrefix(r.URL.Path, "/")]
		f.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(f.health.Close)
	return f
}

func (f *fakeNetwork) set(host string, healthy bool) {
	f.mu.Lock()
	f.healthy[host] = healthy
	f.mu.Unlock()
}

func (f *fakeNetwork) HealthURL(host string) string { return f.health.URL + "/" + host }

// Dial answers with a pipe whose far end writes the host's name.
func (f *fakeNetwork) Dial(_ context.Context, host string, _ int) (net.Conn, error) {
	f.mu.Lock()
	down := f.down[host]
	f.mu.Unlock()
	if down {
		return nil, errors.New("no endpoint")
	}
	a, b := net.Pipe()
	go func() { _, _ = b.Write([]byte(host + "\n")); b.Close() }()
	return a, nil
}

func ask(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "failed"
	}
	return strings.TrimSpace(line)
}

func startBalancer(t *testing.T, f *fakeNetwork, hc HealthCheck) (*Balancer, string) {
	t.Helper()
	b, err := New(net.IPv4(127, 0, 0, 1), []int{0}, f, hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b, b.listeners[0].Addr().String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestOnlyHealthyHostsInTheSetGetConnections(t *testing.T) {
	f := newFakeNetwork(t)
	f.set("a", true)
	f.set("b", false)
	f.set("c", true) // healthy, never in the set
	hc := HealthCheck{Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond, UnhealthyThreshold: 3, HealthyThreshold: 1}
	b, addr := startBalancer(t, f, hc)
	b.SetHosts([]string{"a", "b"})
	eventually(t, "a healthy", func() bool { return len(b.Status().Healthy) == 1 })
	for range 10 {
		if got := ask(t, addr); got != "a" {
			t.Fatalf("connection went to %q, want only the healthy host in the set", got)
		}
	}
	// b recovers: both take connections.
	f.set("b", true)
	eventually(t, "b healthy", func() bool { return len(b.Status().Healthy) == 2 })
	seen := map[string]bool{}
	for range 10 {
		seen[ask(t, addr)] = true
	}
	if !seen["a"] || !seen["b"] || seen["c"] {
		t.Errorf("hosts that answered: %v, want a and b", seen)
	}
	// a leaves the set: not one new connection reaches it.
	b.SetHosts([]string{"b"})
	for range 10 {
		if got := ask(t, addr); got != "b" {
			t.Fatalf("after a left the set a connection went to %q", got)
		}
	}
}

func TestAHostTurnsUnhealthyOnlyAfterTheThreshold(t *testing.T) {
	f := newFakeNetwork(t)
	f.set("a", true)
	f.set("b", true)
	hc := HealthCheck{Interval: 50 * time.Millisecond, Timeout: 100 * time.Millisecond, UnhealthyThreshold: 3, HealthyThreshold: 1}
	b, addr := startBalancer(t, f, hc)
	b.SetHosts([]string{"a", "b"})
	eventually(t, "both healthy", func() bool { return len(b.Status().Healthy) == 2 })
	failedAt := time.Now()
	f.set("a", false)
	eventually(t, "a unhealthy", func() bool { return len(b.Status().Healthy) == 1 })
	if took := time.Since(failedAt); took < 2*hc.Interval {
		t.Errorf("a marked unhealthy %s after it failed, sooner than 3 probes %s apart allow", took, hc.Interval)
	}
	var last Change
	for _, c := range b.Status().History {
		last = c
	}
	if last.Kind != "unhealthy" || last.Hosts[0] != "a" {
		t.Errorf("history ends with %+v, want a turning unhealthy", last)
	}
	// With no healthy host left, connections go to the whole set.
	f.set("b", false)
	eventually(t, "none healthy", func() bool { return len(b.Status().Healthy) == 0 })
	if got := ask(t, addr); got != "a" && got != "b" {
		t.Errorf("with every host unhealthy the connection got %q, want a host of the set", got)
	}
}

func TestAHostWithoutAnEndpointResetsTheConnection(t *testing.T) {
	f := newFakeNetwork(t)
	f.set("a", true)
	f.down["a"] = true
	b, addr := startBalancer(t, f, HealthCheck{Interval: 20 * time.Millisecond})
	b.SetHosts([]string{"a"})
	eventually(t, "a healthy", func() bool { return len(b.Status().Healthy) == 1 })
	if got := ask(t, addr); got == "a" {
		t.Error("a connection was served by a host with no endpoint")
	}
}
