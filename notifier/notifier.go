// Package notifier is termgate's notifier: a Deployment, off the nodes it
// reports on, that tells people and systems outside the cluster what
// termgate did. One replica at a time (a Lease elects it) follows the marks
// and events the agents write (package source), and hands each notification
// to every sink whose filter accepts it (package sink), each with its own
// queue and retries (package delivery). What each sink has settled is kept
// in a ConfigMap (package ledger), so a restarted or newly elected leader
// sends what was missed, from the state in the API server, and not what was
// already delivered. The agents know nothing of it.
package notifier

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/notifier/delivery"
	"termgate.dev/termgate/notifier/ledger"
	"termgate.dev/termgate/notifier/notification"
	"termgate.dev/termgate/notifier/sink"
	"termgate.dev/termgate/notifier/source"
)

// Config is everything the notifier is told.
type Config struct {
	// Namespace holds the Lease, the delivery record and the sinks Secret.
	Namespace string
	// Sinks is the parsed configuration file.
	Sinks sink.File
	// SinksSecret names the Secret with each sink's URL, headers and key.
	SinksSecret string
	// RecordName names the delivery record ConfigMap.
	RecordName string
	Source     source.Config
	Election   Election
}

// Election configures the Lease.
type Election struct {
	LeaseName     string
	Identity      string
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
}

// Validate checks the config, templates included: a template that reaches
// for anything but the notification is refused here, at start.
func (c Config) Validate() error {
	errs := []error{c.Source.Validate(), sink.Validate(c.Sinks)}
	if c.Namespace == "" || c.SinksSecret == "" || c.RecordName == "" {
		errs = append(errs, errors.New("namespace, sinks Secret and delivery record names are required"))
	}
	e := c.Election
	if e.LeaseName == "" || e.Identity == "" {
		errs = append(errs, errors.New("leader election: lease name and identity are required"))
	}
	if e.RetryPeriod <= 0 || e.RenewDeadline <= e.RetryPeriod || e.LeaseDuration <= e.RenewDeadline {
		errs = append(errs, errors.New("leader election: want retry period < renew deadline < lease duration"))
	}
	return errors.Join(errs...)
}

// Parts are the collaborators the wiring builds.
type Parts struct {
	// Kube reads events and the Secret and writes the record; Metadata
	// reads Node metadata; Lease renews the Lease (its own rate limit, so
	// that a busy start never starves renewals).
	Kube     kubernetes.Interface
	Metadata metadata.Interface
	Lease    kubernetes.Interface
	Clock    clock.WithTicker
	// HTTP sends the notifications; delivery.NewHTTPClient when nil.
	HTTP     *http.Client
	Registry prometheus.Registerer
}

// Notifier is one replica.
type Notifier struct {
	cfg   Config
	p     Parts
	dm    *delivery.Metrics
	lm    *ledger.Metrics
	m     *metrics
	state atomic.Pointer[termState]
	// elector is the current election, for readiness.
	elector atomic.Pointer[leaderelection.LeaderElector]

	mu       sync.Mutex
	secretOK error
	// termMu is held by a leadership term while it works.
	termMu sync.Mutex
}

// termState is what readiness reports about the current leadership term.
type termState struct {
	src *source.Source
}

// New validates cfg and registers the metrics. It does not talk to the API
// server: Run does.
func New(cfg Config, p Parts) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("notifier config: %w", err)
	}
	if p.Kube == nil || p.Metadata == nil || p.Lease == nil || p.Clock == nil || p.Registry == nil {
		return nil, errors.New("notifier: New needs clients, a clock and a registry")
	}
	if p.HTTP == nil {
		p.HTTP = delivery.NewHTTPClient()
	}
	n := &Notifier{cfg: cfg, p: p, secretOK: errors.New("sinks Secret not read yet")}
	var err error
	if n.dm, err = delivery.NewMetrics(p.Registry); err != nil {
		return nil, err
	}
	if n.lm, err = ledger.NewMetrics(p.Registry); err != nil {
		return nil, err
	}
	if n.m, err = newMetrics(p.Registry); err != nil {
		return nil, err
	}
	return n, nil
}

// Run reads the sinks Secret (a missing or bad one fails the start: nothing
// could be delivered), then competes for the Lease and, while it holds it,
// sends notifications, until ctx ends. On ctx's end a leader finishes the
// attempts in flight and writes its record before it gives the Lease up.
func (n *Notifier) Run(ctx context.Context) error {
	logger := log.FromContext(ctx).WithValues("identity", n.cfg.Election.Identity)
	ctx = log.IntoContext(ctx, logger)
	if _, err := n.loadSinks(ctx); err != nil {
		return err
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, n.cfg.Namespace, n.cfg.Election.LeaseName,
		n.p.Lease.CoreV1(), n.p.Lease.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: n.cfg.Election.Identity})
	if err != nil {
		return fmt.Errorf("leader election lock: %w", err)
	}
	// The election outlives ctx by the leader's shutdown: the Lease is
	// released only after the last attempt and record write.
	electCtx, stopElection := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElection()
	var leading atomic.Bool
	go func() {
		<-ctx.Done()
		if !leading.Load() {
			stopElection() // a standby has nothing to finish
		}
	}()
	e := n.cfg.Election
	for electCtx.Err() == nil {
		term, endTerm := context.WithCancel(electCtx)
		failed := false
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: e.LeaseDuration, RenewDeadline: e.RenewDeadline, RetryPeriod: e.RetryPeriod,
			ReleaseOnCancel: true, Name: e.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					// Terms never overlap, even when the elector lets
					// the next one start before this one returned.
					n.termMu.Lock()
					defer n.termMu.Unlock()
					leading.Store(true)
					defer leading.Store(false)
					logger.Info("became the notifier leader")
					n.m.leader.Set(1)
					defer n.m.leader.Set(0)
					if err := n.lead(log.IntoContext(lctx, logger), ctx.Done()); err != nil && lctx.Err() == nil {
						logger.Error(err, "leading failed; giving the Lease up and competing again")
						failed = true
					}
					if ctx.Err() != nil {
						stopElection()
					}
					endTerm()
				},
				OnStoppedLeading: func() { logger.Info("not the notifier leader") },
			},
		})
		if err != nil {
			endTerm()
			return fmt.Errorf("leader election: %w", err)
		}
		n.elector.Store(elector)
		elector.Run(term)
		n.termMu.Lock() // the term's work is over
		retry := failed
		n.termMu.Unlock()
		endTerm()
		if retry {
			select {
			case <-electCtx.Done():
			case <-n.p.Clock.After(e.LeaseDuration):
			}
		}
	}
	logger.Info("notifier stopped")
	return nil
}

