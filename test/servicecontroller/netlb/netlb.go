// Package netlb is a load balancer that behaves like a GCE external
// passthrough network load balancer, on this machine: one address of its
// own on loopback, one TCP listener per Service port, a host set the cloud
// programs, and health checks of every host. A new connection goes to a
// host that is in the set and passes its health check (round robin); when
// no host passes, to every host in the set, as GCE does. The host then hands
// the connection to an endpoint of the Service the way its kube-proxy would
// (Network.Dial). A host that leaves the set gets no new connection; its
// connections under way finish (connection draining).
package netlb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Network is what lies behind the load balancer: the nodes, their health
// endpoints and their kube-proxy.
type Network interface {
	// Dial connects to port of the Service through host, as host's
	// kube-proxy forwards it to an endpoint.
	Dial(ctx context.Context, host string, port int) (net.Conn, error)
	// HealthURL is what the health check of host asks (healthCheckNodePort
	// for externalTrafficPolicy Local, kube-proxy's /healthz for Cluster).
	HealthURL(host string) string
}

// HealthCheck is GCE's health-check configuration.
type HealthCheck struct {
	Interval           time.Duration
	Timeout            time.Duration
	UnhealthyThreshold int
	HealthyThreshold   int
}

// GCEHealthCheck is what GCE's provider sets for a Service's load balancer.
var GCEHealthCheck = HealthCheck{Interval: 8 * time.Second, Timeout: time.Second, UnhealthyThreshold: 3, HealthyThreshold: 1}

// WithDefaults fills zero fields from GCEHealthCheck.
func (h HealthCheck) WithDefaults() HealthCheck {
	if h.Interval == 0 {
		h.Interval = GCEHealthCheck.Interval
	}
	if h.Timeout == 0 {
		h.Timeout = GCEHealthCheck.Timeout
	}
	if h.UnhealthyThreshold == 0 {
		h.UnhealthyThreshold = GCEHealthCheck.UnhealthyThreshold
	}
	if h.HealthyThreshold == 0 {
		h.HealthyThreshold = GCEHealthCheck.HealthyThreshold
	}
	return h
}

// Change is one change the load balancer went through.
type Change struct {
	At time.Time `json:"at"`
	// Hosts is the host set programmed at At (Kind "hosts"), or the host
	// whose health changed (Kind "healthy"/"unhealthy").
	Kind  string   `json:"kind"`
	Hosts []string `json:"hosts"`
}

// Status is what the load balancer shows its operator.
type Status struct {
	Address string            `json:"address"`
	Ports   []int             `json:"ports"`
	Hosts   []string          `json:"hosts"`
	Healthy []string          `json:"healthy"`
	History []Change          `json:"history"`
	Served  map[string]int    `json:"served"`  // connections per host
	Refused int               `json:"refused"` // connections no host could take
	Errors  map[string]string `json:"errors,omitempty"`
}

// Balancer is one load balancer.
type Balancer struct {
	addr  net.IP
	net   Network
	hc    HealthCheck
	probe *http.Client

	mu        sync.Mutex
	listeners []net.Listener
	ports     []int
	hosts     map[string]*hostState
	order     []string
	next      int
	history   []Change
	served    map[string]int
	refused   int
	conns     sync.WaitGroup
	closed    bool
	stop      chan struct{}
}

type hostState struct {
	healthy        bool
	successes      int
	failures       int
	stop           chan struct{}
	lastProbeError string
}

// New starts a load balancer listening on addr at each port.
func New(addr net.IP, ports []int, network Network, hc HealthCheck) (*Balancer, error) {
	hc = hc.WithDefaults()
	b := &Balancer{addr: addr, net: network, hc: hc, probe: &http.Client{Timeout: hc.Timeout},
		hosts: map[string]*hostState{}, served: map[string]int{}, stop: make(chan struct{})}
	if err := b.SetPorts(ports); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// SetPorts makes the load balancer listen on exactly ports.
func (b *Balancer) SetPorts(ports []int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if slices.Equal(ports, b.ports) {
		return nil
	}
	for _, l := range b.listeners {
		l.Close()
	}
	b.listeners, b.ports = nil, nil
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(b.addr.String(), strconv.Itoa(p)))
		if err != nil {
			return fmt.Errorf("load balancer %s: listen on port %d: %w", b.addr, p, err)
		}
		b.listeners = append(b.listeners, l)
		b.ports = append(b.ports, p)
		go b.accept(l, p)
	}
	return nil
}

