package watch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"cloud.google.com/go/compute/metadata"
	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/retry"
)

// Config tunes the watcher.
type Config struct {
	// PollTimeout is sent as timeout_sec: the server answers a hanging GET
	// after this long even without a change, which proves the watch is alive.
	PollTimeout time.Duration
	// BackoffBase and BackoffCap bound the retry delay after errors.
	BackoffBase, BackoffCap time.Duration
	// Transport carries the requests to the metadata server; nil is a
	// clone of http.DefaultTransport. Agents run in one process each get
	// their own, to their own server.
	Transport http.RoundTripper
}

// DefaultConfig returns the defaults behind the agent's flags.
func DefaultConfig() Config {
	return Config{PollTimeout: 60 * time.Second, BackoffBase: 100 * time.Millisecond, BackoffCap: 5 * time.Second}
}

// Watcher follows every Key and sends each parsed change on a channel.
type Watcher struct {
	client  *metadata.Client
	clock   clock.Clock
	cfg     Config
	metrics *Metrics

	mu       sync.Mutex
	contact  map[Key]time.Time // last answer from the server, per key
	received map[Key]bool      // a first value was parsed
}

// New builds a watcher on the real metadata client. The client honours
// GCE_METADATA_HOST, which is how tests point it at a fake server.
func New(clk clock.Clock, cfg Config, m *Metrics) *Watcher {
	rt := cfg.Transport
	if rt == nil {
		rt = http.DefaultTransport.(*http.Transport).Clone()
	}
	hc := &http.Client{
		Transport: m.instrument(rt),
		// A hanging GET answers within PollTimeout; past that plus a margin
		// the connection is broken, not slow.
		Timeout: cfg.PollTimeout + 10*time.Second,
	}
	return &Watcher{
		client:   metadata.NewWithOptions(&metadata.Options{Client: hc}),
		clock:    clk,
		cfg:      cfg,
		metrics:  m,
		contact:  map[Key]time.Time{},
		received: map[Key]bool{},
	}
}

// Run follows every key until ctx ends, sending observations on out. Values
// it cannot parse are logged, counted and sent as KindUnknown.
func (w *Watcher) Run(ctx context.Context, out chan<- Observation) {
	var wg sync.WaitGroup
	for _, k := range Keys {
		wg.Go(func() { w.follow(ctx, k, out) })
	}
	wg.Wait()
}

// follow keeps one subscription to key alive. The client's Subscribe does
// the first GET and then loops on wait_for_change with last_etag, so no
// change between two requests is missed; when it fails we back off with
// jitter and subscribe again, which re-reads the current value. Each key has
// its own goroutine: a key that fails or serves garbage never delays another.
func (w *Watcher) follow(ctx context.Context, key Key, out chan<- Observation) {
	log := logr.FromContextOrDiscard(ctx).WithValues("key", key)
	suffix := string(key) + "?timeout_sec=" + strconv.Itoa(int(w.cfg.PollTimeout/time.Second))
	f := &follower{w: w, key: key, out: out, log: log}
	failures := 0
	for ctx.Err() == nil {
		err := w.client.SubscribeWithContext(ctx, suffix, func(ctx context.Context, v string, ok bool) error {
			failures = 0
			w.touch(key)
			if !ok {
				v = "" // deleted: for upcoming-maintenance, nothing scheduled
			}
			f.receive(ctx, v)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		if nde := (metadata.NotDefinedError("")); errors.As(err, &nde) {
			// 404 on the first GET: the key is not served (upcoming
			// maintenance on machine families without it). Treat as empty.
			w.touch(key)
			f.receive(ctx, "")
		} else {
			w.metrics.watchErrors.WithLabelValues(string(key)).Inc()
			log.Info("metadata watch failed; retrying", "error", fmt.Sprint(err), "failures", failures+1)
		}
		failures++
		if !retry.Sleep(ctx, w.clock, retry.Delay(w.cfg.BackoffBase, w.cfg.BackoffCap, failures-1)) {
			return
		}
	}
}

// follower is the state of one key's watch: the last value sent.
type follower struct {
	w        *Watcher
	key      Key
	out      chan<- Observation
	log      logr.Logger
	last     string
	haveLast bool
}

// receive parses a value and sends it unless it repeats the last one (a
// hanging GET that timed out). A value that cannot be acted on is sent as
// KindUnknown, which changes nothing but is reported.
func (f *follower) receive(ctx context.Context, v string) {
	if f.haveLast && v == f.last {
		return
	}
	obs, err := Lenient(f.key, v)
	if err != nil || obs.Unreadable != "" {
		f.w.metrics.invalidValues.WithLabelValues(string(f.key)).Inc()
	}
	switch {
	case err != nil:
		// Reported (the agent raises one event for it), never acted on.
		f.log.Error(err, "ignoring metadata value; the key keeps its last known value")
		obs = Observation{Key: f.key, Kind: KindUnknown, Raw: v, Unreadable: err.Error()}
	case obs.Unreadable != "":
		f.log.Info("WARNING: unreadable upcoming-maintenance value counts as no window", "reason", obs.Unreadable)
		fallthrough
	default:
		obs.First = !f.haveLast
		f.last, f.haveLast = v, true
		f.w.markReceived(f.key)
	}
	obs.At = f.w.clock.Now()
	select {
	case f.out <- obs:
	case <-ctx.Done():
	}
}

func (w *Watcher) touch(key Key) {
	w.mu.Lock()
	w.contact[key] = w.clock.Now()
	w.mu.Unlock()
}

func (w *Watcher) markReceived(key Key) {
	w.mu.Lock()
	w.received[key] = true
	w.mu.Unlock()
}

// Unread lists the keys whose first value has not been read yet.
func (w *Watcher) Unread() []Key {
	w.mu.Lock()
	defer w.mu.Unlock()
	var unread []Key
	for _, k := range Keys {
		if !w.received[k] {
			unread = append(unread, k)
		}
	}
	return unread
}

// Alive returns an error unless every key heard from the metadata server
// within PollTimeout plus a margin: hanging GETs end at least that often.
func (w *Watcher) Alive() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	limit := w.cfg.PollTimeout + 30*time.Second
	for _, k := range Keys {
		seen, ok := w.contact[k]
		if !ok {
			return fmt.Errorf("no answer yet for %s", k)
		}
		if age := w.clock.Since(seen); age > limit {
			return fmt.Errorf("no answer for %s in %s", k, age.Round(time.Second))
		}
	}
	return nil
}
