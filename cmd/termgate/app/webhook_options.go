package app

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"termgate.dev/termgate/certs/selfmanaged"
	"termgate.dev/termgate/cmd/termgate/daemon"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/nodepods"
)

// Certificate modes.
const (
	CertModeSelfManaged = "self-managed"
	CertModeCertManager = "cert-manager"
	CertModeFiles       = "files"
)

// WebhookOptions are the webhook's flags.
type WebhookOptions struct {
	Client      daemon.ClientOptions
	BindAddress string
	// Serving holds the probe and metrics addresses.
	Serving daemon.ServingOptions

	TaintEffect   string
	AgentUsername string
	// ConfineDenyOnError is accepted for compatibility: the confinement
	// always fails closed now.
	ConfineDenyOnError bool
	// ConfineQPS and ConfineBurst are the budget of the pod lists of nodes
	// that become terminating; ConfineReadQPS and ConfineReadBurst that of
	// the confinement's single reads (the agent's node, pods the lists do
	// not hold), apart so reads can never starve the lists.
	ConfineQPS       float64
	ConfineBurst     int
	ConfineReadQPS   float64
	ConfineReadBurst int
	// ConfineNodeReadQPS and ConfineNodeReadBurst are each node's share of
	// the single reads, so one node's agent cannot spend the others';
	// ConfineLinger is how long a node's pods are kept after its mark goes.
	ConfineNodeReadQPS   float64
	ConfineNodeReadBurst int
	ConfineLinger        time.Duration

	// ConfirmNodeSelectors picks the nodes whose state a bind re-reads
	// from the API server (';'-separated label selectors); ConfirmTimeout
	// bounds each read, and ConfirmQPS and ConfirmBurst are its own
	// client budget.
	ConfirmNodeSelectors string
	ConfirmTimeout       time.Duration
	ConfirmQPS           float64
	ConfirmBurst         int
	// PinnedConfirmQPS and PinnedConfirmBurst are the pinned-pod gate's own
	// re-read budget: any tenant can create pinned pods, and they must not
	// spend the reads that binds need.
	PinnedConfirmQPS   float64
	PinnedConfirmBurst int
	// RefuseUnconfirmed refuses a bind onto a node whose re-read failed,
	// instead of allowing it on the cache's word; RefuseUnconfirmedPinned
	// does the same for a pod created with spec.nodeName.
	RefuseUnconfirmed       bool
	RefuseUnconfirmedPinned bool

	// Limits of the admission server.
	Limits webhook.Limits
	// ExpectedPeerCIDRs are the comma-separated ranges the API server
	// calls from; empty turns the unexpected-peer count off.
	ExpectedPeerCIDRs string

	ShutdownDelay   time.Duration
	ShutdownTimeout time.Duration

	Namespace         string
	ServiceName       string
	WebhookConfigName string
	CertMode          string
	CertDir           string
	CertSecret        string
	CASecret          string
	CertHosts         string
	CAValidity        time.Duration
	CARenewBefore     time.Duration
	CertValidity      time.Duration
	CertRenewBefore   time.Duration
	CertResync        time.Duration
	CertSyncInterval  time.Duration
	CertificateName   string

	// Election elects the replica that writes certificates (self-managed).
	Election daemon.ElectionOptions

	Log daemon.LogOptions

	// Set by Complete from the flags above.
	confirmSelectors []labels.Selector
	expectedPeers    []netip.Prefix
}

