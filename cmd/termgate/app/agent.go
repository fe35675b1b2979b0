package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/agent"
	"termgate.dev/termgate/agent/aws"
	"termgate.dev/termgate/agent/azure"
	"termgate.dev/termgate/agent/drain"
	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/cmd/termgate/daemon"
)

// agentOptions are the agent's command-line settings.
type agentOptions struct {
	agent  agent.Config
	drain  drain.Config
	watch  watch.Config
	aws    aws.Config
	azure  azure.Config
	cloud  string
	poll   time.Duration
	client daemon.ClientOptions
	// serving holds the probe and metrics addresses.
	serving daemon.ServingOptions
	// listen is the deprecated single address of probes and metrics;
	// when set it is the probe address.
	listen string
	// apiCheckInterval is how often readiness asks the API server, in
	// the background.
	apiCheckInterval time.Duration
	taint            string
	log              daemon.LogOptions
	// deprecated collects warnings about deprecated flags, logged at start.
	deprecated []string
	lb         lbOptions
}

func newAgentOptions() *agentOptions {
	o := &agentOptions{agent: agent.DefaultConfig(), watch: watch.DefaultConfig(), aws: aws.DefaultConfig(), azure: azure.DefaultConfig(),
		cloud: cloudAuto, poll: time.Second, log: daemon.LogOptions{Format: "json"}, lb: newLBOptions()}
	o.drain = drain.Config{}.WithDefaults()
	// Probes on loopback: the kubelet reaches them (httpGet with host
	// 127.0.0.1, the agent runs in the host's network), pods do not.
	// Metrics on every address, for Prometheus, behind authentication.
	o.serving = daemon.ServingOptions{
		ProbeAddress: "127.0.0.1:9808",
		Metrics:      daemon.MetricsOptions{BindAddress: ":9809", Secure: true},
	}
	o.apiCheckInterval = 10 * time.Second
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
	o.serving.AddFlags(fs)
	fs.StringVar(&o.listen, "listen", "", "DEPRECATED: probes moved to --health-probe-bind-address, metrics to --metrics-bind-address; when set, this is the probe address")
	fs.DurationVar(&o.apiCheckInterval, "api-check-interval", o.apiCheckInterval, "how often, in the background, readiness checks that the API server answers; /readyz answers from the last check")
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
	fs.StringVar(&o.cloud, "cloud", o.cloud, "whose notices to follow: gce, aws, azure, or auto (from the Node's spec.providerID: gce://, aws://, azure://; never by probing addresses)")
	fs.DurationVar(&o.poll, "metadata-poll-interval", o.poll, "longest time between two reads of EC2's and Azure's notices (jittered below it); GCE's are hanging GETs")
	fs.StringVar(&o.aws.Endpoint, "aws-imds-endpoint", o.aws.Endpoint, "EC2 instance metadata endpoint; empty means $AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254 (IMDSv2 only, never through a proxy)")
	fs.StringVar(&o.azure.Endpoint, "azure-metadata-endpoint", o.azure.Endpoint, "Azure instance metadata endpoint of Scheduled Events (never through a proxy)")
	fs.BoolVar(&o.azure.Acknowledge, "azure-acknowledge", false, "once a drain is done, let the Azure event start at once (StartRequests), only for events of this VM alone")
	fs.BoolVar(&o.agent.DrainOnAdvisory, "drain-on-advisory", false, "drain on advisory notices (EC2 rebalance recommendation) instead of only discouraging new pods")
	fs.BoolVar(&o.agent.DrainOnPause, "drain-on-pause", false, "drain on notices that freeze the VM briefly (Azure Freeze, EC2 system-maintenance) instead of only discouraging new pods")
	fs.DurationVar(&o.agent.AdvisoryBudget, "advisory-budget", o.agent.AdvisoryBudget, "deadline assumed after an advisory notice that gives no time (EC2 rebalance recommendation)")
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
	o.aws.PollInterval, o.azure.PollInterval = o.poll, o.poll
	if o.listen != "" {
		o.serving.ProbeAddress = o.listen
		o.deprecated = append(o.deprecated, "--listen is deprecated and now sets only the probe address (--health-probe-bind-address); /metrics is served on --metrics-bind-address")
	}
}

