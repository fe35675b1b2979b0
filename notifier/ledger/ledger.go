// Package ledger remembers, for each sink, which notifications are settled
// (delivered, refused for good, or dropped from a full queue), so that a
// restarted or newly elected notifier does not send them again.
//
// The record is a ConfigMap the notifier owns, not an annotation on its
// Lease: the Lease is rewritten every few seconds by the leader election
// from its own cached copy, so sharing it would make every record write
// race the renewals (and a lost race costs a renewal); a ConfigMap of its
// own is written only by the leader, can be granted by name, and can be
// read (or reset, by deleting it) with kubectl. Writes are compare-and-swap
// on the resourceVersion; on a conflict the two records are merged (the
// union of settled ids), so a write of a replica that just lost the lease
// only ever adds to the record.
package ledger

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Keys of the ConfigMap's data.
const (
	// KeySince holds when the notifier first ran (RFC 3339): what happened
	// before is not sent, so a new install does not replay the past hour.
	KeySince = "since"
	// KeySinkPrefix + sink name holds the sink's settled ids as JSON:
	// {"<id>": <occurred, Unix milliseconds>}.
	KeySinkPrefix = "settled."
)

// maxDataBytes keeps the record well under the API server's 1 MiB object
// limit; beyond it the oldest ids go first.
const maxDataBytes = 768 << 10

// Ledger is one leadership term's view of the record.
type Ledger struct {
	client    typedcorev1.ConfigMapInterface
	name      string
	clk       clock.Clock
	retention time.Duration
	metrics   *Metrics

	mu      sync.Mutex
	keep    func() map[string]bool
	cm      *corev1.ConfigMap // last read or written
	since   time.Time
	settled map[string]map[string]int64 // sink -> id -> occurred (ms)
	gen     uint64                      // bumped by each Settle
	written uint64                      // gen of the last successful write
	flushed chan struct{}               // closed (and replaced) by each write
	kick    chan struct{}
	pruned  time.Time
}

// pruneEvery spaces the prunes: Keep walks every Node.
const pruneEvery = time.Minute

// Options configure Open.
type Options struct {
	// Name is the ConfigMap's; client is of its namespace.
	Name string
	// Retention: ids of notifications older than this are forgotten unless
	// Keep returns them. It must be at least the source's window.
	Retention time.Duration
	// Keep returns the ids that must stay whatever their age (those backed
	// by a mark still on a Node). May be nil.
	Keep func() map[string]bool
}

// Open reads the record, creating it (with since = now) on first start.
func Open(ctx context.Context, client typedcorev1.ConfigMapInterface, o Options, clk clock.Clock, m *Metrics) (*Ledger, error) {
	l := &Ledger{
		client: client, name: o.Name, clk: clk, retention: o.Retention, metrics: m, keep: o.Keep,
		settled: map[string]map[string]int64{}, flushed: make(chan struct{}), kick: make(chan struct{}, 1),
	}
	cm, err := client.Get(ctx, o.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: o.Name, Labels: map[string]string{"app.kubernetes.io/name": "termgate-notifier", "app.kubernetes.io/part-of": "termgate"}},
			Data:       map[string]string{KeySince: clk.Now().UTC().Format(time.RFC3339Nano)},
		}
		if cm, err = client.Create(ctx, cm, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
			cm, err = client.Get(ctx, o.Name, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read delivery record configmap %s: %w", o.Name, err)
	}
	since, settled, err := parse(cm)
	if err != nil {
		return nil, fmt.Errorf("delivery record configmap %s: %w (delete it to start afresh: what happened before is then not sent)", o.Name, err)
	}
	l.cm, l.since, l.settled = cm, since, settled
	return l, nil
}

func parse(cm *corev1.ConfigMap) (time.Time, map[string]map[string]int64, error) {
	since, err := time.Parse(time.RFC3339Nano, cm.Data[KeySince])
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("key %s: %w", KeySince, err)
	}
	settled := map[string]map[string]int64{}
	for k, v := range cm.Data {
		sink, ok := strings.CutPrefix(k, KeySinkPrefix)
		if !ok {
			continue
		}
		ids := map[string]int64{}
		if err := json.Unmarshal([]byte(v), &ids); err != nil {
			return time.Time{}, nil, fmt.Errorf("key %s: %w", k, err)
		}
		settled[sink] = ids
	}
	return since, settled, nil
}

// Since is when the notifier first ran.
func (l *Ledger) Since() time.Time { return l.since }

// Settled reports whether sink has settled id.
func (l *Ledger) Settled(sink, id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.settled[sink][id]
	return ok
}

// Settle records that sink settled id (occurred at occurred) and returns a
// function that waits until the record is written.
func (l *Ledger) Settle(sink, id string, occurred time.Time) (wait func(context.Context) error) {
	l.mu.Lock()
	if l.settled[sink] == nil {
		l.settled[sink] = map[string]int64{}
	}
	l.settled[sink][id] = occurred.UnixMilli()
	l.gen++
	gen := l.gen
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return func(ctx context.Context) error {
		for {
			l.mu.Lock()
			done, flushed := l.written >= gen, l.flushed
			l.mu.Unlock()
			if done {
				return nil
			}
			select {
			case <-flushed:
			case <-ctx.Done():
				return fmt.Errorf("record %s settled: %w", id, context.Cause(ctx))
			}
		}
	}
}

