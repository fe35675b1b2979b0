package delivery

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/notifier/notification"
)

// testSink posts the id to url.
type testSink struct{ url string }

func (s testSink) Name() string { return "test" }

func (s testSink) Request(ctx context.Context, n notification.Notification) (*http.Request, error) {
	if n.Kind == "unrenderable" {
		return nil, fmt.Errorf("render: no")
	}
	return http.NewRequestWithContext(ctx, http.MethodPost, s.url, strings.NewReader(n.ID))
}

// memRecord is an in-memory Record.
type memRecord struct {
	mu      sync.Mutex
	settled map[string]bool
}

func (r *memRecord) Settled(_, id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.settled[id]
}

func (r *memRecord) Settle(_, id string, _ time.Time) func(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.settled[id] = true
	return func(context.Context) error { return nil }
}

// receiver answers with what answer returns for each request's id and
// records every request.
type receiver struct {
	mu     sync.Mutex
	got    []string
	answer func(r *http.Request, id string, attempt int) (int, http.Header)
	seen   map[string]int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	id := string(b)
	r.mu.Lock()
	r.seen[id]++
	attempt := r.seen[id]
	r.got = append(r.got, id)
	r.mu.Unlock()
	code, h := r.answer(req, id, attempt)
	for k, v := range h {
		w.Header()[k] = v
	}
	w.WriteHeader(code)
}

func (r *receiver) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

type fixture struct {
	d      *Deliverer
	rec    *receiver
	record *memRecord
	reg    *prometheus.Registry
	logs   *syncBuffer
	srv    *httptest.Server
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// syncBuffer collects log lines from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// start runs a deliverer against a test receiver; the sink's URL path holds
// a secret, like Slack's.
func start(t *testing.T, cfg Config, answer func(r *http.Request, id string, attempt int) (int, http.Header)) *fixture {
	t.Helper()
	rec := &receiver{answer: answer, seen: map[string]int{}}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{rec: rec, record: &memRecord{settled: map[string]bool{}}, reg: reg, logs: &syncBuffer{}, srv: srv, done: make(chan struct{})}
	logger := funcr.New(func(prefix, args string) {
		f.logs.mu.Lock()
		defer f.logs.mu.Unlock()
		fmt.Fprintln(&f.logs.b, prefix, args)
	}, funcr.Options{})
	f.d = New(testSink{url: srv.URL + "/hooks/s3cr3t-token"}, cfg, NewHTTPClient(), f.record, clock.RealClock{}, m)
	f.ctx, f.cancel = context.WithCancel(log.IntoContext(context.Background(), logger))
	go func() {
		defer close(f.done)
		f.d.Run(f.ctx, nil)
	}()
	t.Cleanup(func() { f.cancel(); <-f.done })
	return f
}

func note(id string) notification.Notification {
	return notification.Notification{ID: id, Kind: notification.KindMarked, OccurredAt: time.Now()}
}

// waitFor polls cond until it holds or budget passes.
func waitFor(t *testing.T, budget time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(budget)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, budget)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) sent(result string) float64 {
	var m dto.Metric
	_ = f.d.metrics.sent.WithLabelValues("test", result).Write(&m)
	return m.GetCounter().GetValue()
}

// fast is a config whose retries take milliseconds.
func fast() Config {
	c := DefaultConfig()
	c.BackoffBase, c.BackoffMax, c.Timeout = 2*time.Millisecond, 20*time.Millisecond, 2*time.Second
	return c
}

// budget is how long n deliveries with up to retries retries each may take
// under cfg: every attempt may run to its timeout and wait the longest
// backoff.
func budget(cfg Config, n, retries int) time.Duration {
	return time.Duration(n*(retries+1)) * (cfg.Timeout + cfg.BackoffMax)
}

func TestDeliversInOrderAndSettlesEach(t *testing.T) {
	cfg := fast()
	f := start(t, cfg, func(*http.Request, string, int) (int, http.Header) { return http.StatusAccepted, nil })
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("id-%d", i)
		want = append(want, id)
		f.d.Offer(note(id))
	}
	f.d.Offer(note("id-2")) // queued already: not again
	waitFor(t, budget(cfg, 5, 0), "five deliveries", func() bool { return f.sent(ResultDelivered) == 5 })
	if got := f.rec.requests(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("received %v, want %v", got, want)
	}
	for _, id := range want {
		if !f.record.Settled("test", id) {
			t.Errorf("%s delivered but not settled", id)
		}
	}
	f.d.Offer(note("id-0")) // settled: not again
	f.d.Offer(note("id-5"))
	waitFor(t, budget(cfg, 1, 0), "the sixth delivery", func() bool { return f.sent(ResultDelivered) == 6 })
	if got := f.rec.requests(); len(got) != 6 || got[5] != "id-5" {
		t.Errorf("received %v after offering a settled id and a new one", got)
	}
}