// Validate checks the completed options once at start-up.
func (o *agentOptions) Validate() error {
	errs := []error{o.agent.Validate(), o.drain.Validate()}
	if o.watch.PollTimeout < time.Second {
		errs = append(errs, fmt.Errorf("metadata poll timeout %s must be at least 1s", o.watch.PollTimeout))
	}
	switch o.cloud {
	case cloudAuto, watch.SourceName, aws.SourceName, azure.SourceName:
	default:
		errs = append(errs, fmt.Errorf("--cloud=%q: want gce, aws, azure or auto", o.cloud))
	}
	// Every cloud's settings are checked, whichever the Node turns out to
	// be on; the Azure VM's name comes from the Node later.
	az := o.azure
	az.VMName = "known-later"
	errs = append(errs, o.aws.Validate(), az.Validate())
	if o.apiCheckInterval < time.Second {
		errs = append(errs, fmt.Errorf("--api-check-interval %s must be at least 1s", o.apiCheckInterval))
	}
	errs = append(errs, o.client.Validate(), o.serving.Validate(), o.log.Validate(), o.lb.validate())
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
	for _, w := range o.deprecated {
		logger.Info("Deprecated flag", "warning", w)
	}
	return o.run(ctx)
}

func (o *agentOptions) run(ctx context.Context) error {
	b, err := o.build(ctx, AgentEnv{})
	if err != nil {
		return err
	}
	defer b.broadcaster.Shutdown()
	live := []daemon.Check{{Name: "metadata-watch", Fn: b.agent.Live}}
	ready := []daemon.Check{{Name: "agent", Fn: b.agent.Ready}, {Name: "api-server", Fn: b.check.Err}}
	s, err := openServers(ctx, o.serving, b.base, b.registry, daemon.Probes(live, ready), clock.RealClock{})
	if err != nil {
		return err
	}
	s.Go("api check", b.check.Run)
	return s.while(ctx, b.work)
}

// AgentEnv is what an agent built in-process (NewAgent) is given instead of
// what the process would give it. The zero value is the binary's: the
// API server from --kubeconfig or the pod, the metadata server through the
// default transport (GCE_METADATA_HOST honoured).
type AgentEnv struct {
	// REST is the API server and the agent's own credentials; its QPS and
	// burst are replaced by the flags'. Give each agent a Dial of its own
	// so that client-go does not share one connection among them.
	REST *rest.Config
	// MetadataTransport carries the metadata server's requests.
	MetadataTransport http.RoundTripper
}

// builtAgent is an agent and what runs beside it, wired as the binary
// wires them.
type builtAgent struct {
	agent       *agent.Agent
	check       *agent.APICheck
	base        *rest.Config
	registry    *prometheus.Registry
	broadcaster record.EventBroadcaster
	work        func(context.Context) error
}

func (o *agentOptions) build(ctx context.Context, env AgentEnv) (*builtAgent, error) {
	cfg, err := o.restConfig(env.REST)
	if err != nil {
		return nil, err
	}
	// The readiness check and the metrics authentication get copies of
	// the plain configuration, each with a rate limiter of its own.
	base := rest.CopyConfig(cfg)
	// Protobuf halves what the API server sends and the agent decodes
	// (pods above all); patches keep their own JSON content types.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.Wrap(drain.WithoutHiddenRetries)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build client: %w", err)
	}
	reg, err := daemon.NewRegistry()
	if err != nil {
		return nil, err
	}
	dm, err := drain.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	sm, err := notice.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	am, err := agent.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	drainCfg := o.drain
	drainCfg.Metrics = dm

	// Events outlive the signal: a drain that goes on after SIGTERM still
	// reports its steps. The caller shuts the broadcaster down, which
	// flushes them, when the agent returns.
	broadcaster := record.NewBroadcaster(record.WithContext(context.WithoutCancel(ctx)))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "termgate-agent", Host: o.agent.NodeName})

	clk := clock.RealClock{}
	pods := drain.NewPodSource(client, o.agent.NodeName)
	lbs := o.lb.tracker(client, clk, o.agent.NodeName)
	if lbs != nil {
		drainCfg.LoadBalancers = lbs
	}
	o.watch.Transport = env.MetadataTransport
	a, err := agent.New(o.agent, agent.Parts{
		Client:  client,
		Clock:   clk,
		Sources: o.sources(clk, sm),
		Drainer: drain.New(client, pods, clk, drainCfg, recorder),
		Pods:    pods,
		Events:  recorder,
		Metrics: am,
	})
	if err != nil {
		broadcaster.Shutdown()
		return nil, err
	}
	check, err := newAPICheck(base, clk, o.apiCheckInterval)
	if err != nil {
		broadcaster.Shutdown()
		return nil, err
	}
	return &builtAgent{agent: a, check: check, base: base, registry: reg, broadcaster: broadcaster, work: runBeside(lbs, a.Run)}, nil
}