// Address is the load balancer's IP.
func (b *Balancer) Address() net.IP { return b.addr }

// SetHosts programs the host set. Hosts new to the set are unhealthy until
// they pass their first health check, which starts at once.
func (b *Balancer) SetHosts(hosts []string) {
	hosts = slices.Clone(hosts)
	slices.Sort(hosts)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	keep := map[string]bool{}
	for _, h := range hosts {
		keep[h] = true
		if _, ok := b.hosts[h]; !ok {
			st := &hostState{stop: make(chan struct{})}
			b.hosts[h] = st
			go b.check(h, st)
		}
	}
	for h, st := range b.hosts {
		if !keep[h] {
			close(st.stop)
			delete(b.hosts, h)
		}
	}
	b.order = hosts
	b.history = append(b.history, Change{At: time.Now(), Kind: "hosts", Hosts: hosts})
}

// check probes host every interval until it leaves the set.
func (b *Balancer) check(host string, st *hostState) {
	t := time.NewTicker(b.hc.Interval)
	defer t.Stop()
	for {
		b.probeOnce(host, st)
		select {
		case <-st.stop:
			return
		case <-b.stop:
			return
		case <-t.C:
		}
	}
}

func (b *Balancer) probeOnce(host string, st *hostState) {
	ok, why := b.healthy(host)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.hosts[host] != st {
		return // left the set meanwhile
	}
	st.lastProbeError = why
	if ok {
		st.successes, st.failures = st.successes+1, 0
		if !st.healthy && st.successes >= b.hc.HealthyThreshold {
			st.healthy = true
			b.history = append(b.history, Change{At: time.Now(), Kind: "healthy", Hosts: []string{host}})
		}
		return
	}
	st.failures, st.successes = st.failures+1, 0
	if st.healthy && st.failures >= b.hc.UnhealthyThreshold {
		st.healthy = false
		b.history = append(b.history, Change{At: time.Now(), Kind: "unhealthy", Hosts: []string{host}})
	}
}

func (b *Balancer) healthy(host string) (bool, string) {
	url := b.net.HealthURL(host)
	if url == "" {
		return false, "no health endpoint"
	}
	resp, err := b.probe.Get(url)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return false, resp.Status
	}
	return true, ""
}

// pick returns the next host for a new connection: round robin over the
// healthy hosts of the set, or over the whole set when none is healthy.
func (b *Balancer) pick() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var healthy []string
	for _, h := range b.order {
		if b.hosts[h].healthy {
			healthy = append(healthy, h)
		}
	}
	if len(healthy) == 0 {
		healthy = b.order
	}
	if len(healthy) == 0 {
		b.refused++
		return "", false
	}
	h := healthy[b.next%len(healthy)]
	b.next++
	b.served[h]++
	return h, true
}

func (b *Balancer) accept(l net.Listener, port int) {
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			in.Close()
			return
		}
		b.conns.Add(1)
		b.mu.Unlock()
		go func() {
			defer b.conns.Done()
			b.forward(in, port)
		}()
	}
}

// forward hands one connection to a host. A host that cannot take it (no
// endpoint, VM stopped) resets it, as the packets would meet a closed port.
func (b *Balancer) forward(in net.Conn, port int) {
	defer in.Close()
	host, ok := b.pick()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	out, err := b.net.Dial(ctx, host, port)
	cancel()
	if err != nil {
		if tc, ok := in.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, like a node that has nothing listening
		}
		return
	}
	defer out.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, in); closeWrite(out); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); closeWrite(in); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// Status returns a copy of the load balancer's state.
func (b *Balancer) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Status{Address: b.addr.String(), Ports: slices.Clone(b.ports), Hosts: slices.Clone(b.order),
		History: slices.Clone(b.history), Served: map[string]int{}, Refused: b.refused, Errors: map[string]string{}}
	for _, h := range b.order {
		if st := b.hosts[h]; st.healthy {
			s.Healthy = append(s.Healthy, h)
		} else if st.lastProbeError != "" {
			s.Errors[h] = st.lastProbeError
		}
	}
	for h, n := range b.served {
		s.Served[h] = n
	}
	return s
}

// Close stops listening and probing, and waits for the connections under
// way.
func (b *Balancer) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	close(b.stop)
	for _, l := range b.listeners {
		l.Close()
	}
	b.mu.Unlock()
	b.conns.Wait()
}

// ErrNoAddress is returned when no loopback address is free.
var ErrNoAddress = errors.New("no free loopback address for a load balancer")
