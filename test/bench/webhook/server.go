package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

// serve runs the real webhook handler and server with a filled node cache
// and an in-memory pod source standing in for the API server's GET.
func serve(ctx context.Context, o options) error {
	// certwatcher logs through controller-runtime's global logger.
	ctrllog.SetLogger(logr.Discard())
	store := nodecache.NewStore()
	now := time.Now()
	for i := range o.nodes {
		var ann map[string]string
		if o.marked > 0 && i%o.marked == 0 {
			ann = nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
				NoticeTime: now, Deadline: now.Add(30 * time.Second), BootID: "bench"}.Annotations()
		}
		if err := store.Add(nodecache.NodeMeta(nodeName(i), ann)); err != nil {
			return err
		}
	}
	metrics, err := review.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ln, reloader, err := listenTLS(ctx, o.certDir)
	if err != nil || ln == nil {
		return err
	}
	srv := &webhook.Server{
		Handler: webhook.Handler(webhook.Config{
			Nodes: nodecache.NewFromStore(store), Pods: memPods{}, TaintEffect: corev1.TaintEffectNoSchedule,
			Agent: confine.Options{Username: "system:serviceaccount:" + localrun.AgentNamespace + ":" + localrun.AgentServiceAccount}, Metrics: metrics,
			Log: logr.Discard(), Clock: clock.RealClock{},
		}),
		TLSConfig: certs.ServerConfig(reloader.GetCertificate),
		Clock:     clock.RealClock{},
	}
	fmt.Fprintf(os.Stdout, "listening %s\n", ln.Addr())
	return srv.Serve(ctx, ln)
}

// listenTLS loads the serving pair from certDir and opens a loopback
// listener; the parent waits for the child's "listening" line, printed
// after this, before it sends load. A nil listener with a nil error means
// ctx ended first.
func listenTLS(ctx context.Context, certDir string) (net.Listener, *certs.Reloader, error) {
	reloader := certs.NewReloader(certDir, clock.RealClock{})
	go func() { _ = reloader.Start(ctx) }()
	for reloader.Loaded() != nil {
		select {
		case <-ctx.Done():
			return nil, nil, nil
		case <-time.After(10 * time.Millisecond):
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	return ln, reloader, nil
}

// serveFloor is the floor the bind gate is measured against, on the same
// machine in the same run: a bare HTTPS handler over the same TLS set-up
// that decodes the same review and allows it. What the gate costs beyond it
// is termgate's own: the review's checks, the node cache, metrics and the
// server's limits.
func serveFloor(ctx context.Context, o options) error {
	ctrllog.SetLogger(logr.Discard())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ln, reloader, err := listenTLS(ctx, o.certDir)
	if err != nil || ln == nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var review admissionv1.AdmissionReview
			if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
				http.Error(w, "bad review", http.StatusBadRequest)
				return
			}
			review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
			review.Request = nil
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(&review)
		}),
		TLSConfig:         certs.ServerConfig(reloader.GetCertificate),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Fprintf(os.Stdout, "listening %s\n", ln.Addr())
	if err := srv.ServeTLS(ln, "", ""); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

func nodeName(i int) string { return "node-" + strconv.Itoa(i) }

// memPods answers every slow-path read with a pod that tolerates nothing.
type memPods struct{}

func (memPods) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	p.Name, p.Namespace = name, namespace
	return p, nil
}
