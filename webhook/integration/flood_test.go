package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
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
	"termgate.dev/termgate/test/testenv"
)

// Flood shape: bounded in count and time, loopback only.
const (
	containerLimit  = 256 << 20 // the Deployment's memory limit
	floodFor        = 8 * time.Second
	slowHeaderConns = 100
	// Five slow 6 MiB bodies hold 30 MiB of the default 64 MiB body budget
	// for the whole flood (the budget counts declared lengths from the
	// headers on; the 10 s read timeout outlasts the flood). That leaves
	// room for five fast 6 MiB calls, and eight workers each keep one in
	// flight, so the fast calls meet both outcomes: answered and 429.
	slowBodyConns    = 5
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

	markNode(t, dying, false)
	pod := kit.Pod(ns, "bound-late")
	pod.Spec.SchedulerName = "termgate-test-nobody" // only this test binds it
	createPod(t, pod)
	bind := func(ctx context.Context) (time.Duration, error) {
		start := time.Now()
		err := env.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: ns},
			Target:     corev1.ObjectReference{Kind: "Node", Name: dying},
		}, metav1.CreateOptions{})
		return time.Since(start), err
	}
	refused := func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "node "+dying+" is terminating")
	}
	testenv.Eventually(t, 15*time.Second, "the webhook process refuses binds onto "+dying, func(ctx context.Context) (bool, string, error) {
		if _, err := bind(ctx); !refused(err) {
			if err == nil {
				return false, "", fmt.Errorf("pod bound to the terminating node before the flood: the webhook did not answer")
			}
			return false, err.Error(), nil
		}
		return true, "", nil
	})
	idle := residentKiB(t, proc.PID(), "VmRSS")

	floodCtx, stopFlood := context.WithTimeout(ctx(t), floodFor)
	defer stopFlood()
	var wg sync.WaitGroup
	var answered, throttled, failed atomic.Int64
	for range slowHeaderConns {
		wg.Go(func() { slowHeaders(floodCtx, proc.Addr) })
	}
	for range slowBodyConns {
		wg.Go(func() { slowBody(floodCtx, proc.Addr) })
	}
	body := largeReview(largeBodyBytes)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback flood
		ForceAttemptHTTP2: true,
	}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for range largeBodyWorkers {
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
	took, bindErr := bind(ctx(t))
	duringFlood := residentKiB(t, proc.PID(), "VmRSS")
	wg.Wait()
	peak := residentKiB(t, proc.PID(), "VmHWM")
	t.Logf("webhook RSS: idle %d MiB, during the flood %d MiB, peak %d MiB (limit %d MiB); large calls answered %d, refused 429 %d, failed %d; bind answered in %v",
		idle>>10, duringFlood>>10, peak>>10, containerLimit>>20, answered.Load(), throttled.Load(), failed.Load(), took.Round(time.Millisecond))
	if err := proc.Exited(); err != nil {
		t.Fatalf("the webhook process died during the flood: %v (log %s)", err, proc.LogPath())
	}
	if !refused(bindErr) {
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
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("parse %s: %v", field, err)
			}
			return kib
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// slowHeaders holds connections that trickle request headers, reopening
// each one the server closes, until ctx ends.
func slowHeaders(ctx context.Context, addr string) {
	trickle(ctx, addr, "POST /validate-binding HTTP/1.1\r\nHost: webhook\r\n", "X-Slow: 1\r\n")
}

// slowBody holds calls that declare a large body and trickle it.
func slowBody(ctx context.Context, addr string) {
	trickle(ctx, addr, "POST /validate-binding HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(largeBodyBytes)+"\r\n\r\n{\"apiVersion\":\"admission.k8s.io/v1\",", strings.Repeat(" ", 1024))
}

func trickle(ctx context.Context, addr, head, drip string) {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}} //nolint:gosec // loopback flood
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
		_, err = conn.Write([]byte(head))
		for err == nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
				_, err = conn.Write([]byte(drip))
			}
		}
		stop()
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
