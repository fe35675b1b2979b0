package localrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"termgate.dev/termgate/test/cluster"
)

// WebhookReplicas are several webhook processes behind one address, as the
// Deployment's replicas are behind the Service: the configurations call
// the balancer, which hands each new connection to the next replica in
// turn (kube-proxy balances connections too, not requests).
type WebhookReplicas struct {
	Replicas []*Webhook
	// Addr is the balancer's host:port, the one the configurations call.
	Addr string
	lb   *balancer
}

// StartWebhookReplicasWithOwnIdentity starts n replicas sharing one
// service account token (NewWebhookIdentity) under the shipped RBAC,
// CA-bundle policy and FlowSchema, each with its own pod name (its
// identity in the certificate lease), log and certificate directory, and
// registers the configurations once, pointed at the balancer. s.Dir and
// s.Client default to c's.
func StartWebhookReplicasWithOwnIdentity(ctx context.Context, c *cluster.Cluster, s WebhookSpec, n int) (*WebhookReplicas, error) {
	if n < 1 {
		return nil, errors.New("want at least one webhook replica")
	}
	s, err := withOwnIdentity(ctx, c, s)
	if err != nil {
		return nil, err
	}
	lb, err := newBalancer()
	if err != nil {
		return nil, err
	}
	r := &WebhookReplicas{Addr: lb.ln.Addr().String(), lb: lb}
	s.URL = "https://" + r.Addr
	for i := range n {
		rs := s
		rs.Dir = filepath.Join(s.Dir, "webhook-"+strconv.Itoa(i))
		if err := os.MkdirAll(rs.Dir, 0o755); err != nil {
			r.Stop()
			return nil, fmt.Errorf("webhook replica directory: %w", err)
		}
		rs.Env = append(append([]string{}, s.Env...), "POD_NAME=webhook-local-"+strconv.Itoa(i))
		rs.Registered = i > 0
		// Until the first replica is ready the balancer has no one to
		// hand a call to and closes it: the API server fails open, before
		// any measurement starts.
		w, err := StartWebhook(ctx, rs)
		if err != nil {
			r.Stop()
			return nil, fmt.Errorf("start webhook replica %d: %w", i, err)
		}
		r.Replicas = append(r.Replicas, w)
		lb.add(w.Addr)
	}
	return r, nil
}

// Connections says how many connections the balancer handed to each
// replica, in the order of Replicas.
func (r *WebhookReplicas) Connections() []int64 {
	r.lb.mu.Lock()
	defer r.lb.mu.Unlock()
	out := make([]int64, len(r.lb.backends))
	for i, b := range r.lb.backends {
		out[i] = b.conns.Load()
	}
	return out
}

// Stop ends every replica (the first removes the configurations), then
// the balancer.
func (r *WebhookReplicas) Stop() {
	var wg sync.WaitGroup
	for _, w := range r.Replicas {
		wg.Go(w.Stop)
	}
	wg.Wait()
	r.lb.close()
}

// balancer forwards each TCP connection to the next backend in turn,
// skipping any it cannot dial.
type balancer struct {
	ln       net.Listener
	mu       sync.Mutex
	backends []*backend
	next     int
	done     sync.WaitGroup
}

type backend struct {
	addr  string
	conns atomic.Int64
}

func newBalancer() (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook balancer: %w", err)
	}
	b := &balancer{ln: ln}
	b.done.Go(b.serve)
	return b, nil
}

func (b *balancer) add(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = append(b.backends, &backend{addr: addr})
}

func (b *balancer) serve() {
	for {
		conn, err := b.ln.Accept()
		if err != nil {
			return
		}
		go b.forward(conn)
	}
}

func (b *balancer) forward(in net.Conn) {
	defer in.Close()
	b.mu.Lock()
	order := make([]*backend, 0, len(b.backends))
	for i := range b.backends {
		order = append(order, b.backends[(b.next+i)%len(b.backends)])
	}
	b.next++
	b.mu.Unlock()
	for _, be := range order {
		out, err := net.Dial("tcp", be.addr)
		if err != nil {
			continue
		}
		be.conns.Add(1)
		// Either side ending ends both, as a TCP proxy does.
		go func() {
			_, _ = io.Copy(out, in)
			out.Close()
			in.Close()
		}()
		_, _ = io.Copy(in, out)
		out.Close()
		return
	}
}

func (b *balancer) close() {
	_ = b.ln.Close()
	b.done.Wait()
}
