package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/agent"
	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/cmd/termgate/daemon"
)

// agentOptions are the agent's command-line settings.
type agentOptions struct {
	agent  agent.Config
	drain  drain.Config
	watch  watch.Config
	client daemon.ClientOptions
	listen string
	taint  string
	log    daemon.LogOptions
	lb     lbOptions
}

func newAgentOptions() *agentOptions {
	o := &agentOptions{agent: agent.DefaultConfig(), watch: watch.DefaultConfig(), log: daemon.LogOptions{Format: "json"}, lb: newLBOptions()}
	o.drain = drain.Config{}.WithDefaults()
	return o
}

// AddFlags binds every option to fs with its default and help text.
func (o *agentOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.agent.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name; defaults to $NODE_NAME (set it from the downward API, spec.nodeName)")
	fs.StringVar(&o.agent.PodName, "pod-name", os.Getenv("POD_NAME"), "the agent's own pod, whose grace period bounds a drain after SIGTERM; defaults to $POD_NAME")
	fs.StringVar(&o.agent.PodNamespace, "pod-namespace", os.Getenv("POD_NAMESPACE"), "the agent's own namespace; defaults to $POD_NAMESPACE")
	fs.DurationVar(&o.agent.ShutdownGrace, "shutdown-grace", 0, "how long to keep draining after SIGTERM; 0 reads the own pod's terminationGracePeriodSeconds (30s if unknown)")
	fs.DurationVar(&o.agent.LateStartBudget, "late-start-budget", o.agent.LateStartBudget, "time assumed left when instance/preempted is already TRUE at the agent's first read")
	fs.StringVar(&o.client.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty means in-cluster configuration")
	fs.Float64Var(&o.client.QPS, "kube-api-qps", 100, "client QPS to the API server, sized for parallel evictions")
	fs.IntVar(&o.client.Burst, "kube-api-burst", 200, "client burst to the API server")
	fs.StringVar(&o.listen, "listen", ":9808", "address of /healthz, /readyz and /metrics")
	fs.StringVar(&o.taint, "taint-effect", string(o.agent.TaintEffect), "effect of the termination taint: NoSchedule, PreferNoSchedule or NoExecute")
	fs.DurationVar(&o.agent.PreemptionNotice, "preemption-notice", o.agent.PreemptionNotice, "deadline after instance/preempted turns TRUE")
	fs.DurationVar(&o.agent.MaintenanceBudget, "maintenance-budget", o.agent.MaintenanceBudget, "deadline after TERMINATE_ON_HOST_MAINTENANCE on VMs without accelerators")
	fs.DurationVar(&o.agent.AcceleratorMaintenanceBudget, "accelerator-maintenance-budget", o.agent.AcceleratorMaintenanceBudget, "deadline after TERMINATE_ON_HOST_MAINTENANCE on accelerator (GPU/TPU) VMs")
	fs.StringVar(&o.agent.AcceleratorLabel, "accelerator-label", o.agent.AcceleratorLabel, "node label that marks an accelerator VM")
	fs.DurationVar(&o.agent.UpcomingLead, "upcoming-maintenance-lead", o.agent.UpcomingLead, "start draining this long before an announced maintenance window")
	fs.BoolVar(&o.agent.DryRun, "dry-run", false, "log every decision, change nothing (evictions are sent with dryRun=All)")
	fs.DurationVar(&o.drain.SystemGrace, "system-grace", o.drain.SystemGrace, "time before the deadline reserved for system pods; regular pods left then are deleted")
	fs.DurationVar(&o.drain.SystemEscalateBefore, "system-escalate-before", o.drain.SystemEscalateBefore, "system pods left this long before the deadline are deleted")
	fs.IntVar(&o.drain.Concurrency, "eviction-concurrency", o.drain.Concurrency, "evictions in flight at once")
	fs.DurationVar(&o.drain.BackoffBase, "eviction-backoff-base", o.drain.BackoffBase, "first retry delay after a refused eviction (429, 5xx)")
	fs.DurationVar(&o.drain.BackoffCap, "eviction-backoff-cap", o.drain.BackoffCap, "longest retry delay after refused evictions")
	fs.DurationVar(&o.drain.MinDeleteGrace, "min-delete-grace", o.drain.MinDeleteGrace, "shortest grace period of an escalated delete")
	fs.DurationVar(&o.watch.PollTimeout, "metadata-poll-timeout", o.watch.PollTimeout, "timeout_sec of each hanging GET; bounds how stale the watch can be unnoticed")
	o.lb.addFlags(fs, &o.agent.LBMarks)
	o.log.AddFlags(fs)
}

// Complete derives the settings that follow from others.
func (o *agentOptions) Complete() {
	o.agent.TaintEffect = corev1.TaintEffect(o.taint)
	o.drain.TaintEffect = o.agent.TaintEffect
	o.drain.NodeName = o.agent.NodeName
	o.drain.DryRun = o.agent.DryRun
	o.drain.LBWaitCaps, o.drain.LBMargin = o.lb.caps.caps, o.lb.margin
}

// Validate checks the completed options once at start-up.
func (o *agentOptions) Validate() error {
	errs := []error{o.agent.Validate(), o.drain.Validate()}
	if o.watch.PollTimeout < time.Second {
		errs = append(errs, fmt.Errorf("metadata poll timeout %s must be at least 1s", o.watch.PollTimeout))
	}
	errs = append(errs, o.client.Validate(), o.log.Validate(), o.lb.validate())
	return errors.Join(errs...)
}

func runAgent(ctx context.Context, args []string) error {
	o := newAgentOptions()
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Complete()
	if err := o.Validate(); err != nil {
		return err
	}
	logger := o.log.Logger(os.Stderr)
	log.SetLogger(logger)
	ctx = log.IntoContext(ctx, logger)
	limit, err := daemon.SetMemoryLimit()
	if err != nil {
		return err
	}
	logger.Info("memory", "goMemLimit", limit)
	return o.run(ctx)
}

func (o *agentOptions) run(ctx context.Context) error {
	cfg, err := o.client.Config("termgate-agent/" + o.agent.NodeName)
	if err != nil {
		return err
	}
	// Protobuf halves what the API server sends and the agent decodes
	// (pods above all); patches keep their own JSON content types.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.Wrap(drain.WithoutHiddenRetries)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("build client: %w", err)
	}
	reg := prometheus.NewRegistry()
	if err := registerAll(reg, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return err
	}
	dm, err := drain.NewMetrics(reg)
	if err != nil {
		return err
	}
	wm, err := watch.NewMetrics(reg)
	if err != nil {
		return err
	}
	am, err := agent.NewMetrics(reg)
	if err != nil {
		return err
	}
	o.drain.Metrics = dm

	// Events outlive the signal: a drain that goes on after SIGTERM still
	// reports its steps. Shutdown flushes them when run returns.
	broadcaster := record.NewBroadcaster(record.WithContext(context.WithoutCancel(ctx)))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "termgate-agent", Host: o.agent.NodeName})

	clk := clock.RealClock{}
	pods := drain.NewPodSource(client, o.agent.NodeName)
	lbs := o.lb.tracker(client, clk, o.agent.NodeName)
	if lbs != nil {
		o.drain.LoadBalancers = lbs
	}
	a, err := agent.New(o.agent, agent.Parts{
		Client:  client,
		Clock:   clk,
		Watcher: watch.New(clk, o.watch, wm),
		Drainer: drain.New(client, pods, clk, o.drain, recorder),
		Pods:    pods,
		Events:  recorder,
		Metrics: am,
	})
	if err != nil {
		return err
	}
	return serveWhile(ctx, o.listen, a.Handler(reg), runBeside(lbs, a.Run))
}

// serveWhile runs work and the probe and metrics server beside it. The
// server outlives ctx: after SIGTERM the agent may drain on, and its probes
// and metrics keep answering until work returns.
func serveWhile(ctx context.Context, addr string, h http.Handler, work func(context.Context) error) error {
	ln, err := daemon.Listen(addr)
	if err != nil {
		return err
	}
	log.FromContext(ctx).Info("serving probes and metrics", "addr", ln.Addr().String())
	serveCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- daemon.ServeHTTP(serveCtx, ln, h) }()
	workErr := work(ctx)
	stop()
	return errors.Join(workErr, <-served)
}

// registerAll registers collectors, reporting the first failure.
func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}
