package app

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"termgate.dev/termgate/cmd/termgate/daemon"
	"termgate.dev/termgate/notifier"
	"termgate.dev/termgate/notifier/sink"
	"termgate.dev/termgate/notifier/source"
)

// NotifierOptions are the notifier's flags.
type NotifierOptions struct {
	Client daemon.ClientOptions
	// Serving holds the probe and metrics addresses. The notifier runs in
	// the pod network of its own namespace, not the host's: its metrics
	// are plain HTTP by default, for the NetworkPolicy to guard.
	Serving daemon.ServingOptions

	ConfigFile  string
	Namespace   string
	SinksSecret string
	RecordName  string
	Source      source.Config

	Election daemon.ElectionOptions

	Log daemon.LogOptions

	// sinks is --config's file, read by Complete.
	sinks sink.File
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
		Client:      daemon.ClientOptions{QPS: 20, Burst: 40},
		Serving:     daemon.ServingOptions{ProbeAddress: ":8081", Metrics: daemon.MetricsOptions{BindAddress: ":8080"}},
		ConfigFile:  "/etc/termgate/notifier/config.yaml",
		Namespace:   ns,
		SinksSecret: "termgate-notifier-sinks",
		RecordName:  "termgate-notifier-record",
		Source:      src,
		Election:    daemon.DefaultElection("termgate-notifier"),
		Log:         daemon.LogOptions{Format: "json"},
	}
}

// AddFlags binds the options to fs.
func (o *NotifierOptions) AddFlags(fs *flag.FlagSet) {
	o.Client.AddFlags(fs, "the caches, the sinks Secret and the delivery record")
	o.Serving.AddFlags(fs)
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "The sinks configuration file (YAML; see docs/notifications.md). Read once at start.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Namespace of the Lease, the delivery record and the sinks Secret; defaults to $POD_NAMESPACE or termgate.")
	fs.StringVar(&o.SinksSecret, "sinks-secret", o.SinksSecret, "Secret holding each sink's <name>.url, and optionally <name>.headers and <name>.hmac-key. Read at start and at each leadership term.")
	fs.StringVar(&o.RecordName, "record-configmap", o.RecordName, "ConfigMap in which the leader records what each sink has settled; created on first start.")
	fs.StringVar(&o.Source.Cluster, "cluster-name", o.Source.Cluster, "Name of this cluster in every notification and in the CloudEvents source (/termgate.dev/clusters/<name>).")
	fs.StringVar(&o.Source.AgentComponent, "agent-event-source", o.Source.AgentComponent, "source.component of the agents' events.")
	fs.DurationVar(&o.Source.Window, "history-window", o.Source.Window, "How far back events count, and how long what was sent is remembered: at least the API server's --event-ttl (1h by default). Marks still on a Node count whatever their age.")
	fs.DurationVar(&o.Source.WithdrawalHold, "withdrawal-hold", o.Source.WithdrawalHold, "How long a mark seen removed waits for the agent's event that says why, before it is sent without it.")
	o.Election.AddFlags(fs, "sends notifications")
	o.Log.AddFlags(fs)
}

// Complete reads the sinks file --config names: a file that cannot be read
// or parsed fails the start before any client exists.
func (o *NotifierOptions) Complete() error {
	if o.ConfigFile == "" {
		return errors.New("--config is required")
	}
	b, err := os.ReadFile(o.ConfigFile)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	if o.sinks, err = sink.ParseFile(b); err != nil {
		return fmt.Errorf("--config %s: %w", o.ConfigFile, err)
	}
	return nil
}

// Validate checks the completed options; the sinks themselves are checked
// with the whole configuration by notifier.Config.Validate.
func (o *NotifierOptions) Validate() error {
	return errors.Join(o.Client.Validate(), o.Serving.Validate(), o.Election.Validate(), o.Log.Validate())
}

// Config is the notifier's configuration for the replica named identity.
func (o *NotifierOptions) Config(identity string) notifier.Config {
	return notifier.Config{
		Namespace: o.Namespace, Sinks: o.sinks, SinksSecret: o.SinksSecret, RecordName: o.RecordName, Source: o.Source,
		Election: notifier.Election{
			LeaseName: o.Election.LeaseName, Identity: identity,
			LeaseDuration: o.Election.LeaseDuration, RenewDeadline: o.Election.RenewDeadline, RetryPeriod: o.Election.RetryPeriod,
		},
	}
}
