package gcefake

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"cloud.google.com/go/compute/metadata"
)

// changeLatency is the product requirement: a watcher learns of a change
// within 50 ms.
const changeLatency = 50 * time.Millisecond

// startInstance runs one fake instance for the test.
func startInstance(t *testing.T, in Instance) *Server {
	t.Helper()
	fleet := NewFleet()
	t.Cleanup(func() {
		if err := fleet.Close(); err != nil {
			t.Errorf("close fleet: %v", err)
		}
	})
	s, err := fleet.Add(in)
	if err != nil {
		t.Fatalf("add instance: %v", err)
	}
	return s
}

// newClient points the real metadata client at s through its own transport.
func newClient(t *testing.T, s *Server) *metadata.Client {
	t.Helper()
	t.Setenv("GCE_METADATA_HOST", s.Host())
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return metadata.NewWithOptions(&metadata.Options{Client: &http.Client{Transport: tr}})
}

type result struct {
	value string
	err   error
	at    time.Time
}

// getAsync runs a client read in the background; the test must receive
// from the channel (or cancel ctx and then receive) before it ends.
func getAsync(ctx context.Context, c *metadata.Client, suffix string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		v, err := c.GetWithContext(ctx, suffix)
		ch <- result{value: v, err: err, at: time.Now()}
	}()
	return ch
}

// receive waits for a background read, failing the test after limit.
func receive(t *testing.T, ch <-chan result, limit time.Duration) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(limit):
		t.Fatalf("no reply within %v", limit)
		return result{}
	}
}

// eventually polls cond until it holds, failing the test after limit.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %v", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
}

// rawGet reads a path with plain net/http, with or without the flavor header.
func rawGet(t *testing.T, s *Server, path string, flavor bool) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+s.Host()+path, nil)
	if err != nil {
		t.Fatalf("build request: %v", err)
	}
	if flavor {
		req.Header.Set("Metadata-Flavor", "Google")
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return res, string(body)
}