// NewWebhookOptions returns the defaults.
func NewWebhookOptions() *WebhookOptions {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "termgate"
	}
	return &WebhookOptions{
		// A zone reclaim marks hundreds of nodes within seconds, and each
		// marked node's pods are listed once, from the watch cache's node
		// index: cheap for the API server. At 50 and 100, the 400th list
		// of 500 nodes marked at once waited 6 s in the client's limiter,
		// and its agent's evictions, which follow the mark within
		// milliseconds, failed closed meanwhile (make bench-scale).
		ConfineQPS:   100,
		ConfineBurst: 500,
		// The same for the agents' nodes read before the cache holds their
		// mark (shared per node, see nodecache.Rereader): with 5,000 nodes
		// the webhook's node watch ran seconds behind a 500-node reclaim,
		// and at 50 and 100 1,411 of 2,016 own-node evictions failed
		// closed waiting for this limiter (make bench-scale, 5,000 nodes).
		ConfineReadQPS:       100,
		ConfineReadBurst:     500,
		ConfineNodeReadQPS:   nodepods.DefaultNodeReadQPS,
		ConfineNodeReadBurst: nodepods.DefaultNodeReadBurst,
		ConfineLinger:        nodepods.DefaultLinger,
		PinnedConfirmQPS:     20,
		PinnedConfirmBurst:   40,
		ConfirmNodeSelectors: nodecache.DefaultAtRisk,
		// The API server waits 2 s for the webhook; a read still waiting
		// after half a second leaves time to answer from the cache.
		ConfirmTimeout: 500 * time.Millisecond,
		// The scheduler's own client defaults to 50 QPS for all its
		// calls, binds included: twice that leaves room for a faster
		// scheduler or an uneven spread over replicas.
		ConfirmQPS:   100,
		ConfirmBurst: 200,
		// A bind onto a Spot node whose re-read failed is refused: in a
		// storm on one core (docs/benchmarks.md) each refusal cost the
		// scheduler one retry and the scale-up no visible time, where an
		// allowed one may land on a node marked meanwhile.
		RefuseUnconfirmed: true,
		// Not so for pinned pods: nothing retries a refused creation for
		// a person or a script, and creating 200 pods pinned to Spot
		// nodes at once spends the pinned re-reads' budget (20/s) in a
		// second: with refusal, 135 of 200 were refused (test/e2e/massmark).
		RefuseUnconfirmedPinned: false,
		Limits:                  webhook.DefaultLimits(),
		BindAddress:             ":9443",
		// The webhook's pods have their own network: the kubelet probes
		// the pod's address, and the NetworkPolicy keeps other pods off
		// the probe port.
		Serving: daemon.ServingOptions{
			ProbeAddress: ":8081",
			Metrics:      daemon.MetricsOptions{BindAddress: ":8443", Secure: true},
		},
		Client:            daemon.ClientOptions{QPS: 20, Burst: 40},
		TaintEffect:       string(corev1.TaintEffectNoSchedule),
		AgentUsername:     "system:serviceaccount:termgate-agent:termgate-agent",
		ShutdownDelay:     5 * time.Second,
		ShutdownTimeout:   20 * time.Second,
		Namespace:         ns,
		ServiceName:       "termgate-webhook",
		WebhookConfigName: "termgate",
		CertMode:          CertModeSelfManaged,
		CertDir:           "/var/run/termgate/certs",
		CertSecret:        "termgate-webhook-certs",
		CASecret:          "termgate-webhook-ca",
		CAValidity:        10 * 365 * 24 * time.Hour,
		CARenewBefore:     365 * 24 * time.Hour,
		CertValidity:      90 * 24 * time.Hour,
		CertRenewBefore:   30 * 24 * time.Hour,
		CertResync:        time.Minute,
		CertSyncInterval:  10 * time.Second,
		CertificateName:   "termgate-webhook-serving",
		Election:          daemon.DefaultElection("termgate-webhook-certs"),
		Log:               daemon.LogOptions{Format: "json"},
	}
}

