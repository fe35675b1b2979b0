package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
)

// Live is the liveness check: the notice source is alive (the cloud's
// metadata service keeps answering).
func (a *Agent) Live() error { return a.alive() }

// APICheck asks the API server whether it is ready once per interval, in
// the background, and keeps the answer for the readiness probe. A probe
// then costs no API call: whoever can reach the probe port cannot spend
// the agent's request budget, and the probe answers in microseconds
// whatever the API server's latency. Give it a client of its own, never
// the one that evicts: its requests must not wait behind a drain, nor a
// drain behind them.
type APICheck struct {
	client   rest.Interface
	clock    clock.WithTicker
	interval time.Duration

	mu   sync.Mutex
	at   time.Time // when the last answer arrived; zero before the first
	last error
}

// NewAPICheck checks through client every interval.
func NewAPICheck(client rest.Interface, clk clock.WithTicker, interval time.Duration) *APICheck {
	return &APICheck{client: client, clock: clk, interval: interval}
}

// errNotChecked is the answer before the first check has returned.
var errNotChecked = errors.New("API server not checked yet")

// Run checks at once and then every interval until ctx ends. Each check
// gives up after half the interval, so one is never still running when the
// next is due.
func (c *APICheck) Run(ctx context.Context) error {
	t := c.clock.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// check asks the API server's own readiness endpoint: cheap, and it proves
// both the network path and the agent's credentials.
func (c *APICheck) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, c.interval/2)
	defer cancel()
	err := c.client.Get().AbsPath("/readyz").Do(ctx).Error()
	if err != nil {
		err = fmt.Errorf("API server not reachable: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at, c.last = c.clock.Now(), err
}

// Err is the readiness check: the last answer, if it is recent. An answer
// older than three intervals means the checks stopped; that is not ready
// either.
func (c *APICheck) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() {
		return errNotChecked
	}
	if age := c.clock.Since(c.at); age > 3*c.interval {
		return fmt.Errorf("API server last checked %s ago", age.Round(time.Second))
	}
	return c.last
}