func TestRetriesWhatMayPassLaterAndNotWhatCannot(t *testing.T) {
	for _, c := range []struct {
		status int
		retry  bool
	}{
		{http.StatusServiceUnavailable, true}, {http.StatusInternalServerError, true}, {http.StatusBadGateway, true},
		{http.StatusRequestTimeout, true}, {http.StatusTooManyRequests, true},
		{http.StatusBadRequest, false}, {http.StatusUnauthorized, false}, {http.StatusForbidden, false},
		{http.StatusNotFound, false}, {http.StatusGone, false}, {http.StatusUnprocessableEntity, false},
		{http.StatusFound, false}, {http.StatusPermanentRedirect, false},
	} {
		t.Run(fmt.Sprint(c.status), func(t *testing.T) {
			cfg := fast()
			f := start(t, cfg, func(_ *http.Request, id string, attempt int) (int, http.Header) {
				if id == "first" && attempt < 3 {
					return c.status, http.Header{"Location": {"http://elsewhere.example/"}}
				}
				return http.StatusOK, nil
			})
			f.d.Offer(note("first"))
			f.d.Offer(note("second"))
			waitFor(t, budget(cfg, 2, 2), "the second notification", func() bool { return f.record.Settled("test", "second") })
			got := f.rec.requests()
			if c.retry {
				if fmt.Sprint(got) != "[first first first second]" || f.sent(ResultRetried) != 2 || f.sent(ResultDelivered) != 2 {
					t.Errorf("%d: requests %v, retried %v: want two retries, then delivered, then the next", c.status, got, f.sent(ResultRetried))
				}
			} else if fmt.Sprint(got) != "[first second]" || f.sent(ResultRejected) != 1 || !f.record.Settled("test", "first") {
				t.Errorf("%d: requests %v, rejected %v: want one attempt, settled, then the next", c.status, got, f.sent(ResultRejected))
			}
		})
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	cfg := fast()
	// The backoff would retry within 20ms; the receiver asks for 1s.
	var mu sync.Mutex
	var at []time.Time
	f := start(t, cfg, func(_ *http.Request, _ string, attempt int) (int, http.Header) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		if attempt == 1 {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}
		}
		return http.StatusOK, nil
	})
	f.d.Offer(note("a"))
	waitFor(t, budget(cfg, 1, 1)+time.Second, "the retry", func() bool { return f.sent(ResultDelivered) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if gap := at[1].Sub(at[0]); gap < time.Second {
		t.Errorf("retried after %s, before the receiver's Retry-After of 1s", gap)
	}
}

func TestARequestThatHangsTimesOutAndIsRetried(t *testing.T) {
	cfg := fast()
	cfg.Timeout = 500 * time.Millisecond
	f := start(t, cfg, func(r *http.Request, _ string, attempt int) (int, http.Header) {
		if attempt == 1 {
			<-r.Context().Done() // hangs until the client gives up
		}
		return http.StatusOK, nil
	})
	f.d.Offer(note("a"))
	waitFor(t, budget(cfg, 1, 1), "the retry after the timeout", func() bool { return f.sent(ResultDelivered) == 1 })
	if f.sent(ResultRetried) != 1 {
		t.Errorf("retried %v times, want once", f.sent(ResultRetried))
	}
	if !strings.Contains(f.logs.String(), "timed out") {
		t.Errorf("the log does not say the request timed out:\n%s", f.logs)
	}
}

func TestAFullQueueDropsTheOldestFirst(t *testing.T) {
	cfg := fast()
	cfg.QueueSize = 3
	release := make(chan struct{})
	f := start(t, cfg, func(_ *http.Request, id string, _ int) (int, http.Header) {
		if id == "a" {
			<-release
		}
		return http.StatusOK, nil
	})
	f.d.Offer(note("a"))
	waitFor(t, budget(cfg, 1, 0), "a in flight", func() bool { return len(f.rec.requests()) == 1 })
	for _, id := range []string{"b", "c", "d", "e"} {
		f.d.Offer(note(id))
	}
	// [a b c] + d drops a, + e drops b.
	if got := f.d.Depth(); got != 3 {
		t.Errorf("depth %d, want the queue size 3", got)
	}
	if f.sent(ResultDropped) != 2 || !f.record.Settled("test", "b") {
		t.Errorf("dropped %v, b settled %v: want a and b dropped, and settled so a restart does not send them", f.sent(ResultDropped), f.record.Settled("test", "b"))
	}
	close(release)
	waitFor(t, budget(cfg, 4, 0), "the rest", func() bool { return f.record.Settled("test", "e") })
	if got := f.rec.requests(); fmt.Sprint(got) != "[a c d e]" {
		t.Errorf("received %v, want a (in flight when dropped), then c d e", got)
	}
}

func TestTheSinksURLNeverReachesTheLog(t *testing.T) {
	cfg := fast()
	f := start(t, cfg, func(_ *http.Request, id string, attempt int) (int, http.Header) {
		if attempt == 1 {
			return http.StatusServiceUnavailable, nil
		}
		return http.StatusNotFound, nil
	})
	f.d.Offer(note("a"))
	waitFor(t, budget(cfg, 1, 1), "the refusal", func() bool { return f.sent(ResultRejected) == 1 })
	f.srv.Close() // now a network error
	f.d.Offer(note("b"))
	waitFor(t, budget(cfg, 1, 1), "a network error", func() bool { return f.sent(ResultRetried) >= 2 })
	logs := f.logs.String()
	// A closed server shows as EOF on a kept-alive connection, or a refused
	// connection on a new one: either way "Post: ", without the URL.
	if !strings.Contains(logs, "answered 503") || !strings.Contains(logs, "answered 404") || !strings.Contains(logs, `"error"="Post: `) {
		t.Errorf("the log does not say what went wrong:\n%s", logs)
	}
	if strings.Contains(logs, "s3cr3t") || strings.Contains(logs, "/hooks/") {
		t.Errorf("the log shows the sink's URL:\n%s", logs)
	}
}

func TestAnUnrenderableNotificationIsCountedAndSkipped(t *testing.T) {
	cfg := fast()
	f := start(t, cfg, func(*http.Request, string, int) (int, http.Header) { return http.StatusOK, nil })
	f.d.Offer(notification.Notification{ID: "x", Kind: "unrenderable"})
	f.d.Offer(note("y"))
	waitFor(t, budget(cfg, 1, 0), "the next one", func() bool { return f.sent(ResultDelivered) == 1 })
	if f.sent(ResultUnsent) != 1 || fmt.Sprint(f.rec.requests()) != "[y]" {
		t.Errorf("unsent %v, requests %v", f.sent(ResultUnsent), f.rec.requests())
	}
}

func TestShutdownFinishesTheAttemptInFlightThenStops(t *testing.T) {
	cfg := fast()
	inFlight, release := make(chan struct{}), make(chan struct{})
	rec := &receiver{seen: map[string]int{}, answer: func(_ *http.Request, id string, _ int) (int, http.Header) {
		if id == "a" {
			close(inFlight)
			<-release
		}
		return http.StatusOK, nil
	}}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	m, _ := NewMetrics(prometheus.NewRegistry())
	record := &memRecord{settled: map[string]bool{}}
	d := New(testSink{url: srv.URL}, cfg, NewHTTPClient(), record, clock.RealClock{}, m)
	stopping := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); d.Run(context.Background(), stopping) }()
	d.Offer(note("a"))
	d.Offer(note("b"))
	<-inFlight
	close(stopping)
	close(release)
	<-done
	if !record.Settled("test", "a") || record.Settled("test", "b") || fmt.Sprint(rec.requests()) != "[a]" {
		t.Errorf("requests %v; a settled %v, b settled %v: want a finished and settled, b left for the next leader",
			rec.requests(), record.Settled("test", "a"), record.Settled("test", "b"))
	}
}

