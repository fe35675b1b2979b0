package drain

import (
	"net/http"
	"testing"
	"time"

	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/nodemark"
)

// TestRefusalsAreToldApartByCause: the API server answers 429 both for a
// PodDisruptionBudget that allows no disruption and for its own load
// shedding (priority and fairness). Only the first is a budget holding the
// pod: it gets the pod's EvictionBlocked event and the queue's backoff.
// Throttling gets a node event, its own count and label, and a wait of at
// least what the server asked for.
func TestRefusalsAreToldApartByCause(t *testing.T) {
	budgetBroken := apierrors.NewForbidden(podsGVR.GroupResource(), "web", errTest("too many evictions not confirmed"))
	budgetBroken.ErrStatus.Details.Causes = append(budgetBroken.ErrStatus.Details.Causes,
		metav1.StatusCause{Type: policyv1.DisruptionBudgetCause, Message: "too many pending evictions"})
	slowDown := apierrors.NewGenericServerResponse(http.StatusTooManyRequests, "POST", podsGVR.GroupResource(), "", "Too many requests, please try again later.", 2, true)
	cases := []struct {
		name          string
		errs          []error
		wantBlocked   int
		wantThrottled int
		wantRetried   int
		// minGap is the least time between the first try and the retry.
		minGap    time.Duration
		wantEvent string
		noEvent   string
	}{
		{"a budget's 429 is a budget refusal", []error{pdbRefusal()}, 1, 0, 0,
			DefaultBackoffBase / 2, nodemark.EventEvictionBlocked, nodemark.EventEvictionsThrottled},
		{"a budget's 403 (unconfirmed evictions over the cap) is a budget refusal too", []error{budgetBroken}, 1, 0, 0,
			DefaultBackoffBase / 2, nodemark.EventEvictionBlocked, nodemark.EventEvictionsThrottled},
		{"a 429 without a budget's cause is throttling, retried after its Retry-After", []error{slowDown, slowDown}, 0, 2, 0,
			2 * time.Second, nodemark.EventEvictionsThrottled, nodemark.EventEvictionBlocked},
		{"a 403 from admission is an error, neither", []error{apierrors.NewForbidden(podsGVR.GroupResource(), "web", errTest("denied by a webhook"))}, 0, 0, 1,
			DefaultBackoffBase / 2, "", nodemark.EventEvictionBlocked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := newKit(t, pod("web"))
			for _, err := range tc.errs {
				k.hook("web", fail(err))
			}
			reg, metrics := newTestMetrics(t)
			res, err := k.drive(k.drainer(Config{Metrics: metrics}), testMark, runOpts{})
			expectNoError(t, err)
			if res.Retried429 != tc.wantBlocked || res.Throttled != tc.wantThrottled || res.RetriedErr != tc.wantRetried || res.Evicted != 1 {
				t.Fatalf("result %+v, want %d budget refusals, %d throttled, %d other retries and the pod evicted",
					res, tc.wantBlocked, tc.wantThrottled, tc.wantRetried)
			}
			calls := k.callsFor("web")
			if gap := calls[1].at.Sub(calls[0].at); gap < tc.minGap {
				t.Errorf("retried %s after the refusal, want at least %s", gap, tc.minGap)
			}
			if got := counterValue(t, reg, "termgate_drain_evictions_total", "result", "throttled"); got != float64(tc.wantThrottled) {
				t.Errorf("throttled evictions metric %v, want %d", got, tc.wantThrottled)
			}
			if got := counterValue(t, reg, "termgate_drain_evictions_total", "result", "blocked"); got != float64(tc.wantBlocked) {
				t.Errorf("blocked evictions metric %v, want %d", got, tc.wantBlocked)
			}
			events := k.events()
			if tc.wantEvent != "" && countEvents(events, tc.wantEvent) != 1 {
				t.Errorf("events %v: want one %s", events, tc.wantEvent)
			}
			if hasEvent(events, tc.noEvent) {
				t.Errorf("events %v: want no %s", events, tc.noEvent)
			}
		})
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }

func countEvents(events []string, reason string) int {
	n := 0
	for _, e := range events {
		if hasEvent([]string{e}, reason) {
			n++
		}
	}
	return n
}
