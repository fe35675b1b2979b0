package certmanager_test

import (
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
)

// stream sends admission requests through the API server back to back
// while a certificate moves, and records each outcome. Two kinds, so both
// configurations (and so both injected bundles) are exercised:
//   - a pod create (dry run) that the mutating webhook must stamp with its
//     drain order: an unstamped pod means the call failed and the API server
//     failed open (failurePolicy Ignore);
//   - a pod pinned to the marked node (dry run) that the validating webhook
//     must refuse: an admitted pod means the call failed open.
type stream struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	calls  []call
}

type call struct {
	at     time.Time
	kind   string
	failed string // why the call did not reach the webhook; empty when it did
}

func startStream(ns, node string) *stream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{cancel: cancel}
	for _, pinned := range []string{"", node} {
		s.wg.Go(func() {
			for ctx.Err() == nil {
				c := call{kind: "mutating", failed: checkStamped(ctx, ns)}
				if pinned != "" {
					c = call{kind: "validating", failed: checkRefused(ctx, ns, pinned)}
				}
				if ctx.Err() != nil {
					return // the stop, not the webhook, ended this call
				}
				c.at = time.Now()
				s.mu.Lock()
				s.calls = append(s.calls, c)
				s.mu.Unlock()
				// A steady pace that leaves the 2-core machine room for
				// cert-manager and the webhook to work.
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	return s
}

// warmUp waits until both kinds have succeeded once, so a broken set-up is
// not mistaken for a rotation failure. Each call takes milliseconds.
func (s *stream) warmUp(t *testing.T) {
	t.Helper()
	err := kit.Poll(context.Background(), 10*time.Second, func(context.Context) (bool, string, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		ok := map[string]bool{}
		var last string
		for _, c := range s.calls {
			if c.failed == "" {
				ok[c.kind] = true
			} else {
				last = c.failed
			}
		}
		return ok["mutating"] && ok["validating"], last, nil
	})
	if err != nil {
		s.stop()
		t.Fatalf("admission stream never succeeded before the rotation: %v", err)
	}
	s.mu.Lock()
	s.calls = nil // count from the rotation on
	s.mu.Unlock()
}

// callsAfter keeps the stream going until n calls have ended after since.
// A call takes milliseconds; 30 s means the API server or webhook is stuck,
// which expect then reports as too few calls.
func (s *stream) callsAfter(t *testing.T, since time.Time, n int) {
	t.Helper()
	_ = kit.Poll(context.Background(), 30*time.Second, func(context.Context) (bool, string, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		count := 0
		for _, c := range s.calls {
			if !c.at.Before(since) {
				count++
			}
		}
		return count >= n, "", nil
	})
}

func (s *stream) stop() streamResult {
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return tally(s.calls)
}

type streamResult struct {
	calls, failed int
	failures      []string
	all           []call
}

func tally(calls []call) streamResult {
	r := streamResult{calls: len(calls), all: calls}
	for _, c := range calls {
		if c.failed != "" {
			r.failed++
			if len(r.failures) < 10 {
				r.failures = append(r.failures, c.at.Format("15:04:05.000")+" "+c.kind+": "+c.failed)
			}
		}
	}
	return r
}

// split tallies the calls that ended before and after at.
func (r streamResult) split(at time.Time) (before, after streamResult) {
	var b, a []call
	for _, c := range r.all {
		if c.at.Before(at) {
			b = append(b, c)
		} else {
			a = append(a, c)
		}
	}
	return tally(b), tally(a)
}

// expect fails the test on any failed call, or when too few calls were made
// to prove anything.
func (r streamResult) expect(t *testing.T, atLeast int) {
	t.Helper()
	if r.calls < atLeast {
		t.Errorf("only %d admission calls in the window, want at least %d to prove anything", r.calls, atLeast)
	}
	if r.failed > 0 {
		t.Errorf("%d of %d admission calls failed:\n  %s", r.failed, r.calls, strings.Join(r.failures, "\n  "))
	}
}

func dryRunPod(ctx context.Context, ns, node string) (*corev1.Pod, error) {
	p := kit.Pod(ns, "stream-"+rand.String(6))
	p.Spec.NodeName = node
	return shared.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
}

func checkStamped(ctx context.Context, ns string) string {
	p, err := dryRunPod(ctx, ns, "")
	if err != nil {
		return "create: " + err.Error()
	}
	if _, ok := p.Annotations[nodemark.AnnotationDefaultDrainOrder]; !ok {
		return "pod not stamped with " + nodemark.AnnotationDefaultDrainOrder + ": the mutating call failed open"
	}
	return ""
}

func checkRefused(ctx context.Context, ns, node string) string {
	_, err := dryRunPod(ctx, ns, node)
	switch {
	case err == nil:
		return "pod pinned to marked node " + node + " admitted: the validating call failed open"
	case apierrors.IsForbidden(err) && strings.Contains(err.Error(), "is terminating"):
		return ""
	default:
		return "create: " + err.Error()
	}
}

// failOpenCount reads kit.FailOpenCount, failing the test when the API
// server's metrics cannot be read.
func failOpenCount(t *testing.T) int {
	t.Helper()
	n, err := kit.FailOpenCount(context.Background(), shared.Client)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// parseLeaf reads the first certificate of PEM data, failing the test when
// there is none.
func parseLeaf(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	c, err := kit.ParseLeafPEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