func TestRetryDelayHonoursRetryAfterAndOtherwiseBacksOffWithJitter(t *testing.T) {
	d := &Deliverer{cfg: Config{BackoffBase: time.Second, BackoffMax: 8 * time.Second, RetryAfterMax: time.Minute}}
	for attempt, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		for range 50 {
			got := d.retryDelay(attempt, 0)
			if got < want/2 || got > want {
				t.Fatalf("attempt %d: delay %s, want within [%s, %s]", attempt, got, want/2, want)
			}
		}
	}
	if got := d.retryDelay(0, 7*time.Second); got != 7*time.Second {
		t.Errorf("Retry-After 7s gave %s", got)
	}
	if got := d.retryDelay(0, time.Hour); got != time.Minute {
		t.Errorf("Retry-After 1h gave %s, want the 1m cap", got)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{"": 0, "3": 3 * time.Second, "-1": 0, "soon": 0, now.Add(9 * time.Second).Format(http.TimeFormat): 9 * time.Second} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("Retry-After %q: %s, want %s", v, got, want)
		}
	}
}

func TestABacklogGoesOutInOrderOfOccurrenceAcrossNodes(t *testing.T) {
	cfg := fast()
	var mu sync.Mutex
	refused := 0
	f := start(t, cfg, func(*http.Request, string, int) (int, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		if refused < 3 {
			refused++
			return http.StatusServiceUnavailable, nil
		}
		return http.StatusOK, nil
	})
	t0 := time.Now()
	on := func(id, node string, at time.Duration) notification.Notification {
		n := note(id)
		n.Node.Name, n.OccurredAt = node, t0.Add(at)
		return n
	}
	// b-late is offered first and refused; a-early, seen later but
	// earlier, goes before it; b-after stays after b-late, its node's
	// order, though its time says otherwise.
	f.d.Offer(on("b-late", "b", 2*time.Second))
	waitFor(t, budget(cfg, 1, 0), "b-late refused", func() bool { return len(f.rec.requests()) >= 1 })
	f.d.Offer(on("a-early", "a", time.Second))
	f.d.Offer(on("b-after", "b", 0))
	waitFor(t, budget(cfg, 6, 3), "three deliveries", func() bool { return f.sent(ResultDelivered) == 3 })
	var accepted []string
	got := f.rec.requests()
	accepted = got[len(got)-3:]
	if fmt.Sprint(accepted) != "[a-early b-late b-after]" {
		t.Errorf("accepted %v (all requests %v), want [a-early b-late b-after]", accepted, got)
	}
}