// AddFlags binds the options to fs.
func (o *WebhookOptions) AddFlags(fs *flag.FlagSet) {
	o.Client.AddFlags(fs, "the node cache, the bind gate's pod reads and certificate work")
	fs.StringVar(&o.BindAddress, "bind-address", o.BindAddress, "Address the HTTPS admission server listens on.")
	o.Serving.AddFlags(fs)
	fs.Float64Var(&o.ConfineQPS, "confine-kube-api-qps", o.ConfineQPS, "Client QPS of the pod lists of nodes that become terminating (the agent confinement's memory).")
	fs.IntVar(&o.ConfineBurst, "confine-kube-api-burst", o.ConfineBurst, "Client burst of the pod lists of nodes that become terminating.")
	fs.Float64Var(&o.ConfineReadQPS, "confine-read-kube-api-qps", o.ConfineReadQPS, "Client QPS of the agent confinement's single reads: the agent's node when the cache has not seen its mark, and pods the lists do not hold.")
	fs.IntVar(&o.ConfineReadBurst, "confine-read-kube-api-burst", o.ConfineReadBurst, "Client burst of the agent confinement's single reads.")
	fs.Float64Var(&o.ConfineNodeReadQPS, "confine-node-read-qps", o.ConfineNodeReadQPS, "Each node's share of the confinement's pod reads, so one node's agent cannot spend the others'.")
	fs.IntVar(&o.ConfineNodeReadBurst, "confine-node-read-burst", o.ConfineNodeReadBurst, "Each node's burst of the confinement's pod reads.")
	fs.DurationVar(&o.ConfineLinger, "confine-linger", o.ConfineLinger, "How long the pods of a node are kept in memory after its mark goes, so a node flipping its mark causes no new lists.")
	fs.Float64Var(&o.PinnedConfirmQPS, "pinned-confirm-kube-api-qps", o.PinnedConfirmQPS, "Client QPS of the node re-reads before pinned pods, apart from the binds'.")
	fs.IntVar(&o.PinnedConfirmBurst, "pinned-confirm-kube-api-burst", o.PinnedConfirmBurst, "Client burst of the node re-reads before pinned pods.")
	fs.BoolVar(&o.RefuseUnconfirmed, "refuse-unconfirmed", o.RefuseUnconfirmed, "Refuse a bind onto a node whose re-read failed or timed out (the scheduler retries); false allows it on the cache's word.")
	fs.BoolVar(&o.RefuseUnconfirmedPinned, "refuse-unconfirmed-pinned", o.RefuseUnconfirmedPinned, "Refuse a pod created with spec.nodeName onto a node whose re-read failed or timed out; false (the default) allows it on the cache's word, since nothing retries a refused creation for its author.")
	fs.StringVar(&o.ConfirmNodeSelectors, "confirm-node-selectors", o.ConfirmNodeSelectors, "Label selectors, separated by ';', of nodes that may be reclaimed at short notice. A bind or pinned pod onto such a node (or onto a node in the advance state) re-reads the node from the API server when the cache says it is not terminating, so a mark the cache has not seen yet still counts. Empty re-reads advance nodes only.")
	fs.DurationVar(&o.ConfirmTimeout, "confirm-timeout", o.ConfirmTimeout, "Longest fresh node read; past it the cache's answer is used (counted as failed).")
	fs.Float64Var(&o.ConfirmQPS, "confirm-kube-api-qps", o.ConfirmQPS, "Client QPS of the fresh node reads alone.")
	fs.IntVar(&o.ConfirmBurst, "confirm-kube-api-burst", o.ConfirmBurst, "Client burst of the fresh node reads alone.")
	fs.DurationVar(&o.Limits.ReadHeaderTimeout, "read-header-timeout", o.Limits.ReadHeaderTimeout, "Admission server: longest TLS handshake plus request headers.")
	fs.DurationVar(&o.Limits.ReadTimeout, "read-timeout", o.Limits.ReadTimeout, "Admission server: longest read of a whole request, body included; just above the API server's own 2 s call timeout.")
	fs.DurationVar(&o.Limits.WriteTimeout, "write-timeout", o.Limits.WriteTimeout, "Admission server: longest write of an answer.")
	fs.DurationVar(&o.Limits.IdleTimeout, "idle-timeout", o.Limits.IdleTimeout, "Admission server: close keep-alive connections idle this long.")
	fs.Int64Var(&o.Limits.MaxBodyBytes, "max-request-body-bytes", o.Limits.MaxBodyBytes, "Admission server: largest review body accepted (413 beyond); the default is just above the largest review the API server sends.")
	fs.IntVar(&o.Limits.MaxInFlight, "max-requests-in-flight", o.Limits.MaxInFlight, "Admission server: calls answered at once; more get 429.")
	fs.Int64Var(&o.Limits.MaxInFlightBodyBytes, "max-request-bytes-in-flight", o.Limits.MaxInFlightBodyBytes, "Admission server: total declared body bytes of the calls being answered; more get 429. Bounds memory.")
	fs.IntVar(&o.Limits.MaxConnections, "max-connections", o.Limits.MaxConnections, "Admission server: open connections; more wait in the listen backlog.")
	fs.IntVar(&o.Limits.MaxConcurrentStreams, "http2-max-concurrent-streams", o.Limits.MaxConcurrentStreams, "Admission server: HTTP/2 streams per connection.")
	fs.IntVar(&o.Limits.MaxReadingPerPeer, "max-reading-calls-per-peer", o.Limits.MaxReadingPerPeer, "Admission server: calls of one remote address outside --expected-peer-cidrs whose body is still arriving (their declared bodies also limited to a quarter of --max-request-bytes-in-flight); more get 429. The control plane is never limited this way.")
	fs.StringVar(&o.ExpectedPeerCIDRs, "expected-peer-cidrs", o.ExpectedPeerCIDRs, "Admission server: comma-separated address ranges the API server calls from (the NetworkPolicy's control-plane range). Calls from elsewhere are counted in termgate_webhook_unexpected_peer_calls_total and limited per peer (--max-reading-calls-per-peer). Empty: neither.")
	fs.StringVar(&o.TaintEffect, "taint-effect", o.TaintEffect, "Effect of the termination taint the agent writes (NoSchedule or NoExecute); decides which tolerations count.")
	fs.StringVar(&o.AgentUsername, "agent-username", o.AgentUsername, "User name of the agent's service account, confined to its own node.")
	fs.BoolVar(&o.ConfineDenyOnError, "confine-deny-on-error", o.ConfineDenyOnError, "Deprecated, no effect: the agent confinement always fails closed.")
	fs.DurationVar(&o.ShutdownDelay, "shutdown-delay", o.ShutdownDelay, "Time between turning not-ready and closing the server, so callers stop sending first.")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "Longest wait for requests in flight at shutdown.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Namespace of the webhook (secret, lease, certificate); defaults to $POD_NAMESPACE or termgate.")
	fs.StringVar(&o.ServiceName, "service-name", o.ServiceName, "Service in front of the webhook; names the serving certificate.")
	fs.StringVar(&o.WebhookConfigName, "webhook-config-name", o.WebhookConfigName, "Name of the Validating- and MutatingWebhookConfiguration that get the CA bundle.")
	fs.StringVar(&o.CertMode, "cert-mode", o.CertMode, "Where the serving certificate comes from: self-managed, cert-manager or files.")
	fs.StringVar(&o.CertDir, "cert-dir", o.CertDir, "Directory holding tls.crt and tls.key, reloaded on change.")
	fs.StringVar(&o.CertSecret, "cert-secret", o.CertSecret, "self-managed: Secret holding the serving pair and the CA bundle, which every replica copies.")
	fs.StringVar(&o.CASecret, "ca-secret", o.CASecret, "self-managed: Secret holding the CA key, read only by the replica that signs certificates.")
	fs.StringVar(&o.CertHosts, "cert-hosts", o.CertHosts, "self-managed: comma-separated DNS names and IPs of the serving certificate; empty uses the Service's names.")
	fs.DurationVar(&o.CAValidity, "ca-validity", o.CAValidity, "self-managed: lifetime of a new CA.")
	fs.DurationVar(&o.CARenewBefore, "ca-renew-before", o.CARenewBefore, "self-managed: replace the CA this long before it expires.")
	fs.DurationVar(&o.CertValidity, "cert-validity", o.CertValidity, "self-managed: lifetime of a serving certificate.")
	fs.DurationVar(&o.CertRenewBefore, "cert-renew-before", o.CertRenewBefore, "self-managed: renew the serving certificate this long before it expires.")
	fs.DurationVar(&o.CertResync, "cert-resync", o.CertResync, "self-managed: how often the leader re-checks the Secret and re-injects a drifted CA bundle.")
	fs.DurationVar(&o.CertSyncInterval, "cert-sync-interval", o.CertSyncInterval, "self-managed: how often each replica copies the Secret to --cert-dir.")
	fs.StringVar(&o.CertificateName, "certificate-name", o.CertificateName, "cert-manager: the serving Certificate whose Ready condition gates readiness.")
	o.Election.AddFlags(fs, "writes certificates (self-managed)")
	o.Log.AddFlags(fs)
}

