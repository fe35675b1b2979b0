package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	cloudprovider "k8s.io/cloud-provider"

	"termgate.dev/termgate/test/servicecontroller/netlb"
)

// localCloud is a cloud whose load balancers run on this machine. Each call
// takes the configured operation time, like the GCE operations behind a
// legacy network load balancer (target pool, forwarding rule, health
// check), and may be made to fail.
type localCloud struct {
	p  *proxies
	hc netlb.HealthCheck

	mu     sync.Mutex
	opTime time.Duration
	faults map[string]*fault // by Service namespace/name
	lbs    map[string]*netlb.Balancer
	calls  []call
	active map[*call]bool // calls under way
}

// fault makes a Service's calls slow or fail.
type fault struct {
	OperationTime *duration `json:"operationTime,omitempty"`
	// Fail is how many calls fail next; -1 fails every call.
	Fail    int    `json:"fail"`
	Message string `json:"message,omitempty"`
}

// call is one call the service controller made.
type call struct {
	Op      string    `json:"op"`
	Service string    `json:"service"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	Hosts   []string  `json:"hosts"`
	Error   string    `json:"error,omitempty"`
}

func newLocalCloud(p *proxies, opTime time.Duration, hc netlb.HealthCheck) *localCloud {
	return &localCloud{p: p, hc: hc, opTime: opTime, faults: map[string]*fault{}, lbs: map[string]*netlb.Balancer{}, active: map[*call]bool{}}
}

var _ cloudprovider.Interface = (*localCloud)(nil)
var _ cloudprovider.LoadBalancer = (*localCloud)(nil)

func (c *localCloud) Initialize(cloudprovider.ControllerClientBuilder, <-chan struct{}) {}
func (c *localCloud) LoadBalancer() (cloudprovider.LoadBalancer, bool)                  { return c, true }
func (c *localCloud) Instances() (cloudprovider.Instances, bool)                        { return nil, false }
func (c *localCloud) InstancesV2() (cloudprovider.InstancesV2, bool)                    { return nil, false }
func (c *localCloud) Zones() (cloudprovider.Zones, bool)                                { return nil, false }
func (c *localCloud) Clusters() (cloudprovider.Clusters, bool)                          { return nil, false }
func (c *localCloud) Routes() (cloudprovider.Routes, bool)                              { return nil, false }
func (c *localCloud) ProviderName() string                                              { return "termgate-local" }
func (c *localCloud) HasClusterID() bool                                                { return true }

func (c *localCloud) GetLoadBalancerName(_ context.Context, clusterName string, svc *corev1.Service) string {
	return clusterName + "-" + string(svc.UID)
}

func (c *localCloud) GetLoadBalancer(_ context.Context, _ string, svc *corev1.Service) (*corev1.LoadBalancerStatus, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.lbs[serviceKey(svc.Namespace, svc.Name)]
	if !ok {
		return nil, false, nil
	}
	return status(b), true, nil
}

func status(b *netlb.Balancer) *corev1.LoadBalancerStatus {
	return &corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: b.Address().String(), IPMode: ptrTo(corev1.LoadBalancerIPModeVIP)}}}
}

func ptrTo[T any](v T) *T { return &v }

// EnsureLoadBalancer creates or updates the load balancer: address, ports,
// health check and hosts.
func (c *localCloud) EnsureLoadBalancer(ctx context.Context, _ string, svc *corev1.Service, nodes []*corev1.Node) (*corev1.LoadBalancerStatus, error) {
	key := serviceKey(svc.Namespace, svc.Name)
	hosts := nodeNames(nodes)
	var st *corev1.LoadBalancerStatus
	err := c.operate(ctx, "ensure", key, hosts, func() error {
		ports, err := tcpPorts(svc)
		if err != nil {
			return err
		}
		c.mu.Lock()
		b, ok := c.lbs[key]
		c.mu.Unlock()
		if ok {
			if err := b.SetPorts(ports); err != nil {
				return err
			}
		} else {
			if b, err = c.newBalancer(svc, ports); err != nil {
				return err
			}
			c.mu.Lock()
			c.lbs[key] = b
			c.mu.Unlock()
		}
		b.SetHosts(hosts)
		st = status(b)
		return nil
	})
	return st, err
}

// UpdateLoadBalancer programs the hosts of an existing load balancer.
func (c *localCloud) UpdateLoadBalancer(ctx context.Context, _ string, svc *corev1.Service, nodes []*corev1.Node) error {
	key := serviceKey(svc.Namespace, svc.Name)
	hosts := nodeNames(nodes)
	return c.operate(ctx, "update", key, hosts, func() error {
		c.mu.Lock()
		b, ok := c.lbs[key]
		c.mu.Unlock()
		if !ok {
			return fmt.Errorf("load balancer of %s not found", key)
		}
		b.SetHosts(hosts)
		return nil
	})
}

func (c *localCloud) EnsureLoadBalancerDeleted(ctx context.Context, _ string, svc *corev1.Service) error {
	key := serviceKey(svc.Namespace, svc.Name)
	return c.operate(ctx, "delete", key, nil, func() error {
		c.mu.Lock()
		b, ok := c.lbs[key]
		delete(c.lbs, key)
		c.mu.Unlock()
		if ok {
			b.Close()
		}
		return nil
	})
}

// operate takes the operation time, then applies the fault or does the work,
// and records the call.
func (c *localCloud) operate(ctx context.Context, op, key string, hosts []string, work func() error) error {
	started := time.Now()
	rec := &call{Op: op, Service: key, Started: started, Hosts: hosts}
	c.mu.Lock()
	c.active[rec] = true
	wait, f := c.opTime, c.faults[key]
	var failWith error
	if f != nil {
		if f.OperationTime != nil {
			wait = time.Duration(*f.OperationTime)
		}
		if f.Fail != 0 && op != "delete" {
			msg := f.Message
			if msg == "" {
				msg = "operation failed"
			}
			failWith = errors.New(msg)
			if f.Fail > 0 {
				f.Fail--
			}
		}
	}
	c.mu.Unlock()
	t := time.NewTimer(wait)
	var err error
	select {
	case <-ctx.Done():
		t.Stop()
		err = ctx.Err()
	case <-t.C:
		err = failWith
		if err == nil {
			err = work()
		}
	}
	rec.Ended = time.Now()
	if err != nil {
		rec.Error = err.Error()
	}
	c.mu.Lock()
	delete(c.active, rec)
	c.calls = append(c.calls, *rec)
	c.mu.Unlock()
	return err
}

// newBalancer starts a load balancer on a loopback address of its own, so
// that it can listen on the Service's own ports: 127.100.0.0/16, picked at
// random, another one when taken (two clusters may run on the machine).
func (c *localCloud) newBalancer(svc *corev1.Service, ports []int) (*netlb.Balancer, error) {
	network := serviceNetwork{p: c.p, ns: svc.Namespace, nm: svc.Name}
	var last error
	for range 20 {
		ip := net.IPv4(127, 100, byte(rand.IntN(256)), byte(1+rand.IntN(254)))
		b, err := netlb.New(ip, ports, network, c.hc)
		if err == nil {
			return b, nil
		}
		last = err
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, fmt.Errorf("%w: %v", netlb.ErrNoAddress, last)
}

func tcpPorts(svc *corev1.Service) ([]int, error) {
	var ports []int
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			return nil, fmt.Errorf("port %d: protocol %s is not supported by the local load balancer", p.Port, p.Protocol)
		}
		ports = append(ports, int(p.Port))
	}
	slices.Sort(ports)
	return ports, nil
}

func nodeNames(nodes []*corev1.Node) []string {
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	return names
}

// snapshot is what the control API shows.
type snapshot struct {
	OperationTime duration                `json:"operationTime"`
	LoadBalancers map[string]netlb.Status `json:"loadBalancers"`
	Calls         []call                  `json:"calls"`
	InFlight      []call                  `json:"inFlight"`
}

func (c *localCloud) snapshot() snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := snapshot{OperationTime: duration(c.opTime), LoadBalancers: map[string]netlb.Status{}, Calls: slices.Clone(c.calls)}
	for k, b := range c.lbs {
		s.LoadBalancers[k] = b.Status()
	}
	for rec := range c.active {
		s.InFlight = append(s.InFlight, *rec)
	}
	return s
}

func (c *localCloud) closeAll() {
	c.mu.Lock()
	lbs := c.lbs
	c.lbs = map[string]*netlb.Balancer{}
	c.mu.Unlock()
	for _, b := range lbs {
		b.Close()
	}
}
