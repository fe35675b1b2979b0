package app

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"termgate.dev/termgate/cmd/termgate/daemon"
	"termgate.dev/termgate/notifier"
	"termgate.dev/termgate/notifier/sink"
	"termgate.dev/termgate/notifier/source"
)

// NotifierOptions are the notifier's flags.
type NotifierOptions struct {
	Kubeconfig    string
	QPS           float64
	Burst         int
	HealthAddress string
	MetricsAddr   string

	ConfigFile  string
	Namespace   string
	SinksSecret string
	RecordName  string
	Source      source.Config

	LeaseName          string
	LeaseDuration      time.Duration
	LeaseRenewDeadline time.Duration
	LeaseRetryPeriod   time.Duration
	LeaseQPS           float64
	LeaseBurst         int

	Log daemon.LogOptions
}

// NewNotifierOptions returns the defaults.
func NewNotifierOptions() *NotifierOptions {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "termgate"
	}
	src := source.DefaultConfig()
	src.Cluster = "kubernetes"
	return &NotifierOptions{
		QPS: 20, Burst: 40,
		HealthAddress: ":8081", MetricsAddr: ":8080",
		ConfigFile:  "/etc/termgate/notifier/config.yaml",
		Namespace:   ns,
		SinksSecret: "termgate-notifier-sinks",
		RecordName:  "termgate-notifier-record",
		Source:      src,
		LeaseName:   "termgate-notifier", LeaseDuration: 15 * time.Second, LeaseRenewDeadline: 10 * time.Second, LeaseRetryPeriod: 2 * time.Second,
		LeaseQPS: 5, LeaseBurst: 10,
		Log: daemon.LogOptions{Format: "json"},
	}
}

// AddFlags binds the options to fs.
func (o *NotifierOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig; empty uses the in-cluster configuration.")
	fs.Float64Var(&o.QPS, "kube-api-qps", o.QPS, "Client QPS for the caches, the sinks Secret and the delivery record.")
	fs.IntVar(&o.Burst, "kube-api-burst", o.Burst, "Client burst for the caches, the sinks Secret and the delivery record.")
	fs.StringVar(&o.HealthAddress, "health-probe-bind-address", o.HealthAddress, "Address serving /healthz and /readyz; \"0\" disables.")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", o.MetricsAddr, "Address serving Prometheus /metrics; \"0\" disables.")
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "The sinks configuration file (YAML; see docs/notifications.md). Read once at start.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Namespace of the Lease, the delivery record and the sinks Secret; defaults to $POD_NAMESPACE or termgate.")
	fs.StringVar(&o.SinksSecret, "sinks-secret", o.SinksSecret, "Secret holding each sink's <name>.url, and optionally <name>.headers and <name>.hmac-key. Read at start and at each leadership term.")
	fs.StringVar(&o.RecordName, "record-configmap", o.RecordName, "ConfigMap in which the leader records what each sink has settled; created on first start.")
	fs.StringVar(&o.Source.Cluster, "cluster-name", o.Source.Cluster, "Name of this cluster in every notification and in the CloudEvents source (/termgate.dev/clusters/<name>).")
	fs.StringVar(&o.Source.AgentComponent, "agent-event-source", o.Source.AgentComponent, "source.component of the agents' events.")
	fs.DurationVar(&o.Source.Window, "history-window", o.Source.Window, "How far back events count, and how long what was sent is remembered: at least the API server's --event-ttl (1h by default). Marks still on a Node count whatever their age.")
	fs.DurationVar(&o.Source.WithdrawalHold, "withdrawal-hold", o.Source.WithdrawalHold, "How long a mark seen removed waits for the agent's event that says why, before it is sent without it.")
	fs.StringVar(&o.LeaseName, "leader-election-lease", o.LeaseName, "Lease electing the one replica that sends notifications.")
	fs.DurationVar(&o.LeaseDuration, "leader-election-lease-duration", o.LeaseDuration, "Lease duration: how long a standby waits for a leader that stopped renewing.")
	fs.DurationVar(&o.LeaseRenewDeadline, "leader-election-renew-deadline", o.LeaseRenewDeadline, "Lease renew deadline: a leader that cannot renew for this long stops sending.")
	fs.DurationVar(&o.LeaseRetryPeriod, "leader-election-retry-period", o.LeaseRetryPeriod, "Lease retry period.")
	fs.Float64Var(&o.LeaseQPS, "leader-election-qps", o.LeaseQPS, "Client QPS reserved for the Lease.")
	fs.IntVar(&o.LeaseBurst, "leader-election-burst", o.LeaseBurst, "Client burst reserved for the Lease.")
	o.Log.AddFlags(fs)
}

// Validate checks the flags that need no file.
func (o *NotifierOptions) Validate() error {
	var errs []error
	if o.QPS <= 0 || o.Burst <= 0 || o.LeaseQPS <= 0 || o.LeaseBurst <= 0 {
		errs = append(errs, errors.New("client QPS and burst must be positive"))
	}
	if o.ConfigFile == "" {
		errs = append(errs, errors.New("--config is required"))
	}
	if err := o.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Config reads the configuration file and returns the notifier's config;
// notifier.New validates the whole.
func (o *NotifierOptions) Config(identity string) (notifier.Config, error) {
	b, err := os.ReadFile(o.ConfigFile)
	if err != nil {
		return notifier.Config{}, fmt.Errorf("--config: %w", err)
	}
	f, err := sink.ParseFile(b)
	if err != nil {
		return notifier.Config{}, fmt.Errorf("--config %s: %w", o.ConfigFile, err)
	}
	return notifier.Config{
		Namespace: o.Namespace, Sinks: f, SinksSecret: o.SinksSecret, RecordName: o.RecordName, Source: o.Source,
		Election: notifier.Election{
			LeaseName: o.LeaseName, Identity: identity,
			LeaseDuration: o.LeaseDuration, RenewDeadline: o.LeaseRenewDeadline, RetryPeriod: o.LeaseRetryPeriod,
		},
	}, nil
}
