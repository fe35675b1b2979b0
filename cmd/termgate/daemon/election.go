package daemon

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// ElectionOptions are the Lease flags of a subcommand whose replicas elect
// one of them (the webhook's certificate writer, the notifier's sender).
// The client budget is the Lease's alone, so a busy replica still renews.
type ElectionOptions struct {
	LeaseName     string
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	QPS           float64
	Burst         int
}

// DefaultElection is client-go's usual timing under the Lease name.
func DefaultElection(lease string) ElectionOptions {
	return ElectionOptions{
		LeaseName: lease, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		QPS: 5, Burst: 10,
	}
}

// AddFlags binds the --leader-election-* flags; elects says what the
// elected replica does, for --leader-election-lease's help.
func (o *ElectionOptions) AddFlags(fs *flag.FlagSet, elects string) {
	fs.StringVar(&o.LeaseName, "leader-election-lease", o.LeaseName, "Lease electing the one replica that "+elects+".")
	fs.DurationVar(&o.LeaseDuration, "leader-election-lease-duration", o.LeaseDuration, "Lease duration: how long a standby waits for a leader that stopped renewing.")
	fs.DurationVar(&o.RenewDeadline, "leader-election-renew-deadline", o.RenewDeadline, "Lease renew deadline: a leader that cannot renew for this long steps down.")
	fs.DurationVar(&o.RetryPeriod, "leader-election-retry-period", o.RetryPeriod, "Lease retry period.")
	fs.Float64Var(&o.QPS, "leader-election-qps", o.QPS, "Client QPS reserved for the Lease.")
	fs.IntVar(&o.Burst, "leader-election-burst", o.Burst, "Client burst reserved for the Lease.")
}

// Validate checks what client-go's leader election would refuse later, at
// start-up instead.
func (o ElectionOptions) Validate() error {
	var errs []error
	if o.LeaseName == "" {
		errs = append(errs, errors.New("--leader-election-lease is required"))
	}
	if o.RetryPeriod <= 0 || o.RenewDeadline <= o.RetryPeriod || o.LeaseDuration <= o.RenewDeadline {
		errs = append(errs, fmt.Errorf("leader election: want 0 < retry period (%s) < renew deadline (%s) < lease duration (%s)", o.RetryPeriod, o.RenewDeadline, o.LeaseDuration))
	}
	if o.QPS <= 0 || o.Burst <= 0 {
		errs = append(errs, errors.New("leader election: client QPS and burst must be positive"))
	}
	return errors.Join(errs...)
}
