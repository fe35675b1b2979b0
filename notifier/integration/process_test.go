package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/receiver"
	"termgate.dev/termgate/test/testenv"
)

// agentTimes is what the agent did on one preemption, by the test's clock
// and the agent's.
type agentTimes struct {
	// mark: from the notice (the test flipping instance/preempted) to the
	// mark seen on the Node; evict: from the notice to the first wave's
	// first eviction (the agent's step time); drain: the drain's own
	// duration; ended: when it ended.
	mark, evict, drain time.Duration
	ended              time.Time
}

func preemptAndMeasure(t *testing.T, w *written, n *node) agentTimes {
	t.Helper()
	began := time.Now()
	n.md.SetPreempted(true)
	testenv.Eventually(t, markWithin, "the mark on "+n.name, func(context.Context) (bool, string, error) {
		_, ok := w.at(n.name, notification.KindMarked)
		return ok, "not marked", nil
	})
	marked, _ := w.at(n.name, notification.KindMarked)
	var at agentTimes
	at.mark = marked.Sub(began)
	waitForEvent(t, n.name, nodemark.EventDrainCompleted, drainWithin)
	list, err := env.Client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + n.name})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list.Items {
		switch e.Reason {
		case nodemark.EventDrainCompleted:
			sum, err := nodemark.ParseDrainSummary(e.Annotations[nodemark.EventAnnotationDrainSummary])
			if err != nil {
				t.Fatal(err)
			}
			at.drain, at.ended = time.Duration(sum.DurationMillis)*time.Millisecond, sum.EndedAt
		case nodemark.EventDrainWaveStarted:
			if step, err := time.Parse(time.RFC3339Nano, e.Annotations[nodemark.EventAnnotationStepTime]); err == nil && (at.evict == 0 || step.Sub(began) < at.evict) {
				at.evict = step.Sub(began)
			}
		}
	}
	if at.evict == 0 || at.evict > markWithin {
		t.Errorf("%s: first eviction %s after the notice, want within %s", n.name, at.evict, markWithin)
	}
	return at
}

func TestAHangingReceiverNeverDelaysAMarkOrAnEviction(t *testing.T) {
	freshNotifierState(t)
	w := watchWritten(t)
	// Without: the agent alone.
	alone := newNode(t, nil)
	workload(t, alone, 5, 0)
	without := preemptAndMeasure(t, w, alone)

	// With: the notifier running, its receiver holding every request open
	// until the notifier gives up on it.
	r := startReceiver(t, func(*http.Request, int) (int, http.Header, bool) { return 0, nil, true })
	startNotifier(t, "notifier-a", sinkConfig(""), map[string]string{"events": r.URL})
	watched := newNode(t, nil)
	workload(t, watched, 5, 0)
	with := preemptAndMeasure(t, w, watched)

	t.Logf("agent alone:                notice to mark %s, to first eviction %s, drain %s", without.mark.Round(time.Millisecond), without.evict.Round(time.Millisecond), without.drain)
	t.Logf("notifier, hanging receiver: notice to mark %s, to first eviction %s, drain %s", with.mark.Round(time.Millisecond), with.evict.Round(time.Millisecond), with.drain)
	// The drain was over while the receiver still held the notifier's
	// first request: nothing of the agent's waited for it.
	var held bool
	for _, q := range r.Requests() {
		if q.Event.Subject == "node/"+watched.name && q.Event.Type == notification.TypePrefix+string(notification.KindMarked) &&
			q.At.Before(with.ended) && (q.Ended.IsZero() || q.Ended.After(with.ended)) {
			held = true
		}
	}
	if !held {
		t.Errorf("no request about %s was hanging when its drain ended at %s: %+v", watched.name, with.ended, r.Requests())
	}
}

func TestANotifierKilledMidDrainSendsWhatItMissedOnce(t *testing.T) {
	freshNotifierState(t)
	r := startReceiver(t, nil)
	n := newNode(t, nil)
	workload(t, n, 3, 1) // the guarded pod holds the drain until its cut-off
	urls := map[string]string{"events": r.URL}
	first := startNotifier(t, "notifier-a", sinkConfig(""), urls)
	n.md.SetPreempted(true)
	got := waitTypes(t, r, n.name, markWithin+deliverWithin, notification.KindMarked)
	waitSettled(t, "events", got[0].Event.ID)
	first.Kill()
	killed := time.Now()

	waitForEvent(t, n.name, nodemark.EventDrainCompleted, drainWithin)
	list, err := env.Client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + n.name + ",reason=" + nodemark.EventDrainCompleted,
	})
	if err != nil || len(list.Items) == 0 {
		t.Fatal(err)
	}
	sum, err := nodemark.ParseDrainSummary(list.Items[0].Annotations[nodemark.EventAnnotationDrainSummary])
	if err != nil {
		t.Fatal(err)
	}
	if !sum.EndedAt.After(killed) {
		t.Fatalf("the drain ended at %s, before the kill at %s: not a kill mid-drain", sum.EndedAt, killed)
	}
	if len(eventsOf(r.Requests(), n.name)) != 1 {
		t.Fatalf("requests while the notifier was down: %v", types(eventsOf(r.Requests(), n.name)))
	}

	// The container restarts in its pod: same name, so it takes its own
	// Lease back at once.
	startNotifierLogged(t, "notifier-a", "notifier-a-restarted", sinkConfig(""), urls)
	waitTypes(t, r, n.name, deliverWithin, markedDrained...)
	n.md.SetPreempted(false)
	waitTypes(t, r, n.name, markWithin+deliverWithin, markedDrainedWithdrawn...)
	// Not one id twice, counting every request, not only accepted ones.
	seen := map[string]int{}
	for _, q := range r.Requests() {
		seen[q.Event.ID]++
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("id %s sent %d times", id, c)
		}
	}
}