// Complete parses the flags that are lists (node selectors, peer ranges)
// once, for Validate and the wiring to use.
func (o *WebhookOptions) Complete() error {
	var errs []error
	var err error
	if o.confirmSelectors, err = nodecache.ParseSelectors(o.ConfirmNodeSelectors); err != nil {
		errs = append(errs, fmt.Errorf("--confirm-node-selectors: %w", err))
	}
	if o.expectedPeers, err = parsePeerCIDRs(o.ExpectedPeerCIDRs); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Validate checks the completed options once at start-up.
func (o *WebhookOptions) Validate() error {
	var errs []error
	switch corev1.TaintEffect(o.TaintEffect) {
	case corev1.TaintEffectNoSchedule, corev1.TaintEffectNoExecute, corev1.TaintEffectPreferNoSchedule:
	default:
		errs = append(errs, fmt.Errorf("--taint-effect %q: want NoSchedule, NoExecute or PreferNoSchedule", o.TaintEffect))
	}
	switch o.CertMode {
	case CertModeSelfManaged:
		errs = append(errs, o.rotatorOptions().Validate())
		if o.CertSyncInterval <= 0 {
			errs = append(errs, errors.New("--cert-sync-interval must be positive"))
		}
		errs = append(errs, o.Election.Validate())
	case CertModeCertManager:
		if o.CertificateName == "" {
			errs = append(errs, errors.New("--certificate-name is required with --cert-mode=cert-manager"))
		}
	case CertModeFiles:
	default:
		errs = append(errs, fmt.Errorf("--cert-mode %q: want self-managed, cert-manager or files", o.CertMode))
	}
	if err := o.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.CertDir == "" {
		errs = append(errs, errors.New("--cert-dir is required"))
	}
	if o.BindAddress == "" || o.BindAddress == "0" {
		errs = append(errs, errors.New("--bind-address is required"))
	}
	if o.ShutdownDelay < 0 || o.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("--shutdown-delay must not be negative and --shutdown-timeout must be positive"))
	}
	if o.ConfirmTimeout <= 0 {
		errs = append(errs, errors.New("--confirm-timeout must be positive"))
	}
	errs = append(errs, o.Client.Validate())
	if o.ConfineQPS <= 0 || o.ConfineBurst <= 0 ||
		o.ConfineReadQPS <= 0 || o.ConfineReadBurst <= 0 || o.ConfineNodeReadQPS <= 0 || o.ConfineNodeReadBurst <= 0 ||
		o.ConfirmQPS <= 0 || o.ConfirmBurst <= 0 || o.PinnedConfirmQPS <= 0 || o.PinnedConfirmBurst <= 0 {
		errs = append(errs, errors.New("client QPS and burst must be positive"))
	}
	if o.AgentUsername == "" {
		errs = append(errs, errors.New("--agent-username is required: it names the account confined to its own node"))
	}
	if err := o.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, o.Serving.Validate())
	return errors.Join(errs...)
}

