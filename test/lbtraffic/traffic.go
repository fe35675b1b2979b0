// Package lbtraffic drives traffic through the local cluster's load
// balancers (cluster.Options.LoadBalancers): a client that sends requests
// at a steady rate, each on a new connection so that the load balancer
// picks a host for each, and stand-in servers for the backends of kwok pods,
// which run nothing. The end-to-end tests, the demo and the benchmark count
// failed requests with it.
package lbtraffic

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Request is one request the client sent.
type Request struct {
	At      time.Time
	Latency time.Duration
	// Backend is what answered (the pod's name), empty on failure.
	Backend string
	Err     string
}

// OK reports whether the request got its answer.
func (r Request) OK() bool { return r.Err == "" }

// Client sends a GET to Target every Interval until stopped.
type Client struct {
	Target   string // host:port of the load balancer
	Interval time.Duration
	// Timeout bounds each request; a load balancer that sends it to a
	// host with no backend resets it at once.
	Timeout time.Duration

	mu   sync.Mutex
	reqs []Request
	stop context.CancelFunc
	done chan struct{}
}

// Start begins sending.
func (c *Client) Start() {
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stop, c.done = cancel, make(chan struct{})
	hc := &http.Client{Timeout: c.Timeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil,
		DialContext: (&net.Dialer{Timeout: c.Timeout}).DialContext}}
	go func() {
		defer close(c.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		t := time.NewTicker(c.Interval)
		defer t.Stop()
		for {
			wg.Add(1)
			go func() { defer wg.Done(); c.send(hc) }()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

func (c *Client) send(hc *http.Client) {
	r := Request{At: time.Now()}
	resp, err := hc.Get("http://" + c.Target + "/")
	if err == nil {
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		switch {
		case rerr != nil:
			err = rerr
		case resp.StatusCode != http.StatusOK:
			err = fmt.Errorf("status %s", resp.Status)
		default:
			r.Backend = strings.TrimSpace(string(body))
		}
	}
	r.Latency = time.Since(r.At)
	if err != nil {
		r.Err = err.Error()
	}
	c.mu.Lock()
	c.reqs = append(c.reqs, r)
	c.mu.Unlock()
}

// Stop stops sending, waits for the requests under way and returns every
// request, in the order they were sent.
func (c *Client) Stop() []Request {
	c.stop()
	<-c.done
	return c.Requests()
}

// Requests returns the requests answered so far, sorted by send time.
func (c *Client) Requests() []Request {
	c.mu.Lock()
	out := append([]Request(nil), c.reqs...)
	c.mu.Unlock()
	sortByTime(out)
	return out
}

func sortByTime(reqs []Request) {
	for i := 1; i < len(reqs); i++ {
		for j := i; j > 0 && reqs[j].At.Before(reqs[j-1].At); j-- {
			reqs[j], reqs[j-1] = reqs[j-1], reqs[j]
		}
	}
}

// Failed counts the failed requests sent in [from, to); zero times are open.
func Failed(reqs []Request, from, to time.Time) (failed, total int) {
	for _, r := range reqs {
		if (!from.IsZero() && r.At.Before(from)) || (!to.IsZero() && !r.At.Before(to)) {
			continue
		}
		total++
		if !r.OK() {
			failed++
		}
	}
	return failed, total
}

// Bucket is the requests sent in one interval of a timeline.
type Bucket struct {
	Start      time.Duration // since the timeline's zero
	OK, Failed int
}

// Buckets cuts reqs into intervals of width from zero on.
func Buckets(reqs []Request, zero time.Time, width time.Duration) []Bucket {
	var out []Bucket
	for _, r := range reqs {
		d := r.At.Sub(zero)
		i := int(d / width)
		if d < 0 {
			i = int(d/width) - 1
		}
		start := time.Duration(i) * width
		if len(out) == 0 || out[len(out)-1].Start != start {
			out = append(out, Bucket{Start: start})
		}
		b := &out[len(out)-1]
		if r.OK() {
			b.OK++
		} else {
			b.Failed++
		}
	}
	return out
}
