package nodecache

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/nodemark"
)

// NodeGetter reads one node's metadata from the API server. A read without
// a resourceVersion is served from etcd by quorum, so it sees every mark
// stored before it began.
type NodeGetter interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions, subresources ...string) (*metav1.PartialObjectMetadata, error)
}

// Confirmation results, the values of the metric's result label.
const (
	ConfirmAgreed = "agreed"      // the API server said what the cache said
	ConfirmCaught = "caught-mark" // the node was terminating; the cache had not seen it yet
	ConfirmGone   = "node-gone"   // the node no longer exists
	ConfirmFailed = "failed"      // the read failed or timed out; the cache's answer stands
)

// Confirmer answers from the cache, except for nodes whose mark may land at
// any moment: those re-read the node from the API server when the cache
// says they are not terminating. A Spot VM is marked within milliseconds of
// its 30 s notice, but an informer on a busy webhook delivers the mark
// later: in `make bench-storm` it let through binds onto nodes already
// marked, and the re-read catches 6 to 30 such binds a storm. One read per
// node per burst of binds onto it (concurrent reads are shared, see
// Rereader) is the price of never letting them through. Dry-run requests
// never re-read (WithoutReread).
type Confirmer struct {
	cache   Lookup
	reads   *Rereader
	atRisk  []labels.Selector
	metrics *ConfirmMetrics
}

var _ Lookup = (*Confirmer)(nil)

// NewConfirmer wraps cache. Nodes matching any of atRisk, and nodes in the
// advance state (whose maintenance window can open at any moment), are
// re-read through reads. The cache must keep the labels the selectors read
// (see SelectorLabelKeys). A nil reads turns the re-reads off; metrics may
// be nil.
func NewConfirmer(cache Lookup, reads *Rereader, atRisk []labels.Selector, metrics *ConfirmMetrics) *Confirmer {
	return &Confirmer{cache: cache, reads: reads, atRisk: atRisk, metrics: metrics}
}

// Lookup implements Lookup.
func (c *Confirmer) Lookup(ctx context.Context, name string) (Node, bool) {
	n, known := c.cache.Lookup(ctx, name)
	if !known || n.Terminating() || c.reads == nil || !c.needsConfirming(n) || !RereadAllowed(ctx) {
		return n, known
	}
	start := time.Now()
	fresh, err := c.reads.Read(ctx, name)
	result := ConfirmAgreed
	switch {
	case apierrors.IsNotFound(err):
		// The bind fails on its own; the cache will drop the node soon.
		result = ConfirmGone
	case err != nil:
		result = ConfirmFailed
		n.Unconfirmed = true
		// Counted in the metric; at -v=1 each one is logged too, since in an
		// outage there can be one per bind.
		log.FromContext(ctx).V(1).Info("Node re-read failed; answering from the cache", "node", name, "error", err.Error())
	default:
		// The node as stored now, mark or no mark (a malformed mark still
		// carries its state, as in the cache).
		n.Mark, _, _ = nodemark.Read(fresh.Annotations)
		if n.Terminating() {
			result = ConfirmCaught
		}
	}
	c.metrics.observe(result, time.Since(start))
	return n, true
}

// Marks tells whether a node is terminating for the agent confinement:
// from the cache when it says so, else from a fresh read, because an
// agent's first evictions follow its mark within milliseconds and the
// cache can be a second behind in a storm.
type Marks struct {
	cache Lookup
	reads *Rereader
	// seen is told of every mark found, so what follows a mark (the
	// confinement's list of the node's pods) starts at once, even before
	// the cache's change callback.
	seen func(node string)
}

// NewMarks answers from cache, re-reading through reads what the cache
// does not hold as terminating; seen, if not nil, is called for each node
// found terminating.
func NewMarks(cache Lookup, reads *Rereader, seen func(node string)) *Marks {
	return &Marks{cache: cache, reads: reads, seen: seen}
}

// Terminating reports whether node name is marked terminating now. An
// error means the answer is unknown. seen is told of the mark whether the
// cache or a fresh read found it: the informer updates its store before it
// runs its handlers, so the cache can hold a mark whose change callback
// (the confinement's list of the node's pods) has not run yet.
func (m *Marks) Terminating(ctx context.Context, name string) (bool, error) {
	if n, known := m.cache.Lookup(ctx, name); known && n.Terminating() {
		if m.seen != nil {
			m.seen(name)
		}
		return true, nil
	}
	fresh, err := m.reads.Read(ctx, name)
	if err != nil {
		return false, err
	}
	mark, _, _ := nodemark.Read(fresh.Annotations)
	if mark.Terminating() && m.seen != nil {
		m.seen(name)
	}
	return mark.Terminating(), nil
}

func (c *Confirmer) needsConfirming(n Node) bool {
	if n.Mark.State == nodemark.StateAdvance {
		return true
	}
	set := labels.Set(n.Labels)
	for _, s := range c.atRisk {
		if s.Matches(set) {
			return true
		}
	}
	return false
}

// ParseSelectors reads label selectors separated by ';' (a selector itself
// uses commas). Empty input gives none.
func ParseSelectors(s string) ([]labels.Selector, error) {
	var out []labels.Selector
	for _, part := range strings.Split(s, ";") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		sel, err := labels.Parse(part)
		if err != nil {
			return nil, fmt.Errorf("label selector %q: %w", part, err)
		}
		if sel.Empty() {
			return nil, fmt.Errorf("label selector %q matches every node", part)
		}
		out = append(out, sel)
	}
	return out, nil
}

// SelectorLabelKeys lists the label keys the selectors read, which the
// cache must keep.
func SelectorLabelKeys(sels []labels.Selector) []string {
	var keys []string
	seen := map[string]bool{}
	for _, s := range sels {
		reqs, _ := s.Requirements()
		for _, r := range reqs {
			if !seen[r.Key()] {
				seen[r.Key()] = true
				keys = append(keys, r.Key())
			}
		}
	}
	return keys
}

// DefaultAtRisk is the default selector list: GKE's labels for Spot and
// preemptible VMs, which get 30 s of notice.
const DefaultAtRisk = "cloud.google.com/gke-spot=true;cloud.google.com/gke-preemptible=true"

// ConfirmMetrics count the fresh reads and how long they took.
type ConfirmMetrics struct {
	results  *prometheus.CounterVec
	duration prometheus.Histogram
}

// NewConfirmMetrics creates and registers the metrics on reg.
func NewConfirmMetrics(reg prometheus.Registerer) (*ConfirmMetrics, error) {
	m := &ConfirmMetrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "node_confirmations_total",
			Help: "Fresh reads of nodes a mark may reach at any moment, by result: " +
				"agreed (the cache was right), caught-mark (the node was terminating and the cache had not seen it), " +
				"node-gone, failed (the cache's answer was used).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "termgate", Subsystem: "webhook", Name: "node_confirmation_duration_seconds",
			Help: "Time of one fresh node read.",
			// 250us .. ~4s.
			Buckets: prometheus.ExponentialBuckets(250e-6, 2, 15),
		}),
	}
	for _, r := range []string{ConfirmAgreed, ConfirmCaught, ConfirmGone, ConfirmFailed} {
		m.results.WithLabelValues(r) // every result shows from the start, at 0
	}
	for _, col := range []prometheus.Collector{m.results, m.duration} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register node confirmation metrics: %w", err)
		}
	}
	return m, nil
}

func (m *ConfirmMetrics) observe(result string, d time.Duration) {
	if m == nil {
		return
	}
	m.results.WithLabelValues(result).Inc()
	m.duration.Observe(d.Seconds())
}
