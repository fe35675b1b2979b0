package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	cloudservice "k8s.io/cloud-provider/controllers/service"
)

// proxies plays each node's kube-proxy as far as a load balancer sees it:
// its health endpoints (kube-proxy's /healthz for externalTrafficPolicy
// Cluster, the Service's healthCheckNodePort for Local) and its forwarding
// of a connection that reaches the node to an endpoint of the Service. The
// cluster has no kube-proxy of its own, so this is the one place where the
// rules below are applied; they follow kube-proxy's, with terminating
// endpoints (KEP-1669).
type proxies struct {
	nodes    corelisters.NodeLister
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister

	mu      sync.Mutex
	servers map[string]*nodeServer
	standIn map[string]string // pod IP -> the address a stand-in serves it on
}

// nodeServer is one node's health endpoints on a loopback port of its own.
// A stopped node (its VM stopped) closes it: checks are then refused.
type nodeServer struct {
	name    string
	addr    string
	ln      net.Listener
	srv     *http.Server
	stopped bool
}

func newProxies(nodes corelisters.NodeLister, services corelisters.ServiceLister, slices discoverylisters.EndpointSliceLister) *proxies {
	return &proxies{nodes: nodes, services: services, slices: slices, servers: map[string]*nodeServer{}, standIn: map[string]string{}}
}

// handlers keeps one health server per Node.
func (p *proxies) handlers() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok {
				p.ensureServer(n.Name)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				p.removeServer(n.Name)
			}
		},
	}
}

func (p *proxies) ensureServer(node string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.servers[node]; ok {
		return
	}
	s := &nodeServer{name: node}
	if err := p.listen(s, "127.0.0.1:0"); err != nil {
		fmt.Println("node health server:", err)
		return
	}
	p.servers[node] = s
}

func (p *proxies) listen(s *nodeServer, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for node %s: %w", s.name, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { p.serveHealthz(w, s.name) })
	mux.HandleFunc("GET /services/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		p.serveServiceHealth(w, s.name, r.PathValue("namespace"), r.PathValue("name"))
	})
	s.ln, s.addr, s.stopped = ln, ln.Addr().String(), false
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return nil
}

func (p *proxies) removeServer(node string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.servers[node]; ok {
		_ = s.srv.Close()
		delete(p.servers, node)
	}
}

// setStopped stops or starts a node's VM as the load balancer sees it.
func (p *proxies) setStopped(node string, stopped bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.servers[node]
	switch {
	case !ok:
		return fmt.Errorf("node %s unknown", node)
	case stopped == s.stopped:
		return nil
	case stopped:
		s.stopped = true
		return s.srv.Close()
	}
	return p.listen(s, s.addr) // the same port: the health checks keep their URL
}

func (p *proxies) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, s := range p.servers {
		_ = s.srv.Close()
		delete(p.servers, name)
	}
}

func (p *proxies) server(node string) (*nodeServer, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.servers[node]
	if !ok || s.stopped {
		return s, false
	}
	return s, true
}

// serveHealthz answers as kube-proxy's /healthz: 503 once the node is being
// deleted or carries the cluster autoscaler's ToBeDeletedByClusterAutoscaler
// taint, so that load balancers stop sending it traffic; not for the
// exclusion label, a cordon or any other taint.
func (p *proxies) serveHealthz(w http.ResponseWriter, node string) {
	n, err := p.nodes.Get(node)
	switch {
	case err != nil:
		http.Error(w, "node unknown", http.StatusServiceUnavailable)
	case n.DeletionTimestamp != nil:
		http.Error(w, "node is being deleted", http.StatusServiceUnavailable)
	case hasTaint(n, cloudservice.ToBeDeletedTaint):
		http.Error(w, "node is being deleted by the cluster autoscaler", http.StatusServiceUnavailable)
	default:
		_, _ = fmt.Fprintf(w, `{"nodeHealthy": true}`)
	}
}

