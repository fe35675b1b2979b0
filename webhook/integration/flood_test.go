package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/proc"
	"termgate.dev/termgate/test/testenv"
)

// Flood shape: bounded in count and time, loopback only.
const (
	containerLimit  = 256 << 20 // the Deployment's memory limit
	floodFor        = 8 * time.Second
	slowHeaderConns = 100
	// Two slow 6 MiB bodies hold 12 MiB of the default 32 MiB body budget
	// for most of the flood (the budget counts declared lengths from the
	// headers on; each is cut at the 3 s read timeout and sent again at
	// once). That leaves room for three fast 6 MiB calls, and eight workers
	// each keep one in flight, so the fast calls meet both outcomes:
	// answered and 429. Each slow body and each worker comes from an
	// address of its own, as from pods of their own.
	slowBodyConns    = 2
	largeBodyWorkers = 8
	largeBodyBytes   = 6 << 20 // just under the default body cap
	webhookTimeout   = 2 * time.Second
)

// TestAFloodOfSlowAndLargeCallsDoesNotTakeTheWebhookDown runs one
// `termgate webhook` process as the Deployment runs it (MEMORY_LIMIT from
// the container's 256 MiB) and, for a few seconds, floods its port with
// connections that send headers slowly, calls that declare a 6 MiB body and
// send it slowly, and large reviews sent as fast as they are answered.
// Meanwhile a real bind through the API server onto a terminating node must
// still be refused by the webhook within the registration's 2 s timeout
// (had the call failed, failurePolicy Ignore would let the bind through),
// and the process's peak resident memory must stay under the limit.
func TestAFloodOfSlowAndLargeCallsDoesNotTakeTheWebhookDown(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	dying := nodeNames(t)[0]
	bin := termgateBinary(t)
	// The process takes over the shipped registrations; give them back to
	// the in-process webhook afterwards.
	wh.restoreRegistrationsAtEnd(t)
	proc, err := localrun.StartWebhook(ctx(t), localrun.WebhookSpec{
		Binary: bin, Dir: t.TempDir(), Kubeconfig: env.Kubeconfig, Client: env.Client,
		Env: []string{"MEMORY_LIMIT=" + strconv.Itoa(containerLimit)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proc.Stop)

	b := newBinder(t, ns, dying)
	idle := residentKiB(t, proc.PID(), "VmRSS")

	floodCtx, stopFlood := context.WithTimeout(ctx(t), floodFor)
	defer stopFlood()
	var wg sync.WaitGroup
	var answered, throttled, failed atomic.Int64
	for range slowHeaderConns {
		wg.Go(func() { slowHeaders(floodCtx, proc.Addr, "127.0.0.2") })
	}
	for i := range slowBodyConns {
		wg.Go(func() { slowBody(floodCtx, proc.Addr, fmt.Sprintf("127.0.1.%d", i+1), largeBodyBytes) })
	}
	body := largeReview(largeBodyBytes)
	for i := range largeBodyWorkers {
		client := clientFrom(fmt.Sprintf("127.0.2.%d", i+1))
		defer client.CloseIdleConnections()
		wg.Go(func() {
			for floodCtx.Err() == nil {
				req, _ := http.NewRequestWithContext(floodCtx, http.MethodPost, "https://"+proc.Addr+"/mutate-drain-order", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusTooManyRequests {
					throttled.Add(1)
				} else {
					answered.Add(1)
				}
			}
		})
	}

	// Let the flood build up, then bind for real.
	select {
	case <-time.After(floodFor / 2):
	case <-floodCtx.Done():
	}
	took, bindErr := b.bind(ctx(t))
	duringFlood := residentKiB(t, proc.PID(), "VmRSS")
	wg.Wait()
	peak := residentKiB(t, proc.PID(), "VmHWM")
	t.Logf("webhook RSS: idle %d MiB, during the flood %d MiB, peak %d MiB (limit %d MiB); large calls answered %d, refused 429 %d, failed %d; bind answered in %v",
		idle>>10, duringFlood>>10, peak>>10, containerLimit>>20, answered.Load(), throttled.Load(), failed.Load(), took.Round(time.Millisecond))
	if err := proc.Exited(); err != nil {
		t.Fatalf("the webhook process died during the flood: %v (log %s)", err, proc.LogPath())
	}
	if !b.refused(bindErr) {
		t.Fatalf("bind during the flood: got %v, want the webhook's refusal", bindErr)
	}
	if took > webhookTimeout {
		t.Fatalf("the bind was answered after %v, beyond the webhook timeout %v", took, webhookTimeout)
	}
	if peak<<10 >= containerLimit {
		t.Fatalf("peak RSS %d MiB reached the container limit", peak>>10)
	}
	if answered.Load() == 0 {
		t.Fatal("no large call was answered: the flood did not reach the gates")
	}
	if throttled.Load() == 0 {
		t.Fatal("no large call was refused with 429: the in-flight body budget never engaged")
	}
}

// residentKiB reads a memory line (VmRSS, VmHWM) of /proc/<pid>/status.
func residentKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	kib, err := proc.ResidentKiB(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return kib
}

// binder binds one pod, through the API server, onto a terminating node:
// the webhook must refuse it (had its call failed, failurePolicy Ignore
// would let the bind through).
type binder struct {
	ns, node, pod string
}

func newBinder(t *testing.T, ns, node string) *binder {
	t.Helper()
	markNode(t, node, false)
	pod := kit.Pod(ns, "bound-late")
	pod.Spec.SchedulerName = "termgate-test-nobody" // only this test binds it
	createPod(t, pod)
	b := &binder{ns: ns, node: node, pod: pod.Name}
	testenv.Eventually(t, 15*time.Second, "the webhook process refuses binds onto "+node, func(ctx context.Context) (bool, string, error) {
		if _, err := b.bind(ctx); !b.refused(err) {
			if err == nil {
				return false, "", fmt.Errorf("pod bound to the terminating node before the flood: the webhook did not answer")
			}
			return false, err.Error(), nil
		}
		return true, "", nil
	})
	return b
}

func (b *binder) bind(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	err := env.Client.CoreV1().Pods(b.ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: b.pod, Namespace: b.ns},
		Target:     corev1.ObjectReference{Kind: "Node", Name: b.node},
	}, metav1.CreateOptions{})
	return time.Since(start), err
}

func (b *binder) refused(err error) bool {
	return err != nil && strings.Contains(err.Error(), "node "+b.node+" is terminating")
}

// clientFrom is an HTTPS client whose connections come from local, one of
// the loopback addresses (127.0.0.0/8), so the webhook sees another peer
// than the API server's 127.0.0.1.
func clientFrom(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Transport: &http.Transport{
		DialContext:       d.DialContext,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback flood
		ForceAttemptHTTP2: true,
	}, Timeout: 10 * time.Second}
}