// restConfig is the agent's API server configuration: env's when given
// (with the flags' rate limits), else from the flags.
func (o *agentOptions) restConfig(given *rest.Config) (*rest.Config, error) {
	userAgent := "termgate-agent/" + o.agent.NodeName
	if given == nil {
		return o.client.Config(userAgent)
	}
	cfg := rest.CopyConfig(given)
	cfg.QPS, cfg.Burst, cfg.UserAgent = float32(o.client.QPS), o.client.Burst, userAgent
	return cfg, nil
}

// Agent is one agent built in-process from the agent's own flags, wired
// as `termgate agent` wires it, without its probe and metrics servers:
// for benchmarks and tests that run more agents than a machine runs
// processes.
type Agent struct {
	built *builtAgent
}

// NewAgent builds the agent `termgate agent args...` would run, with env
// in place of the process's API server credentials and metadata
// transport. It sets no process-wide state (logger, memory limit).
func NewAgent(ctx context.Context, args []string, env AgentEnv) (*Agent, error) {
	o := newAgentOptions()
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("agent flags: %w", err)
	}
	o.Complete()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	b, err := o.build(ctx, env)
	if err != nil {
		return nil, err
	}
	return &Agent{built: b}, nil
}

// Run runs the agent and its API check until ctx ends (and a drain in
// progress, as the binary's does), then flushes its events.
func (a *Agent) Run(ctx context.Context) error {
	defer a.built.broadcaster.Shutdown()
	checkCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); _ = a.built.check.Run(checkCtx) }()
	defer func() { stop(); <-done }()
	return a.built.work(ctx)
}

// Ready is the agent's readiness, as its /readyz reports it.
func (a *Agent) Ready() error {
	return errors.Join(a.built.agent.Ready(), a.built.check.Err())
}

// Registry holds the agent's metrics.
func (a *Agent) Registry() *prometheus.Registry { return a.built.registry }

// newAPICheck builds the readiness check's own client: one request per
// interval, on a rate limiter of its own.
func newAPICheck(base *rest.Config, clk clock.WithTicker, interval time.Duration) (*agent.APICheck, error) {
	c := rest.CopyConfig(base)
	c.QPS, c.Burst, c.UserAgent = 1, 2, base.UserAgent+" readiness"
	c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	dc, err := discovery.NewDiscoveryClientForConfig(c)
	if err != nil {
		return nil, fmt.Errorf("readiness client: %w", err)
	}
	return agent.NewAPICheck(dc.RESTClient(), clk, interval), nil
}

// servers are a subcommand's probe and metrics servers, their ports
// already open, and what runs beside them.
type servers struct {
	stop   context.CancelFunc
	group  *daemon.Group
	groupC context.Context
}

// servers opens the probe and metrics ports now, so a port in use or a
// bad certificate fails the start rather than a goroutine later.
func openServers(ctx context.Context, serving daemon.ServingOptions, base *rest.Config, reg *prometheus.Registry, probes http.Handler, clk clock.PassiveClock) (*servers, error) {
	logger := log.FromContext(ctx)
	// The servers outlive ctx: after SIGTERM the agent may drain on, and
	// its probes and metrics keep answering until the work returns.
	serveCtx, stop := context.WithCancel(log.IntoContext(context.WithoutCancel(ctx), logger))
	s := &servers{stop: stop}
	s.group, s.groupC = daemon.NewGroup(serveCtx)
	if serving.ProbesEnabled() {
		ln, err := daemon.Listen(serving.ProbeAddress)
		if err != nil {
			stop()
			return nil, fmt.Errorf("probes: %w", err)
		}
		logger.Info("serving probes", "addr", ln.Addr().String())
		srv := daemon.Server{Name: "probes", Handler: probes, Limits: daemon.ProbeLimits()}
		s.Go("probes", func(ctx context.Context) error { return srv.Serve(ctx, ln) })
	}
	if serving.Metrics.Enabled() {
		m, err := daemon.NewMetricsServer(ctx, serving.Metrics, base, daemon.Gatherer(reg), reg, clk)
		if err != nil {
			stop()
			return nil, errors.Join(err, s.group.Wait())
		}
		logger.Info("serving metrics", "addr", m.Addr().String(), "secure", serving.Metrics.Secure)
		s.Go("metrics", m.Run)
	}
	return s, nil
}

// Go runs fn beside the servers until they stop.
func (s *servers) Go(name string, fn func(context.Context) error) {
	s.group.Go(name, func() error { return fn(s.groupC) })
}

// while runs work, then stops the servers and what runs beside them.
func (s *servers) while(ctx context.Context, work func(context.Context) error) error {
	workErr := work(ctx)
	s.stop()
	return errors.Join(workErr, s.group.Wait())
}