// serveServiceHealth answers as a Service's healthCheckNodePort: 200 while
// the node has a ready endpoint of it, 503 otherwise (also while its only
// endpoints are terminating, so load balancers drain them).
func (p *proxies) serveServiceHealth(w http.ResponseWriter, node, ns, name string) {
	n := 0
	for _, ep := range p.endpoints(ns, name) {
		if ep.node == node && ep.ready {
			n++
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if n == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"service": map[string]string{"namespace": ns, "name": name}, "localEndpoints": n})
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

// endpoint is one address of a Service's EndpointSlices, with every port.
type endpoint struct {
	ip                        string
	node                      string
	ready, serving, terminate bool
	ports                     map[string]int32 // by port name
}

func (p *proxies) endpoints(ns, name string) []endpoint {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
	slices, err := p.slices.EndpointSlices(ns).List(sel)
	if err != nil {
		return nil
	}
	var out []endpoint
	for _, s := range slices {
		ports := map[string]int32{}
		for _, port := range s.Ports {
			if port.Port != nil {
				ports[deref(port.Name)] = *port.Port
			}
		}
		for _, e := range s.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			out = append(out, endpoint{
				ip: e.Addresses[0], node: deref(e.NodeName), ports: ports,
				ready:     e.Conditions.Ready == nil || *e.Conditions.Ready,
				serving:   e.Conditions.Serving == nil || *e.Conditions.Serving,
				terminate: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			})
		}
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// serviceNetwork is what one Service's load balancer reaches through the
// nodes: it implements netlb.Network.
type serviceNetwork struct {
	p      *proxies
	ns, nm string
}

func (s serviceNetwork) HealthURL(host string) string {
	srv, ok := s.p.server(host)
	if srv == nil {
		return ""
	}
	_ = ok // a stopped node keeps its address; the check is refused
	svc, err := s.p.services.Services(s.ns).Get(s.nm)
	if err == nil && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		return "http://" + srv.addr + "/services/" + s.ns + "/" + s.nm
	}
	return "http://" + srv.addr + "/healthz"
}

// Dial forwards a connection that reached host on the Service's port as
// kube-proxy does: to a ready endpoint on this node for
// externalTrafficPolicy Local, anywhere for Cluster; to a serving
// terminating one when no endpoint is ready.
func (s serviceNetwork) Dial(ctx context.Context, host string, port int) (net.Conn, error) {
	if _, up := s.p.server(host); !up {
		return nil, fmt.Errorf("node %s is stopped", host)
	}
	svc, err := s.p.services.Services(s.ns).Get(s.nm)
	if err != nil {
		return nil, err
	}
	portName, found := "", false
	for _, sp := range svc.Spec.Ports {
		if int(sp.Port) == port {
			portName, found = sp.Name, true
		}
	}
	if !found {
		return nil, fmt.Errorf("service %s/%s has no port %d", s.ns, s.nm, port)
	}
	local := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	var ready, serving []endpoint
	for _, ep := range s.p.endpoints(s.ns, s.nm) {
		if local && ep.node != host {
			continue
		}
		if _, ok := ep.ports[portName]; !ok {
			continue
		}
		switch {
		case ep.ready:
			ready = append(ready, ep)
		case ep.serving && ep.terminate:
			serving = append(serving, ep)
		}
	}
	pool := ready
	if len(pool) == 0 {
		pool = serving
	}
	if len(pool) == 0 {
		return nil, errors.New("no endpoint for " + s.ns + "/" + s.nm + " on " + host)
	}
	ep := pool[rand.IntN(len(pool))]
	addr := net.JoinHostPort(ep.ip, strconv.Itoa(int(ep.ports[portName])))
	s.p.mu.Lock()
	if a, ok := s.p.standIn[ep.ip]; ok {
		addr = a
	}
	s.p.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (p *proxies) setStandIn(ip, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if addr == "" {
		delete(p.standIn, ip)
		return
	}
	p.standIn[ip] = addr
}

func serviceKey(ns, name string) string { return ns + "/" + name }

func splitKey(key string) (string, string) {
	ns, name, _ := strings.Cut(key, "/")
	return ns, name
}
