// Package retry paces the agent's retries: exponential delays with jitter,
// waited out on an injected clock so tests step time instead of sleeping.
package retry

import (
	"context"
	"math/rand/v2"
	"time"

	"k8s.io/utils/clock"
)

// Delay returns the wait before retry number attempt (0 for the first
// retry): base doubled per attempt up to limit, then drawn from the upper
// half of that, so that callers refused together (pods behind one budget,
// agents after a metadata server restart) do not retry in lockstep.
func Delay(base, limit time.Duration, attempt int) time.Duration {
	d := base
	for i := 0; i < attempt && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	if d <= 0 {
		return 0
	}
	half := d / 2
	return half + rand.N(half+1)
}

// Sleep waits d on clk unless ctx ends first; it reports whether the whole
// wait passed.
func Sleep(ctx context.Context, clk clock.Clock, d time.Duration) bool {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}
