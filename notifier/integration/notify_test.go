package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
	"termgate.dev/termgate/test/receiver"
	"termgate.dev/termgate/test/testenv"
)

var (
	markedDrainedWithdrawn = []notification.Kind{notification.KindMarked, notification.KindDrainFinished, notification.KindNoticeWithdrawn}
	markedDrained          = []notification.Kind{notification.KindMarked, notification.KindDrainFinished}
)

// drainWithin is how long a drain of guarded pods takes: they are deleted
// at the cut-off, notice minus the system grace, and kwok takes them at once.
const drainWithin = notice - 10*time.Second + deliverWithin

func TestEveryNotificationOfAPreemptionArrivesOnce(t *testing.T) {
	freshNotifierState(t)
	w := watchWritten(t)
	events := startReceiver(t, nil)
	slack := startReceiver(t, nil)
	tmpl := startReceiver(t, nil)
	n := newNode(t, map[string]string{"pool": "batch"})
	workload(t, n, 3, 1)
	config := sinkConfig(`- name: chat
  format: slack
  kinds: [node.marked, node.drain-finished]
- name: ops
  format: template
  nodeSelector: pool=batch
  template: '{"node": {{json .Node.Name}}, "kind": {{json .Kind}}, "id": {{json .ID}}}'
- name: elsewhere
  nodeSelector: pool=web
`)
	notifier := startNotifier(t, "notifier-a", config, map[string]string{"events": events.URL, "chat": slack.URL, "ops": tmpl.URL, "elsewhere": tmpl.URL + "-never"})

	n.md.SetPreempted(true)
	got := waitTypes(t, events, n.name, drainWithin, markedDrained...)
	n.md.SetPreempted(false)
	got = waitTypes(t, events, n.name, markWithin+deliverWithin, markedDrainedWithdrawn...)
	expectEachIDOnce(t, events.Requests())

	marked, drained, withdrawn := data(t, got[0]), data(t, got[1]), data(t, got[2])
	if marked.Notice.Reason != string(nodemark.ReasonPreempted) || marked.Notice.Deadline.Sub(marked.Notice.NoticeTime) != notice ||
		marked.Node.Labels["pool"] != "batch" || marked.Cluster != "integration" || got[0].Event.Source != "/termgate.dev/clusters/integration" {
		t.Errorf("node.marked data %+v", marked)
	}
	if d := drained.Drain; d == nil || d.Evicted < 3 || d.Deleted != 1 || d.BlockedByPDB != 1 || d.Remaining != 0 {
		t.Errorf("node.drain-finished data %+v, want 3 evicted, the guarded pod blocked by its PDB then deleted, none left", d)
	}
	if withdrawn.Withdrawal == nil || withdrawn.Withdrawal.Cause != nodemark.UnmarkNoticeWithdrawn {
		t.Errorf("node.notice-withdrawn data %+v", withdrawn.Withdrawal)
	}
	ids := map[string]bool{}
	for _, r := range got {
		ids[r.Event.ID] = true
		if !r.SignatureOK {
			t.Errorf("%s: the HMAC signature does not match the body", r.Event.ID)
		}
		if r.Header.Get("Content-Type") != "application/cloudevents+json; charset=utf-8" || r.Event.SpecVersion != "1.0" {
			t.Errorf("%s: not a structured CloudEvent: %s", r.Event.ID, r.Header.Get("Content-Type"))
		}
	}
	if len(ids) != 3 {
		t.Errorf("ids %v: want three distinct", ids)
	}

	// The other sinks, each through its filter.
	ctx, cancel := context.WithTimeout(context.Background(), deliverWithin)
	defer cancel()
	chat, err := slack.WaitFor(ctx, func(r []receiver.Request) bool { return len(r) >= 2 })
	if err != nil || len(chat) != 2 || !strings.Contains(string(chat[0].Body), "is going away") || !strings.Contains(string(chat[1].Body), "drained in") {
		t.Errorf("Slack got %d messages (%v): %s", len(chat), err, bodies(chat))
	}
	rendered, err := tmpl.WaitFor(ctx, func(r []receiver.Request) bool { return len(r) >= 3 })
	if err != nil {
		t.Errorf("template sink: %v", err)
	}
	var kinds []string
	for _, r := range rendered {
		var v struct{ Node, Kind, ID string }
		if err := json.Unmarshal(r.Body, &v); err != nil || v.Node != n.name || !ids[v.ID] || r.Answered != http.StatusOK {
			t.Errorf("template body %s (answered %d): %v", r.Body, r.Answered, err)
		}
		kinds = append(kinds, v.Kind)
	}
	if fmt.Sprint(kinds) != fmt.Sprint(markedDrainedWithdrawn) {
		t.Errorf("template sink got %v (the pool=web sink shares its receiver and must get nothing)", kinds)
	}

	lat := latencies(t, w, n.name, got)
	if len(lat) != 3 {
		t.Errorf("latencies %v: want one per kind", lat)
	}
	logs := notifier.Log()
	for _, secret := range []string{secretPath(t, events), secretPath(t, slack), hmacKey} {
		if strings.Contains(logs, secret) {
			t.Errorf("the notifier's log (%s) holds a secret", notifier.LogPath())
		}
	}
	for _, want := range []string{`termgate_notifier_sent_total{result="delivered",sink="events"} 3`, `termgate_notifier_leader 1`,
		`termgate_notifier_delivery_latency_seconds_count{sink="events"} 3`, `termgate_notifier_queue_depth{sink="events"} 0`} {
		testenv.Eventually(t, deliverWithin, "metric "+want, func(context.Context) (bool, string, error) {
			metrics, err := notifier.Metrics()
			return strings.Contains(metrics, want), "", err
		})
	}
}