// Run writes the record whenever something was settled, one write for
// everything settled meanwhile, until ctx ends; then it makes one last
// attempt at what is still unwritten.
func (l *Ledger) Run(ctx context.Context) {
	logger := log.FromContext(ctx).WithValues("configmap", l.name)
	backoff := 200 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			if err := l.write(final); err != nil {
				logger.Error(err, "last write of the delivery record failed; what it held may be sent again")
			}
			cancel()
			return
		case <-l.kick:
		}
		if err := l.write(ctx); err != nil {
			if ctx.Err() != nil {
				continue
			}
			logger.Error(err, "write delivery record; will retry", "in", backoff)
			select {
			case l.kick <- struct{}{}:
			default:
			}
			select {
			case <-ctx.Done():
			case <-l.clk.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
	}
}

// write stores everything settled so far, merging with the stored record on
// a conflict.
func (l *Ledger) write(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		l.mu.Lock()
		if l.written == l.gen {
			l.mu.Unlock()
			return nil
		}
		gen := l.gen
		cm := l.render()
		l.mu.Unlock()
		got, err := l.client.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "termgate-notifier"})
		switch {
		case err == nil:
			l.metrics.writes.WithLabelValues("ok").Inc()
			l.mu.Lock()
			l.cm, l.written = got, max(l.written, gen)
			close(l.flushed)
			l.flushed = make(chan struct{})
			l.mu.Unlock()
			return nil
		case apierrors.IsConflict(err) && attempt < 5:
			l.metrics.writes.WithLabelValues("conflict").Inc()
			if err := l.merge(ctx); err != nil {
				return err
			}
		default:
			l.metrics.writes.WithLabelValues("error").Inc()
			return fmt.Errorf("update configmap %s: %w", l.name, err)
		}
	}
}

// merge reads the stored record and adds what it holds to this one.
func (l *Ledger) merge(ctx context.Context) error {
	cm, err := l.client.Get(ctx, l.name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read configmap %s: %w", l.name, err)
	}
	since, settled, err := parse(cm)
	if err != nil {
		return fmt.Errorf("configmap %s changed under the notifier: %w", l.name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cm = cm
	if since.Before(l.since) {
		l.since = since
	}
	for sink, ids := range settled {
		if l.settled[sink] == nil {
			l.settled[sink] = map[string]int64{}
		}
		for id, at := range ids {
			if _, ok := l.settled[sink][id]; !ok {
				l.settled[sink][id] = at
			}
		}
	}
	return nil
}

// render returns the ConfigMap to write, pruned. Called with mu held.
func (l *Ledger) render() *corev1.ConfigMap {
	l.prune()
	cm := l.cm.DeepCopy()
	data := map[string]string{KeySince: l.since.UTC().Format(time.RFC3339Nano)}
	for sink, ids := range l.settled {
		b, _ := json.Marshal(ids) // map of strings to ints: cannot fail
		data[KeySinkPrefix+sink] = string(b)
	}
	cm.Data = data
	return cm
}

// prune forgets ids past retention that keep does not hold, then the oldest
// ids while the record is too large. Called with mu held.
func (l *Ledger) prune() {
	now := l.clk.Now()
	if now.Sub(l.pruned) < pruneEvery {
		return
	}
	l.pruned = now
	var live map[string]bool
	if l.keep != nil {
		live = l.keep()
	}
	cutoff := now.Add(-l.retention).UnixMilli()
	size := 0
	type aged struct {
		sink, id string
		at       int64
	}
	var all []aged
	for sink, ids := range l.settled {
		for id, at := range ids {
			if at < cutoff && !live[id] {
				delete(ids, id)
				continue
			}
			size += len(id) + 20
			all = append(all, aged{sink, id, at})
		}
	}
	if size <= maxDataBytes {
		return
	}
	slices.SortFunc(all, func(a, b aged) int { return cmp.Compare(a.at, b.at) })
	for _, a := range all {
		if size <= maxDataBytes {
			break
		}
		delete(l.settled[a.sink], a.id)
		size -= len(a.id) + 20
		l.metrics.evicted.Inc()
	}
}

// Metrics count the record's writes.
type Metrics struct {
	writes  *prometheus.CounterVec
	evicted prometheus.Counter
}

// NewMetrics registers the ledger's metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "record_writes_total",
			Help: "Writes of the delivery record ConfigMap, by result (ok, conflict, error).",
		}, []string{"result"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "notifier", Name: "record_evicted_total",
			Help: "Settled ids forgotten early because the delivery record reached its size limit; they may be sent again after a restart.",
		}),
	}
	for _, c := range []prometheus.Collector{m.writes, m.evicted} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register notifier record metrics: %w", err)
		}
	}
	return m, nil
}