// leaseHolder returns the identity holding the notifier's Lease.
func leaseHolder(ctx context.Context) (string, error) {
	l, err := env.Client.CoordinationV1().Leases(localrun.NotifierNamespace).Get(ctx, localrun.NotifierLease, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if l.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *l.Spec.HolderIdentity, nil
}

func TestLeaderFailoverBetweenTwoReplicas(t *testing.T) {
	freshNotifierState(t)
	const lease, renew, retry = 4 * time.Second, 3 * time.Second, 500 * time.Millisecond
	flags := []string{"--leader-election-lease-duration=" + lease.String(), "--leader-election-renew-deadline=" + renew.String(), "--leader-election-retry-period=" + retry.String()}
	r := startReceiver(t, nil)
	urls := map[string]string{"events": r.URL}
	replicas := map[string]*localrun.Notifier{
		"notifier-a": startNotifier(t, "notifier-a", sinkConfig(""), urls, flags...),
		"notifier-b": startNotifier(t, "notifier-b", sinkConfig(""), urls, flags...),
	}
	var leader string
	testenv.Eventually(t, lease+retry, "a leader", func(ctx context.Context) (bool, string, error) {
		h, err := leaseHolder(ctx)
		if apierrors.IsNotFound(err) {
			return false, "no Lease", nil
		}
		leader = h
		return replicas[h] != nil, "holder " + h, err
	})
	first, second := newNode(t, nil), newNode(t, nil)
	workload(t, first, 2, 1) // its drain outlives the leader
	first.md.SetPreempted(true)
	marked := waitTypes(t, r, first.name, markWithin+deliverWithin, notification.KindMarked)
	waitSettled(t, "events", marked[0].Event.ID)

	replicas[leader].Kill()
	killed := time.Now()
	second.md.SetPreempted(true)
	// The standby takes over once the Lease expires.
	takeover := lease + retry + deliverWithin
	got := waitTypes(t, r, second.name, takeover, notification.KindMarked)
	waitTypes(t, r, second.name, drainWithin, markedDrained...)
	waitTypes(t, r, first.name, drainWithin, markedDrained...)
	h, err := leaseHolder(context.Background())
	if err != nil || h == leader || replicas[h] == nil {
		t.Errorf("Lease held by %q after %s was killed (%v)", h, leader, err)
	}
	t.Logf("leader %s killed; %s delivered the next notification %s later", leader, h, got[0].At.Sub(killed).Round(time.Millisecond))
	expectEachIDOnce(t, r.Requests())
	for id, c := range countIDs(r.Requests()) {
		if c != 1 {
			t.Errorf("id %s sent %d times by the two replicas", id, c)
		}
	}

	// A graceful stop (a rollout, a drain of its node) gives the Lease up
	// at once: a standby leads within a retry period, not a lease duration.
	standby := startNotifier(t, "notifier-c", sinkConfig(""), urls, flags...)
	third := newNode(t, nil)
	if err := replicas[h].Terminate(); err != nil {
		t.Fatal(err)
	}
	<-replicas[h].Done()
	stopped := time.Now()
	third.md.SetPreempted(true)
	got = waitTypes(t, r, third.name, markWithin+retry+deliverWithin, notification.KindMarked)
	took := got[0].At.Sub(stopped)
	t.Logf("%s stopped by SIGTERM; %s delivered the next notification %s later", h, standby.Name, took.Round(time.Millisecond))
	if holder, err := leaseHolder(context.Background()); err != nil || holder != standby.Name {
		t.Errorf("Lease held by %q after %s stopped (%v), want %s", holder, h, err, standby.Name)
	}
	if took >= lease {
		t.Errorf("the standby took %s to deliver, not less than the lease duration %s: the Lease was not released", took, lease)
	}
}

func countIDs(reqs []receiver.Request) map[string]int {
	seen := map[string]int{}
	for _, q := range reqs {
		seen[q.Event.ID]++
	}
	return seen
}

func TestATemplateThatReadsTheEnvironmentIsRefusedAtStart(t *testing.T) {
	freshNotifierState(t)
	for name, template := range map[string]string{
		"env":   `{"home": "{{ env "HOME" }}"}`,
		"field": `{"home": {{ json .Env.HOME }}}`,
	} {
		t.Run(name, func(t *testing.T) {
			config := fmt.Sprintf("sinks:\n- name: ops\n  format: template\n  template: %q\n", template)
			n, err := localrun.StartNotifier(context.Background(), localrun.NotifierSpec{
				Binary: binary, Dir: env.Dir, Kubeconfig: notifierKubeconfig, Name: "notifier-refused-" + name, Config: config, NoWait: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Stop()
			// It stops before it builds a client: no API call to wait for.
			select {
			case <-n.Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("the notifier still runs with a template that reads the environment (log: %s)", n.LogPath())
			}
			if err := n.Exited(); err == nil || !strings.Contains(err.Error(), "exit status 1") {
				t.Errorf("exit: %v, want status 1", err)
			}
			log := n.Log()
			if !strings.Contains(log, `sink "ops": template refused`) || !strings.Contains(log, "cannot read the environment or files") {
				t.Errorf("the log does not say why:\n%s", log)
			}
			if _, err := leaseHolder(context.Background()); !apierrors.IsNotFound(err) {
				t.Errorf("the refused notifier took part in the election: %v", err)
			}
		})
	}
}