func bodies(reqs []receiver.Request) string {
	var b strings.Builder
	for _, r := range reqs {
		b.Write(r.Body)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestAReceiverFailingFor20sGetsEverythingInOrderAfterRecovery(t *testing.T) {
	freshNotifierState(t)
	const outage = 20 * time.Second
	var mu sync.Mutex
	var first time.Time
	recoverAt := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return first.Add(outage)
	}
	r := startReceiver(t, func(_ *http.Request, _ int) (int, http.Header, bool) {
		mu.Lock()
		if first.IsZero() {
			first = time.Now()
		}
		failing := time.Since(first) < outage
		mu.Unlock()
		if failing {
			return http.StatusServiceUnavailable, nil, false
		}
		return http.StatusOK, nil, false
	})
	a, b := newNode(t, nil), newNode(t, nil)
	workload(t, a, 2, 0)
	workload(t, b, 2, 0)
	startNotifier(t, "notifier-a", sinkConfig(""), map[string]string{"events": r.URL})

	// Two preemptions and their withdrawals, all during the outage.
	a.md.SetPreempted(true)
	waitForEvent(t, a.name, nodemark.EventDrainCompleted, markWithin+deliverWithin)
	b.md.SetPreempted(true)
	waitForEvent(t, b.name, nodemark.EventDrainCompleted, markWithin+deliverWithin)
	a.md.SetPreempted(false)
	b.md.SetPreempted(false)
	waitForEvent(t, b.name, nodemark.EventTerminationCancelled, markWithin+deliverWithin)
	if time.Now().After(recoverAt()) {
		t.Fatalf("the notices took longer than the outage; the test proves nothing")
	}

	// After recovery: the sink's longest backoff (5s), then one request
	// each.
	budget := time.Until(recoverAt()) + 5*time.Second + deliverWithin
	waitTypes(t, r, a.name, budget, markedDrainedWithdrawn...)
	waitTypes(t, r, b.name, deliverWithin, markedDrainedWithdrawn...)
	all := r.Accepted()
	expectEachIDOnce(t, r.Requests())
	if all[0].At.Before(recoverAt()) {
		t.Errorf("accepted at %s, before the outage ended at %s", all[0].At, recoverAt())
	}
	// In order of occurrence: each node's own order (above), and across
	// nodes the order they happened in.
	var order []string
	for _, q := range all {
		order = append(order, strings.TrimPrefix(q.Event.Subject, "node/")+" "+strings.TrimPrefix(q.Event.Type, notification.TypePrefix))
	}
	var occurred []time.Time
	for _, q := range all {
		occurred = append(occurred, data(t, q).OccurredAt)
	}
	for i := 1; i < len(occurred); i++ {
		if occurred[i].Before(occurred[i-1]) {
			t.Errorf("arrived out of order of occurrence: %v (occurred %v)", order, occurred)
			break
		}
	}
	retried := 0
	for _, q := range r.Requests() {
		if q.Answered == http.StatusServiceUnavailable {
			retried++
		}
	}
	t.Logf("%d requests refused with 503 during the %s outage; all %d notifications accepted %s after it ended",
		retried, outage, len(all), all[len(all)-1].At.Sub(recoverAt()).Round(time.Millisecond))
}

// waitForEvent waits for the agent's event reason on node.
func waitForEvent(t *testing.T, node, reason string, budget time.Duration) time.Time {
	t.Helper()
	var at time.Time
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	for {
		list, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node + ",reason=" + reason,
		})
		if err == nil && len(list.Items) > 0 {
			at = list.Items[0].CreationTimestamp.Time
			return at
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no %s event on %s within %s", reason, node, budget)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
