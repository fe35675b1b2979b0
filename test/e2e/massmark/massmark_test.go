package massmark

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

// TestHundredNodesPreemptedWithinASecond: every node is marked and drained
// by its deadline, the webhook answers every agent eviction from what it
// holds (no pod read, no refusal of an eviction on the agent's own node),
// and nothing fails open, neither at the API server nor in the webhook.
func TestHundredNodesPreemptedWithinASecond(t *testing.T) {
	needCluster(t)
	notice := shippedNotice(t)
	before := webhookCounters(t)
	failOpenBefore := apiServerFailOpen(t)
	tainted := watchTaints(t)
	t.Cleanup(func() {
		if t.Failed() {
			logWebhookErrors(t)
		}
	})

	// The notices arrive over one second, as a zone's reclaim does.
	noticed := map[string]time.Time{}
	tick := time.NewTicker(time.Second / spotNodes)
	for _, node := range spot {
		<-tick.C
		noticed[node] = time.Now()
		servers[node].SetPreempted(true)
	}
	tick.Stop()
	last := time.Now()

	marks := waitAllTainted(t, tainted, noticed, notice)
	for _, group := range []struct {
		name    string
		process bool
	}{{"process agents", true}, {"in-process agents", false}} {
		var ds []time.Duration
		for node, d := range marks {
			if isProcess(node) == group.process {
				ds = append(ds, d)
			}
		}
		t.Logf("notice to taint, %d %s: p50 %s, p99 %s, max %s", len(ds), group.name,
			percentile(ds, 0.50), percentile(ds, 0.99), percentile(ds, 1))
	}

	// The drains: every pod evicted (gone or terminating) before the last
	// node's deadline.
	testenv.Eventually(t, time.Until(last.Add(notice)), "every workload pod evicted before its node's deadline", func(ctx context.Context) (bool, string, error) {
		list, err := env.Client.CoreV1().Pods(workload).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		left := 0
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				left++
			}
		}
		return left == 0, fmt.Sprintf("%d of %d pods not evicted", left, spotNodes*podsPerNode), nil
	})
	t.Logf("all %d pods evicted %s after the last notice", spotNodes*podsPerNode, time.Since(last).Round(time.Millisecond))

	rise := localrun.Rise(before, webhookCounters(t))
	ownNode := rise[`termgate_webhook_decisions_total{gate="agent",verdict="allowed-own-node"}`]
	if ownNode < spotNodes*podsPerNode {
		t.Errorf("the webhook allowed %v evictions on the agents' own nodes, want at least %d (every pod's)", ownNode, spotNodes*podsPerNode)
	}
	for k, v := range rise {
		switch {
		case strings.HasPrefix(k, `termgate_webhook_decisions_total{gate="agent"`) && !strings.Contains(k, `verdict="allowed-own-node"`):
			t.Errorf("%s rose by %v: an agent's eviction on its own node must be allowed, from what the webhook holds", k, v)
		case strings.HasPrefix(k, "termgate_webhook_decisions_total") && strings.Contains(k, `verdict="allowed-unknown-node"`),
			strings.HasPrefix(k, "termgate_webhook_decisions_total") && strings.Contains(k, `verdict="allowed-unconfirmed"`):
			t.Errorf("%s rose by %v: the webhook allowed without checking", k, v)
		case strings.HasPrefix(k, `termgate_webhook_pod_reads_total{gate="agent"`):
			t.Errorf("%s rose by %v: the confinement had to read pods, so its per-node state was not ready when the evictions came", k, v)
		}
	}
	if d := apiServerFailOpen(t) - failOpenBefore; d != 0 {
		t.Errorf("the API server failed open on termgate's webhooks %v times during the storm", d)
	}
	// The processes' eviction results are theirs to log; the in-process
	// agents' are read from their registries.
	for _, a := range agents {
		for _, result := range []string{"error", "server_error", "throttled"} {
			if n, err := a.Counter("termgate_drain_evictions_total", map[string]string{"result": result}); err != nil {
				t.Error(err)
			} else if n != 0 {
				t.Errorf("agent %s: %v evictions with result %s", a.Node, n, result)
			}
		}
	}
	t.Logf("webhook: %v own-node evictions allowed, nothing else decided for the agents", ownNode)
}

// shippedNotice is the DaemonSet's --preemption-notice: the time each node
// has from its notice to its deadline.
func shippedNotice(t *testing.T) time.Duration {
	t.Helper()
	c, err := localrun.ShippedAgent()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--preemption-notice="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
	}
	t.Fatal("the shipped DaemonSet sets no --preemption-notice")
	return 0
}

// watchTaints records when each node is first seen with the termination
// taint.
func watchTaints(t *testing.T) func() map[string]time.Time {
	t.Helper()
	w, err := env.Client.CoreV1().Nodes().Watch(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]time.Time{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			if slices.ContainsFunc(n.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == nodemark.TaintKey }) {
				mu.Lock()
				if _, ok := seen[n.Name]; !ok {
					seen[n.Name] = time.Now()
				}
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { w.Stop(); <-done })
	return func() map[string]time.Time {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[string]time.Time, len(seen))
		for k, v := range seen {
			out[k] = v
		}
		return out
	}
}

// waitAllTainted waits, within a node's notice, for every Spot node's
// taint and returns each node's notice-to-taint time.
func waitAllTainted(t *testing.T, tainted func() map[string]time.Time, noticed map[string]time.Time, notice time.Duration) map[string]time.Duration {
	t.Helper()
	marks := map[string]time.Duration{}
	testenv.Eventually(t, notice, "every preempted node tainted before its deadline", func(context.Context) (bool, string, error) {
		seen := tainted()
		for _, node := range spot {
			if at, ok := seen[node]; ok {
				marks[node] = at.Sub(noticed[node])
			}
		}
		return len(marks) == len(spot), fmt.Sprintf("%d of %d nodes tainted", len(marks), len(spot)), nil
	})
	return marks
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i].Round(time.Millisecond)
}

// webhookCounters scrapes the webhook's termgate_webhook_ samples, keyed
// by name and labels.
func webhookCounters(t *testing.T) map[string]float64 {
	t.Helper()
	body, err := reader.Scrape(t.Context(), webhook.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	return localrun.Samples(body, "termgate_webhook_")
}

// apiServerFailOpen is the API server's count of calls to termgate's
// webhooks it let through because the webhook could not be reached.
func apiServerFailOpen(t *testing.T) float64 {
	t.Helper()
	body, err := env.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(t.Context())
	if err != nil {
		t.Fatalf("API server metrics: %v", err)
	}
	var n float64
	for k, v := range localrun.Samples(string(body), "apiserver_admission_webhook_fail_open_count") {
		if strings.Contains(k, "termgate.dev") {
			n += v
		}
	}
	return n
}

// logWebhookErrors gives the webhook's error lines (at most 20): why it
// answered as it did, before its log goes with the cluster.
func logWebhookErrors(t *testing.T) {
	b, err := os.ReadFile(webhook.LogPath())
	if err != nil {
		t.Logf("webhook log: %v", err)
		return
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "error") && n < 20 {
			t.Logf("webhook: %s", line)
			n++
		}
	}
}
