package lbtraffic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"termgate.dev/termgate/test/cluster"
)

// StandIns serve for the pods of kwok nodes, which run nothing: each Ready
// pod the selector picks gets a server on loopback that answers with the
// pod's name, registered with the load balancers under the pod's IP. Like a
// well-behaved server, it keeps answering for ExitDelay after its pod is
// deleted (SIGTERM), then stops.
type StandIns struct {
	lbs       *cluster.LoadBalancers
	exitDelay time.Duration
	// skip says which pods are not the stand-ins' (pods of a real node
	// serve themselves).
	skip func(*corev1.Pod) bool

	mu      sync.Mutex
	servers map[string]*standIn // by pod UID
	stop    context.CancelFunc
	done    chan struct{}
}

type standIn struct {
	pod     string
	ip      string
	srv     *http.Server
	exiting bool
}

// StartStandIns serves for the pods selected by selector in namespace,
// except those skip returns true for (nil: none).
func StartStandIns(ctx context.Context, client kubernetes.Interface, lbs *cluster.LoadBalancers, namespace, selector string, exitDelay time.Duration, skip func(*corev1.Pod) bool) (*StandIns, error) {
	if lbs == nil {
		return nil, errors.New("stand-ins: the cluster runs no load balancers")
	}
	if skip == nil {
		skip = func(*corev1.Pod) bool { return false }
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &StandIns{lbs: lbs, exitDelay: exitDelay, skip: skip, servers: map[string]*standIn{}, stop: cancel, done: make(chan struct{})}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	inf := f.Core().V1().Pods().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.sync(runCtx, obj) },
		UpdateFunc: func(_, obj any) { s.sync(runCtx, obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				s.exit(runCtx, p, 0)
			}
		},
	})
	f.Start(runCtx.Done())
	go func() { <-runCtx.Done(); f.Shutdown(); close(s.done) }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		s.Stop()
		return nil, fmt.Errorf("stand-ins: pod cache not synced: %w", ctx.Err())
	}
	return s, nil
}

func (s *StandIns) sync(ctx context.Context, obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok || s.skip(p) {
		return
	}
	if p.DeletionTimestamp != nil {
		s.exit(ctx, p, s.exitDelay)
		return
	}
	if p.Status.PodIP == "" || !podReady(p) {
		return
	}
	s.mu.Lock()
	_, running := s.servers[string(p.UID)]
	s.mu.Unlock()
	if running {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	name := p.Name
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, name)
	})}
	go func() { _ = srv.Serve(ln) }()
	s.mu.Lock()
	s.servers[string(p.UID)] = &standIn{pod: p.Name, ip: p.Status.PodIP, srv: srv}
	s.mu.Unlock()
	_ = s.lbs.SetStandIn(ctx, p.Status.PodIP, ln.Addr().String())
}

// exit stops the pod's server after delay, as its process would after
// SIGTERM.
func (s *StandIns) exit(ctx context.Context, p *corev1.Pod, delay time.Duration) {
	s.mu.Lock()
	st, ok := s.servers[string(p.UID)]
	if !ok || st.exiting {
		s.mu.Unlock()
		return
	}
	st.exiting = true
	s.mu.Unlock()
	go func() {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
		// The load balancer keeps dialling the closed port: refused at
		// once, as a process that exited leaves its port.
		_ = st.srv.Close()
		s.mu.Lock()
		delete(s.servers, string(p.UID))
		s.mu.Unlock()
	}()
}

// Stop closes every stand-in.
func (s *StandIns) Stop() {
	s.stop()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, st := range s.servers {
		_ = st.srv.Close()
		delete(s.servers, uid)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
