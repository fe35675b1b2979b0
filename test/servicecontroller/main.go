// Command service-controller runs the upstream service controller of
// k8s.io/cloud-provider (the one GKE's cloud controller manager runs) against
// the local cluster, with a cloud whose load balancers are processes on this
// machine (package netlb): each Service of type LoadBalancer gets a loopback
// address of its own, each call of the controller takes a configurable
// operation time, and the hosts it is given pass or fail health checks as a
// GCE load balancer's would. A control API on loopback lets tests read what
// the load balancers did and make the cloud slow or failing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	cloudservice "k8s.io/cloud-provider/controllers/service"
	"k8s.io/component-base/featuregate"
	controllersmetrics "k8s.io/component-base/metrics/prometheus/controllers"
	"k8s.io/klog/v2"

	"termgate.dev/termgate/test/servicecontroller/netlb"
)

func main() {
	o := options{}
	fs := flag.NewFlagSet("service-controller", flag.ExitOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster")
	fs.StringVar(&o.control, "control-address", "127.0.0.1:0", "address of the control API")
	fs.DurationVar(&o.opTime, "operation-time", 5*time.Second, "time each EnsureLoadBalancer/UpdateLoadBalancer call takes, like a GCE operation")
	fs.DurationVar(&o.hc.Interval, "health-check-interval", netlb.GCEHealthCheck.Interval, "health check interval (GCE: 8s)")
	fs.DurationVar(&o.hc.Timeout, "health-check-timeout", netlb.GCEHealthCheck.Timeout, "health check timeout (GCE: 1s)")
	fs.IntVar(&o.hc.UnhealthyThreshold, "unhealthy-threshold", netlb.GCEHealthCheck.UnhealthyThreshold, "failed checks before a host is unhealthy (GCE: 3)")
	fs.IntVar(&o.hc.HealthyThreshold, "healthy-threshold", netlb.GCEHealthCheck.HealthyThreshold, "passed checks before a host is healthy (GCE: 1)")
	fs.IntVar(&o.syncs, "concurrent-service-syncs", 1, "the service controller's workers, as the cloud controller manager's flag")
	klog.InitFlags(fs)
	_ = fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := o.run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "service-controller:", err)
		os.Exit(1)
	}
}

type options struct {
	kubeconfig, control string
	opTime              time.Duration
	hc                  netlb.HealthCheck
	syncs               int
}

func (o options) run(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	nodes, services, slices := factory.Core().V1().Nodes(), factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices()
	p := newProxies(nodes.Lister(), services.Lister(), slices.Lister())
	if _, err := nodes.Informer().AddEventHandler(p.handlers()); err != nil {
		return err
	}
	cloud := newLocalCloud(p, o.opTime, o.hc)
	defer cloud.closeAll()
	defer p.closeAll()
	ctrl, err := cloudservice.New(cloud, client, services, nodes, "local", featuregate.NewFeatureGate())
	if err != nil {
		return fmt.Errorf("service controller: %w", err)
	}
	synced := []cache.InformerSynced{nodes.Informer().HasSynced, services.Informer().HasSynced, slices.Informer().HasSynced}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	ln, err := net.Listen("tcp", o.control)
	if err != nil {
		return fmt.Errorf("control API: %w", err)
	}
	srv := &http.Server{Handler: controlHandler(cloud, func() bool {
		for _, s := range synced {
			if !s() {
				return false
			}
		}
		return true
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go ctrl.Run(ctx, o.syncs, controllersmetrics.NewControllerManagerMetrics("service-controller"))
	klog.InfoS("service controller running", "control", ln.Addr().String(), "operationTime", o.opTime, "healthCheck", o.hc)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
