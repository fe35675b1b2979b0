// Package azure follows Azure's Scheduled Events (the instance metadata
// service's /metadata/scheduledevents): Preempt, Terminate, Reboot,
// Redeploy and Freeze, for this VM only. The service has no long poll, so
// the document is polled (about once a second, as Microsoft recommends),
// with the Metadata header it requires and never through a proxy. No
// official Go client exists; this one is small.
//
// The first request enables the service and may take up to two minutes:
// until it answers nothing is read (the agent is not ready and keeps any
// mark it finds), which is not the same as "no events". An event gone from
// the document was cancelled or has finished.
package azure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/agent/retry"
	"termgate.dev/termgate/nodemark"
)

// SourceName is Azure's name in marks and metrics.
const SourceName = "azure"

// Channel is the one document the source reads.
const Channel = "scheduledevents"

// apiVersion of Scheduled Events the agent speaks.
const apiVersion = "2020-07-01"

// Config tunes the source.
type Config struct {
	// Endpoint of the instance metadata service.
	Endpoint string
	// VMName is this VM's name as Scheduled Events lists it in Resources
	// (see VMName).
	VMName string
	// PollInterval is the longest time between two reads (each wait is
	// jittered below it).
	PollInterval time.Duration
	// ReadTimeout bounds one read once the service answered;
	// FirstReadTimeout the first, which enables the service.
	ReadTimeout, FirstReadTimeout time.Duration
	// Acknowledge tells Azure, once the drain for an event is done, that
	// the event may start (StartRequests), when the event concerns this VM
	// alone. Off by default: it makes maintenance come sooner.
	Acknowledge bool
}

// DefaultConfig returns the defaults behind the agent's flags.
func DefaultConfig() Config {
	return Config{Endpoint: "http://169.254.169.254", PollInterval: time.Second, ReadTimeout: 5 * time.Second, FirstReadTimeout: 150 * time.Second}
}

// Validate reports an unusable configuration.
func (c Config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.Endpoint, "http://") {
		errs = append(errs, fmt.Errorf("azure metadata endpoint %q: want http://host[:port]", c.Endpoint))
	}
	if c.VMName == "" {
		errs = append(errs, errors.New("azure VM name unknown: the node's spec.providerID names no virtual machine"))
	}
	// 5 requests a second per VM is Azure's limit, shared with whatever
	// else on the VM reads the service.
	if c.PollInterval < 500*time.Millisecond {
		errs = append(errs, fmt.Errorf("azure poll interval %s: want at least 500ms", c.PollInterval))
	}
	if c.ReadTimeout <= 0 || c.FirstReadTimeout < c.ReadTimeout {
		errs = append(errs, fmt.Errorf("azure read timeouts %s and %s (first): want positive, the first no shorter", c.ReadTimeout, c.FirstReadTimeout))
	}
	return errors.Join(errs...)
}

// Source is Azure's Scheduled Events as a notice.Source.
type Source struct {
	cfg     Config
	clk     clock.Clock
	hc      *http.Client
	metrics *notice.Metrics
	board   *notice.Board
	tracker notice.Tracker

	mu        sync.Mutex
	answered  bool
	doc       Document
	scheduled map[string]time.Time // last NotBefore of each event
	started   map[string]time.Time // when each event was first seen started
	throttled int                  // 429s in a row
}

var (
	_ notice.Source       = (*Source)(nil)
	_ notice.Acknowledger = (*Source)(nil)
)

// New builds the source.
func New(clk clock.Clock, cfg Config, m *notice.Metrics) *Source {
	return &Source{
		cfg: cfg, clk: clk, metrics: m,
		hc:        &http.Client{Transport: m.Instrument(notice.DirectTransport())},
		board:     notice.NewBoard(SourceName, []string{Channel}, func(nodemark.Mark) string { return Channel }, clk),
		scheduled: map[string]time.Time{}, started: map[string]time.Time{},
	}
}

// Name implements notice.Source.
func (s *Source) Name() string { return SourceName }

// Run implements notice.Source.
func (s *Source) Run(ctx context.Context, out chan<- notice.Reading) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		notice.Poll(ctx, s.clk, s.cfg.PollInterval, s.read)
	}()
	s.board.Publish(ctx, out)
	<-done
}

// Alive implements notice.Source; the first answer may take minutes.
func (s *Source) Alive() error {
	return s.board.Alive(max(s.cfg.FirstReadTimeout+30*time.Second, 10*s.cfg.PollInterval))
}

// Ready implements notice.Source.
func (s *Source) Ready() error { return s.board.Ready() }

const maxBody = 1 << 20

func (s *Source) url() string {
	return strings.TrimSuffix(s.cfg.Endpoint, "/") + "/metadata/scheduledevents?api-version=" + apiVersion
}

