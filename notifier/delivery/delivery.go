// Package delivery sends one sink's notifications: a bounded queue (the
// oldest dropped first when it is full, and counted), one request at a time
// in order, each with its own timeout, retried with exponential backoff and
// jitter (or as the receiver's Retry-After says) until it is accepted or
// refused for good, and settled in the delivery record before the next one
// goes, so that after a crash only the one in flight may be sent again.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/notifier/notification"
)

// Config is one sink's delivery settings.
type Config struct {
	// QueueSize bounds the notifications waiting for the sink; when it is
	// full the oldest is dropped.
	QueueSize int
	// Timeout bounds each request.
	Timeout time.Duration
	// BackoffBase is the first retry delay; each retry doubles it up to
	// BackoffMax, and jitter spreads it over its upper half.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// RetryAfterMax caps a receiver's Retry-After.
	RetryAfterMax time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{QueueSize: 1000, Timeout: 10 * time.Second, BackoffBase: time.Second, BackoffMax: 30 * time.Second, RetryAfterMax: 5 * time.Minute}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if c.QueueSize < 1 || c.QueueSize > 100000 {
		errs = append(errs, fmt.Errorf("queueSize %d: want 1 to 100000", c.QueueSize))
	}
	if c.Timeout <= 0 || c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase || c.RetryAfterMax <= 0 {
		errs = append(errs, errors.New("timeout, backoffBase and retryAfterMax must be positive, and backoffMax at least backoffBase"))
	}
	return errors.Join(errs...)
}

// Sender is a sink as delivery sees it.
type Sender interface {
	Name() string
	// Request builds the request that delivers n; an error means n can
	// never be sent (a template that fails on it).
	Request(ctx context.Context, n notification.Notification) (*http.Request, error)
}

// Record is where settled notifications are remembered (package ledger).
type Record interface {
	Settled(sink, id string) bool
	Settle(sink, id string, occurred time.Time) (wait func(context.Context) error)
}

// Results of an attempt, the result label of termgate_notifier_sent_total.
const (
	ResultDelivered = "delivered" // 2xx
	ResultRetried   = "retried"   // 408, 429, 5xx, network error or timeout: sent again
	ResultRejected  = "rejected"  // any other answer: not sent again
	ResultDropped   = "dropped"   // pushed out of a full queue before it was delivered
	ResultUnsent    = "unsent"    // could not be rendered: not sent
)

// item is a queued notification.
type item struct {
	n notification.Notification
	// dropped is closed when a full queue pushes the item out.
	dropped chan struct{}
}

// Deliverer delivers one sink's notifications.
type Deliverer struct {
	sink    Sender
	cfg     Config
	client  *http.Client
	record  Record
	clk     clock.WithTicker
	metrics *Metrics
	// settleWait bounds the wait for the record after each delivery; past
	// it delivery goes on (the record catches up; a crash meanwhile may
	// send those again).
	settleWait time.Duration

	mu     sync.Mutex
	logger logr.Logger
	queue  []*item
	queued map[string]bool
	ready  chan struct{}
}

// New returns a deliverer for sink. client must not follow redirects (see
// NewHTTPClient); the timeout is applied per request.
func New(sink Sender, cfg Config, client *http.Client, record Record, clk clock.WithTicker, m *Metrics) *Deliverer {
	m.depth.WithLabelValues(sink.Name()).Set(0)
	return &Deliverer{
		sink: sink, cfg: cfg, client: client, record: record, clk: clk, metrics: m, settleWait: 5 * time.Second,
		queued: map[string]bool{}, ready: make(chan struct{}, 1), logger: log.Log.WithValues("sink", sink.Name()),
	}
}

// NewHTTPClient returns the client deliveries use: the default transport
// (proxy settings from the environment, TLS verification on), and no
// redirects, since following one would hand the sink's headers to wherever
// it points.
func NewHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 4
	return &http.Client{
		Transport:     t,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Offer queues n unless the sink has settled it or holds it already. When
// the queue is full the oldest notification is dropped, counted and
// settled: it is not sent, now or after a restart. Offer never blocks.
func (d *Deliverer) Offer(n notification.Notification) {
	name := d.sink.Name()
	if d.record.Settled(name, n.ID) {
		return
	}
	d.mu.Lock()
	if d.queued[n.ID] {
		d.mu.Unlock()
		return
	}
	var dropped *item
	if len(d.queue) >= d.cfg.QueueSize {
		dropped, d.queue = d.queue[0], d.queue[1:]
		delete(d.queued, dropped.n.ID)
		close(dropped.dropped)
	}
	d.insert(&item{n: n, dropped: make(chan struct{})})
	d.queued[n.ID] = true
	d.metrics.depth.WithLabelValues(name).Set(float64(len(d.queue)))
	logger := d.logger
	d.mu.Unlock()
	if dropped != nil {
		d.metrics.sent.WithLabelValues(name, ResultDropped).Inc()
		d.record.Settle(name, dropped.n.ID, dropped.n.OccurredAt)
		logger.Info("notification queue full: dropped the oldest", "id", dropped.n.ID, "kind", dropped.n.Kind, "node", dropped.n.Node.Name)
	}
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

// insert queues it in order of occurrence: the source emits each node's
// notifications in order, but across nodes in the order it saw them (two
// agents' writes race), and a term's first pass walks the nodes in no
// order. A receiver that was down must still get the backlog as it
// happened. A node's own notifications keep the order they were offered
// in. Called with mu held.
func (d *Deliverer) insert(it *item) {
	i := len(d.queue)
	for i > 0 {
		prev := d.queue[i-1].n
		if prev.Node.Name == it.n.Node.Name || !prev.OccurredAt.After(it.n.OccurredAt) {
			break
		}
		i--
	}
	d.queue = slices.Insert(d.queue, i, it)
}

// Depth is how many notifications wait, the one in flight included.
func (d *Deliverer) Depth() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue)
}