// slowHeaders holds connections from local that trickle request headers,
// reopening each one the server closes, until ctx ends.
func slowHeaders(ctx context.Context, addr, local string) {
	trickle(ctx, addr, local, "POST /validate-binding HTTP/1.1\r\nHost: webhook\r\n", "X-Slow: 1\r\n", nil)
}

// slowBody holds calls from local that declare a body of n bytes and
// trickle it.
func slowBody(ctx context.Context, addr, local string, n int) {
	trickle(ctx, addr, local, slowBodyHead(n), strings.Repeat(" ", 1024), nil)
}

func slowBodyHead(n int) string {
	return "POST /validate-binding?timeout=2s HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(n) + "\r\n\r\n{\"apiVersion\":\"admission.k8s.io/v1\","
}

// trickle sends head, then drip every 200 ms, on connections from local
// until ctx ends, opening a new one whenever the server closes one. held,
// when set, gets how long the server kept each connection it closed.
func trickle(ctx context.Context, addr, local, head, drip string, held func(time.Duration)) {
	d := tls.Dialer{
		NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}},
		Config:    &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}, //nolint:gosec // loopback flood
	}
	for ctx.Err() == nil {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		opened := time.Now()
		_, err = conn.Write([]byte(head))
		for err == nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
				_, err = conn.Write([]byte(drip))
			}
		}
		if stop() && held != nil {
			held(time.Since(opened))
		}
		conn.Close()
	}
}