// read fetches the document once and records this VM's events. It asks
// for a longer wait after a 429.
func (s *Source) read(ctx context.Context) time.Duration {
	log := logr.FromContextOrDiscard(ctx).WithValues("channel", Channel)
	s.mu.Lock()
	timeout := s.cfg.ReadTimeout
	if !s.answered {
		timeout = s.cfg.FirstReadTimeout
	}
	s.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, code, err := s.do(rctx, http.MethodGet, nil)
	if ctx.Err() != nil {
		return 0
	}
	if code == http.StatusTooManyRequests {
		s.mu.Lock()
		s.throttled++
		n := s.throttled
		s.mu.Unlock()
		s.metrics.Errors.WithLabelValues(Channel).Inc()
		wait := retry.Delay(s.cfg.PollInterval, 30*time.Second, n)
		log.Info("Azure Scheduled Events throttled the agent (429); backing off", "wait", wait)
		return wait
	}
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET %s: %d %s", s.url(), code, notice.Truncate(strings.TrimSpace(body)))
	}
	if err != nil {
		s.metrics.Errors.WithLabelValues(Channel).Inc()
		log.Info("Azure Scheduled Events read failed; polling on", "error", err.Error())
		return 0
	}
	s.mu.Lock()
	s.answered, s.throttled = true, 0
	s.mu.Unlock()
	doc, notices, bad, err := ParseDocument(body, s.cfg.VMName)
	if err != nil {
		bad = append(bad, notice.Unreadable{Channel: Channel, Value: notice.Truncate(body), Err: err.Error(), Alarming: true})
	}
	if len(bad) > 0 {
		s.metrics.Invalid.WithLabelValues(Channel).Inc()
		log.Error(errors.New(bad[0].Err), "ignoring unreadable Scheduled Events; the other events still count", "value", bad[0].Value)
	}
	if err != nil {
		s.board.Set(Channel, nil, bad, false)
		return 0
	}
	at := s.clk.Now()
	notices = s.tracker.Stamp(at, s.startTimes(at, notices))
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
	s.board.Set(Channel, notices, bad, true)
	return 0
}

// startTimes gives started events (which carry no NotBefore) the time they
// started as far as the agent knows: the NotBefore last announced, or when
// it first saw them started, whichever came first.
func (s *Source) startTimes(at time.Time, notices []notice.Notice) []notice.Notice {
	s.mu.Lock()
	defer s.mu.Unlock()
	present := map[string]bool{}
	for i, n := range notices {
		present[n.ID] = true
		if !n.Started {
			s.scheduled[n.ID] = n.NotBefore
			continue
		}
		if _, ok := s.started[n.ID]; !ok {
			s.started[n.ID] = at
		}
		start := s.started[n.ID]
		if nb, ok := s.scheduled[n.ID]; ok && nb.Before(start) {
			start = nb
		}
		if n.NotBefore.IsZero() || start.Before(n.NotBefore) {
			notices[i].NotBefore = start
		}
	}
	for id := range s.scheduled {
		if !present[id] {
			delete(s.scheduled, id)
		}
	}
	for id := range s.started {
		if !present[id] {
			delete(s.started, id)
		}
	}
	return notices
}

// Acknowledge implements notice.Acknowledger: a StartRequests POST for id,
// when acknowledgement is on and the event concerns this VM alone.
func (s *Source) Acknowledge(ctx context.Context, id string) (bool, error) {
	if !s.cfg.Acknowledge {
		return false, nil
	}
	s.mu.Lock()
	var ev *Event
	for i := range s.doc.Events {
		if s.doc.Events[i].EventID == id {
			ev = &s.doc.Events[i]
		}
	}
	s.mu.Unlock()
	if ev == nil {
		return false, nil
	}
	if !ev.onlyFor(s.cfg.VMName) {
		logr.FromContextOrDiscard(ctx).Info("not acknowledging: the event concerns other VMs too, and would start for them", "event", id, "resources", ev.Resources)
		return false, nil
	}
	b, _ := json.Marshal(map[string]any{"StartRequests": []map[string]string{{"EventId": id}}})
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadTimeout)
	defer cancel()
	body, code, err := s.do(ctx, http.MethodPost, b)
	if err != nil {
		return false, err
	}
	if code != http.StatusOK {
		return false, fmt.Errorf("acknowledge %s: %d %s", id, code, notice.Truncate(strings.TrimSpace(body)))
	}
	return true, nil
}

func (s *Source) do(ctx context.Context, method string, payload []byte) (string, int, error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url(), body)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Metadata", "true")
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", resp.StatusCode, fmt.Errorf("read answer: %w", err)
	}
	return string(b), resp.StatusCode, nil
}