// webhookOptions are the settings webhook.New takes, from the completed
// options.
func (o *WebhookOptions) webhookOptions() webhook.Options {
	return webhook.Options{
		TaintEffect:             corev1.TaintEffect(o.TaintEffect),
		AgentUsername:           o.AgentUsername,
		ConfirmSelectors:        o.confirmSelectors,
		ConfirmTimeout:          o.ConfirmTimeout,
		RefuseUnconfirmed:       o.RefuseUnconfirmed,
		RefuseUnconfirmedPinned: o.RefuseUnconfirmedPinned,
		ConfinePods: nodepods.Options{
			Linger: o.ConfineLinger, NodeReadQPS: o.ConfineNodeReadQPS, NodeReadBurst: o.ConfineNodeReadBurst,
		},
		Limits:          o.Limits,
		ExpectedPeers:   o.expectedPeers,
		ShutdownDelay:   o.ShutdownDelay,
		ShutdownTimeout: o.ShutdownTimeout,
		CertDir:         o.CertDir,
	}
}

// parsePeerCIDRs parses --expected-peer-cidrs.
func parsePeerCIDRs(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range strings.Split(list, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("--expected-peer-cidrs: %q is not a CIDR range (want e.g. 172.16.0.0/28)", c)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (o *WebhookOptions) hosts() []string {
	if o.CertHosts != "" {
		var hs []string
		for _, h := range strings.Split(o.CertHosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hs = append(hs, h)
			}
		}
		return hs
	}
	svc := o.ServiceName + "." + o.Namespace
	return []string{svc + ".svc", svc + ".svc.cluster.local"}
}

func (o *WebhookOptions) rotatorOptions() selfmanaged.Options {
	return selfmanaged.Options{
		Namespace:         o.Namespace,
		SecretName:        o.CertSecret,
		CASecretName:      o.CASecret,
		WebhookConfigName: o.WebhookConfigName,
		Hosts:             o.hosts(),
		CAValidity:        o.CAValidity,
		CARenewBefore:     o.CARenewBefore,
		CertValidity:      o.CertValidity,
		CertRenewBefore:   o.CertRenewBefore,
		Resync:            o.CertResync,
	}
}

// runWebhook parses flags and serves until ctx ends.