// Run delivers until ctx ends (leadership lost: stop at once) or stopping
// closes (shutdown: finish the attempt in flight, then stop).
func (d *Deliverer) Run(ctx context.Context, stopping <-chan struct{}) {
	logger := log.FromContext(ctx).WithValues("sink", d.sink.Name())
	ctx = log.IntoContext(ctx, logger)
	d.mu.Lock()
	d.logger = logger
	d.mu.Unlock()
	for {
		it := d.head()
		if it == nil {
			select {
			case <-ctx.Done():
				return
			case <-stopping:
				return
			case <-d.ready:
				continue
			}
		}
		settled, more := d.deliver(ctx, stopping, it)
		if !more {
			return
		}
		if settled {
			d.pop(it)
		}
	}
}

func (d *Deliverer) head() *item {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.queue) == 0 {
		return nil
	}
	return d.queue[0]
}

// pop removes it wherever it is now (an earlier notification may have been
// queued before it while it was in flight), if a full queue did not drop it.
func (d *Deliverer) pop(it *item) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if i := slices.Index(d.queue, it); i >= 0 {
		d.queue = slices.Delete(d.queue, i, i+1)
		delete(d.queued, it.n.ID)
	}
	d.metrics.depth.WithLabelValues(d.sink.Name()).Set(float64(len(d.queue)))
}

// deliver sends it until it is settled or dropped (settled), or until an
// earlier notification is queued before it between two attempts (not
// settled: that one goes first); more false means stop.
func (d *Deliverer) deliver(ctx context.Context, stopping <-chan struct{}, it *item) (settled, more bool) {
	logger := log.FromContext(ctx).WithValues("id", it.n.ID, "kind", it.n.Kind, "node", it.n.Node.Name)
	name := d.sink.Name()
	for attempt := 0; ; attempt++ {
		select {
		case <-it.dropped:
			return true, true
		case <-stopping:
			return false, false
		default:
		}
		out := d.attempt(ctx, it.n)
		if ctx.Err() != nil {
			return false, false
		}
		d.metrics.sent.WithLabelValues(name, out.result).Inc()
		switch out.result {
		case ResultDelivered:
			latency := d.clk.Since(it.n.OccurredAt)
			d.metrics.latency.WithLabelValues(name).Observe(latency.Seconds())
			logger.Info("notification delivered", "status", out.status, "attempts", attempt+1, "sinceOccurred", latency)
			d.settle(ctx, it.n)
			return true, true
		case ResultRejected, ResultUnsent:
			logger.Error(out.err, "notification refused; not sending it again", "status", out.status, "attempts", attempt+1)
			d.settle(ctx, it.n)
			return true, true
		}
		wait := d.retryDelay(attempt, out.retryAfter)
		logger.Info("notification not delivered; will retry", "status", out.status, "error", errString(out.err), "attempt", attempt+1, "in", wait)
		select {
		case <-ctx.Done():
			return false, false
		case <-stopping:
			return false, false
		case <-it.dropped:
			return true, true
		case <-d.clk.After(wait):
		}
		if d.head() != it {
			return false, true
		}
	}
}

// settle records n and waits (a bounded time) for the record to be written.
func (d *Deliverer) settle(ctx context.Context, n notification.Notification) {
	wait := d.record.Settle(d.sink.Name(), n.ID, n.OccurredAt)
	wctx, cancel := context.WithTimeout(ctx, d.settleWait)
	defer cancel()
	if err := wait(wctx); err != nil && ctx.Err() == nil {
		log.FromContext(ctx).Info("delivery record not written yet; going on", "error", err.Error())
	}
}

// outcome is one attempt's result.
type outcome struct {
	result     string
	status     int
	retryAfter time.Duration
	err        error
}

// attempt sends n once.
func (d *Deliverer) attempt(ctx context.Context, n notification.Notification) outcome {
	actx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := d.sink.Request(actx, n)
	if err != nil {
		return outcome{result: ResultUnsent, err: err}
	}
	began := d.clk.Now()
	resp, err := d.client.Do(req)
	d.metrics.requestDuration.WithLabelValues(d.sink.Name()).Observe(d.clk.Since(began).Seconds())
	if err != nil {
		return outcome{result: ResultRetried, err: redact(err)}
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // reuse the connection
	out := outcome{status: resp.StatusCode}
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		out.result = ResultDelivered
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		out.result = ResultRetried
		out.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), d.clk.Now())
		out.err = fmt.Errorf("answered %d", c)
	default:
		out.result = ResultRejected
		out.err = fmt.Errorf("answered %d: %q", c, snippet)
		if c >= 300 && c < 400 {
			out.err = fmt.Errorf("answered %d (a redirect, not followed: it would carry the sink's headers elsewhere)", c)
		}
	}
	return out
}

// retryDelay is the wait before retry attempt+1: the receiver's Retry-After
// when it gave one (capped), else exponential backoff with jitter over the
// upper half, so retries never come faster than half the backoff.
func (d *Deliverer) retryDelay(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, d.cfg.RetryAfterMax)
	}
	backoff := d.cfg.BackoffMax
	if attempt < 30 {
		backoff = min(d.cfg.BackoffBase<<attempt, d.cfg.BackoffMax)
	}
	half := backoff / 2
	return half + rand.N(half+1)
}

// parseRetryAfter reads Retry-After: seconds, or an HTTP date. Zero when
// absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(max(s, 0)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// redact drops the URL from a client error: the URL is a secret (Slack's
// carries its token).
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Errorf("%s: timed out: %w", ue.Op, ue.Err)
		}
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