// loadSinks reads the Secret and builds the sinks.
func (n *Notifier) loadSinks(ctx context.Context) ([]*sink.Sink, error) {
	sec, err := n.p.Kube.CoreV1().Secrets(n.cfg.Namespace).Get(ctx, n.cfg.SinksSecret, metav1.GetOptions{})
	if err != nil {
		err = fmt.Errorf("read the sinks Secret %s/%s: %w", n.cfg.Namespace, n.cfg.SinksSecret, err)
	} else {
		var sinks []*sink.Sink
		if sinks, err = sink.Build(n.cfg.Sinks, sec.Data); err == nil {
			n.setSecretErr(nil)
			return sinks, nil
		}
		err = fmt.Errorf("sinks Secret %s/%s: %w", n.cfg.Namespace, n.cfg.SinksSecret, err)
	}
	n.setSecretErr(err)
	return nil, err
}

func (n *Notifier) setSecretErr(err error) {
	n.mu.Lock()
	n.secretOK = err
	n.mu.Unlock()
}

// lead is one leadership term: it reads the sinks Secret again (so a
// rotated URL takes effect at the next term), opens the record, and runs
// the source and one deliverer per sink until lctx ends (the Lease is lost:
// stop at once) or stopping closes (shutdown: finish what is in flight).
func (n *Notifier) lead(lctx context.Context, stopping <-chan struct{}) error {
	logger := log.FromContext(lctx)
	sinks, err := n.loadSinks(lctx)
	if err != nil {
		return err
	}
	src, err := source.New(n.p.Metadata, n.p.Kube, n.cfg.Source, n.p.Clock)
	if err != nil {
		return err
	}
	rec, err := ledger.Open(lctx, n.p.Kube.CoreV1().ConfigMaps(n.cfg.Namespace), ledger.Options{
		Name: n.cfg.RecordName, Retention: n.cfg.Source.Window, Keep: src.Live,
	}, n.p.Clock, n.lm)
	if err != nil {
		return err
	}
	since := rec.Since()
	logger.Info("delivery record read", "configmap", n.cfg.RecordName, "since", since, "sinks", len(sinks))
	n.state.Store(&termState{src: src})
	defer n.state.Store(nil)

	// Deliverers and the record stop after the source: the record's last
	// write covers the last delivery.
	work, stopWork := context.WithCancel(lctx)
	defer stopWork()
	recCtx, stopRecord := context.WithCancel(context.WithoutCancel(lctx))
	var recWG, wg sync.WaitGroup
	recWG.Go(func() { rec.Run(recCtx) })
	deliverers := make([]*delivery.Deliverer, len(sinks))
	for i, s := range sinks {
		deliverers[i] = delivery.New(s, s.Delivery(), n.p.HTTP, rec, n.p.Clock, n.dm)
		wg.Go(func() { deliverers[i].Run(work, stopping) })
	}
	emit := func(x notification.Notification) {
		n.m.notifications.WithLabelValues(string(x.Kind)).Inc()
		if x.OccurredAt.Before(since) {
			return // before the notifier's first start: not replayed
		}
		for i, s := range sinks {
			if s.Accepts(x) {
				deliverers[i].Offer(x)
			}
		}
	}
	srcErr := make(chan error, 1)
	go func() { srcErr <- src.Run(work, emit) }()
	select {
	case <-lctx.Done():
	case <-stopping:
	case err = <-srcErr:
	}
	stopWork()
	wg.Wait()
	stopRecord()
	recWG.Wait()
	if err == nil {
		err = <-srcErr
	}
	return err
}

// Ready reports whether the replica does its job: its sinks Secret is
// read, the election has a leader, and, if that is this replica, its
// caches are synced and it follows what the agents write.
func (n *Notifier) Ready() error {
	n.mu.Lock()
	err := n.secretOK
	n.mu.Unlock()
	if err != nil {
		return err
	}
	e := n.elector.Load()
	switch {
	case e == nil || e.GetLeader() == "":
		return errors.New("no leader elected yet")
	case !e.IsLeader():
		return nil // a standby, ready to take over
	}
	if st := n.state.Load(); st == nil || !st.src.HasSynced() {
		return errors.New("leader: caches not synced")
	}
	return nil
}

// metrics are the notifier's own.
type metrics struct {
	leader        prometheus.Gauge
	notifications *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "leader",
			Help: "1 while this replica holds the Lease and sends notifications.",
		}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "notifications_total",
			Help: "Notifications derived from the agents' marks and events, by kind, before the sinks' filters.",
		}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{m.leader, m.notifications} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register notifier metrics: %w", err)
		}
	}
	return m, nil
}
