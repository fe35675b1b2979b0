package app

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/cmd/termgate/daemon"
	"termgate.dev/termgate/notifier"
)

// runNotifier parses flags and runs the notifier until ctx ends.
func runNotifier(ctx context.Context, args []string) error {
	o := NewNotifierOptions()
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("notifier: unexpected arguments %v", fs.Args())
	}
	if err := o.Complete(); err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	if err := o.Validate(); err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	cfg := o.Config(identity())
	// Before any client: a bad sink or template fails the start at once.
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("notifier config: %w", err)
	}
	logger := o.Log.Logger(os.Stderr).WithName("notifier")
	log.SetLogger(logger)
	ctx = log.IntoContext(ctx, logger)
	if _, err := daemon.SetMemoryLimit(); err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	reg, err := daemon.NewRegistry()
	if err != nil {
		return err
	}
	base, err := o.Client.Config("termgate-notifier")
	if err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	parts, err := notifierParts(o, base, reg)
	if err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	n, err := notifier.New(cfg, parts)
	if err != nil {
		return err // names the sink and what is wrong with it
	}
	logger.Info("notifier starting", "sinks", len(cfg.Sinks.Sinks), "cluster", cfg.Source.Cluster, "namespace", cfg.Namespace)
	live := []daemon.Check{{Name: "process", Fn: func() error { return nil }}}
	ready := []daemon.Check{{Name: "notifier", Fn: n.Ready}}
	s, err := openServers(ctx, o.Serving, base, reg, daemon.Probes(live, ready), clock.RealClock{})
	if err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	return s.while(ctx, n.Run)
}

// notifierParts builds the notifier's clients from the options.
func notifierParts(o *NotifierOptions, cfg *rest.Config, reg prometheus.Registerer) (notifier.Parts, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return notifier.Parts{}, fmt.Errorf("kubernetes client: %w", err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return notifier.Parts{}, fmt.Errorf("metadata client: %w", err)
	}
	lease, err := kubernetes.NewForConfig(withBudget(cfg, o.Election.QPS, o.Election.Burst, cfg.UserAgent))
	if err != nil {
		return notifier.Parts{}, fmt.Errorf("lease client: %w", err)
	}
	return notifier.Parts{Kube: kube, Metadata: meta, Lease: lease, Clock: clock.RealClock{}, Registry: reg}, nil
}