// largeReview is a well-formed pod review of about n bytes, most of it in a
// container argument no gate reads.
func largeReview(n int) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"flood","kind":{"group":"","version":"v1","kind":"Pod"},` +
		`"resource":{"group":"","version":"v1","resource":"pods"},"name":"flood","namespace":"default","operation":"CREATE","userInfo":{"username":"flood"},` +
		`"object":{"metadata":{"name":"flood","namespace":"default","annotations":{"fill":"` + strings.Repeat("a", n/2) + `"}},` +
		`"spec":{"containers":[{"name":"c","image":"x","args":["` + strings.Repeat("b", n/2-4096) + `"]}]}}}}`)
}

// metricValue returns the value of the sample named exactly name (with its
// labels) in a scrape, or 0.
func metricValue(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// Something past the NetworkPolicy (or on a cluster that does not enforce
// it) opens a few hundred calls to the admission port from one address and
// sends their small bodies a few bytes at a time. The user relies on the
// API server's calls still being answered, within the registration's 2 s
// timeout, and on such calls being cut near that timeout and showing up in
// the webhook's metrics.
func TestSlowBodiesFromOnePeerCannotFillTheWebhook(t *testing.T) {
	const (
		slowCalls = 300 // more than the 256 calls a replica answers at once
		attacker  = "127.0.0.2"
	)
	ns := testenv.Namespace(t, env.Client)
	dying := nodeNames(t)[0]
	wh.restoreRegistrationsAtEnd(t)
	proc, err := localrun.StartWebhook(ctx(t), localrun.WebhookSpec{
		Binary: termgateBinary(t), Dir: t.TempDir(), Kubeconfig: env.Kubeconfig, Client: env.Client,
		Env: []string{"MEMORY_LIMIT=" + strconv.Itoa(containerLimit)},
		// The local API server calls from 127.0.0.1: its control-plane range.
		Flags: []string{"--expected-peer-cidrs=127.0.0.1/32"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proc.Stop)
	reader, err := localrun.NewMetricsReader(ctx(t), localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: env.Dir})
	if err != nil {
		t.Fatal(err)
	}
	b := newBinder(t, ns, dying)
	before, err := reader.Scrape(ctx(t), proc.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if n := metricValue(before, "termgate_webhook_unexpected_peer_calls_total"); n != 0 {
		t.Fatalf("%v of the API server's calls were counted as unexpected", n)
	}

	floodCtx, stopFlood := context.WithTimeout(ctx(t), floodFor)
	defer stopFlood()
	var mu sync.Mutex
	var cut []time.Duration
	var wg sync.WaitGroup
	for range slowCalls {
		wg.Go(func() {
			trickle(floodCtx, proc.Addr, attacker, slowBodyHead(2048), "  ", func(d time.Duration) {
				mu.Lock()
				cut = append(cut, d)
				mu.Unlock()
			})
		})
	}
	select {
	case <-time.After(floodFor / 2):
	case <-floodCtx.Done():
	}
	took, bindErr := b.bind(ctx(t))
	wg.Wait()
	after, err := reader.Scrape(ctx(t), proc.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	busy := metricValue(after, `termgate_webhook_requests_refused_total{reason="peer-busy"}`)
	unexpected := metricValue(after, "termgate_webhook_unexpected_peer_calls_total")
	slices.Sort(cut)
	var median time.Duration
	if len(cut) > 0 {
		median = cut[len(cut)/2]
	}
	t.Logf("%d slow calls from %s for %s: bind answered in %v (%v); %d calls cut by the server, median after %v; refused peer-busy %v, unexpected-peer calls %v",
		slowCalls, attacker, floodFor, took.Round(time.Millisecond), bindErr, len(cut), median.Round(time.Millisecond), busy, unexpected)
	if err := proc.Exited(); err != nil {
		t.Fatalf("the webhook process died: %v (log %s)", err, proc.LogPath())
	}
	if !b.refused(bindErr) {
		t.Fatalf("bind during the slow calls: got %v, want the webhook's refusal", bindErr)
	}
	if took > webhookTimeout {
		t.Fatalf("the bind was answered after %v, beyond the webhook timeout %v", took, webhookTimeout)
	}
	if busy == 0 {
		t.Fatal("no call of the slow peer was refused: the per-peer bound never engaged")
	}
	if unexpected < slowCalls {
		t.Fatalf("%v calls counted from unexpected peers, want at least the %d slow ones", unexpected, slowCalls)
	}
	// The body read timeout (3 s) is just above the API server's call
	// timeout; well under the flood's 8 s, a slow body is cut.
	if len(cut) == 0 || median > 5*time.Second {
		t.Fatalf("slow bodies cut %d times, median after %v: want them cut near 3 s", len(cut), median)
	}
}
