package drain

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/nodemark"
)

var cutoff = testMark.Deadline.Add(-DefaultSystemGrace)

func TestWavesGoInOrderAndSpareKeptMirrorAndFinishedPods(t *testing.T) {
	k := newKit(t,
		pod("web-1"), pod("web-2"),
		pod("dns", inNamespace("kube-system")),
		pod("agent", fromDaemonSet),
		pod("late", withOrder("system")),
		pod("early", inNamespace("kube-system"), withOrder("regular")),
		pod("sidecar", tolerating()),
		pod("static", mirror),
		pod("job", finished),
		pod("elsewhere", onNode("node-b")),
	)
	res, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
	expectNoError(t, err)
	k.expectWithinDeadline(testMark)

	calls := k.allCalls()
	if got, want := names(calls), []string{"agent", "dns", "early", "late", "web-1", "web-2"}; !slices.Equal(got, want) {
		t.Fatalf("evicted %v, want %v", got, want)
	}
	lastRegular, firstSystem := -1, len(calls)
	for i, c := range calls {
		if c.verb != "evict" {
			t.Errorf("%s got %s, want only evictions", c.name, c.verb)
		}
		switch c.name {
		case "web-1", "web-2", "early":
			lastRegular = max(lastRegular, i)
		default:
			firstSystem = min(firstSystem, i)
		}
	}
	if lastRegular > firstSystem {
		t.Errorf("a system pod was evicted before the last regular pod: %v", calls)
	}
	if s := res.Started[StepEvictSystem]; s >= cutoff.Sub(notice) {
		t.Errorf("system wave started %s after the notice; with the regular wave gone it should not wait for the cut-off", s)
	}
	if res.Started[StepEvictRegular] != 0 {
		t.Errorf("regular wave started %s after the notice, want at once", res.Started[StepEvictRegular])
	}
	want := Result{Evicted: 6, Kept: 1, Skipped: 2}
	if res.Evicted != want.Evicted || res.Kept != want.Kept || res.Skipped != want.Skipped || res.Remaining != 0 || res.Deleted != 0 {
		t.Errorf("result %+v, want %+v", res, want)
	}
	left := k.pods()
	for _, name := range []string{"sidecar", "static", "job", "elsewhere"} {
		if _, ok := left[name]; !ok {
			t.Errorf("%s was removed; it should have been left alone", name)
		}
	}
	events := k.events()
	for _, reason := range []string{nodemark.EventDrainWaveStarted, nodemark.EventDrainCompleted} {
		if !hasEvent(events, reason) {
			t.Errorf("no %s event in %v", reason, events)
		}
	}
}

func TestEvictionsCarryTheUIDPreconditionAndAGraceThatFitsTheWindow(t *testing.T) {
	k := newKit(t, pod("slow", withGrace(600)), pod("quick", withGrace(10)))
	_, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
	expectNoError(t, err)
	k.expectWithinDeadline(testMark)

	slow, quick := k.callsFor("slow"), k.callsFor("quick")
	if len(slow) != 1 || len(quick) != 1 {
		t.Fatalf("calls slow=%v quick=%v, want one eviction each", slow, quick)
	}
	if slow[0].uid != "slow-uid" || quick[0].uid != "quick-uid" {
		t.Errorf("preconditions %q and %q, want the pods' UIDs", slow[0].uid, quick[0].uid)
	}
	if g := slow[0].grace; g == nil || *g < 29 || *g > 30 {
		t.Errorf("a pod with 600s of grace in a 30s window was evicted with grace %v, want the time left", g)
	}
	if quick[0].grace != nil {
		t.Errorf("a pod whose grace fits the window was evicted with grace %d, want its own", *quick[0].grace)
	}
}

func TestRefusedEvictionsAreRetriedWithBackoff(t *testing.T) {
	cases := []struct {
		name        string
		errs        []error
		want429     int
		wantRetried int
	}{
		{"a pod refused twice by its disruption budget is evicted on the third try",
			[]error{pdbRefusal(), pdbRefusal()}, 2, 0},
		{"server errors are retried like refusals",
			[]error{apierrors.NewInternalError(errors.New("etcd hiccup")), apierrors.NewServiceUnavailable("restarting")}, 0, 2},
		{"more than one disruption budget (500) is retried",
			[]error{apierrors.NewInternalError(errors.New("This pod has more than one PodDisruptionBudget"))}, 0, 1},
		{"a conflict while the same pod is still there is retried, not taken as gone",
			[]error{apierrors.NewConflict(schema.GroupResource{Resource: "poddisruptionbudgets"}, "budget", errors.New("changed"))}, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := newKit(t, pod("web"), pod("dns", inNamespace("kube-system")))
			for _, err := range tc.errs {
				k.hook("web", fail(err))
			}
			res, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
			expectNoError(t, err)
			k.expectWithinDeadline(testMark)

			calls := k.callsFor("web")
			if len(calls) != len(tc.errs)+1 {
				t.Fatalf("%d eviction requests for web, want %d", len(calls), len(tc.errs)+1)
			}
			for i := 1; i < len(calls); i++ {
				// Jitter keeps each delay in the upper half of base*2^n.
				min := DefaultBackoffBase << (i - 1) / 2
				if gap := calls[i].at.Sub(calls[i-1].at); gap < min {
					t.Errorf("retry %d came %s after the previous try, want at least %s", i, gap, min)
				}
			}
			if res.Retried429 != tc.want429 || res.RetriedErr != tc.wantRetried || res.Evicted != 2 {
				t.Errorf("result %+v, want %d refusals, %d other retries, 2 evictions", res, tc.want429, tc.wantRetried)
			}
			dns, _ := firstCall(k.callsFor("dns"), "evict")
			if dns.at.Before(calls[len(calls)-1].at) {
				t.Errorf("system pod evicted at %s, before the regular pod left at %s", dns.at.Sub(notice), calls[len(calls)-1].at.Sub(notice))
			}
		})
	}
}

func TestAGonePodCountsAsDone(t *testing.T) {
	cases := []struct {
		name string
		// vanish acts inside the API server just before the first eviction.
		vanish func(k *kit) hook
		// wantEvicted lists the UIDs evicted, in order.
		wantUIDs []types.UID
	}{
		{"a pod deleted meanwhile (404) is not retried", func(k *kit) hook {
			return func(p *corev1.Pod) error { return k.client.Tracker().Delete(podsGVR, p.Namespace, p.Name) }
		}, []types.UID{"web-uid"}},
		{"a pod replaced under its name (409 on the UID) is done, and the replacement is evicted in turn", func(k *kit) hook {
			// One update, so that the cache never sees the name free.
			return func(p *corev1.Pod) error {
				p.UID = "web-uid-2"
				return k.client.Tracker().Update(podsGVR, p, p.Namespace)
			}
		}, []types.UID{"web-uid", "web-uid-2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := newKit(t, pod("web"))
			k.hook("web", tc.vanish(k))
			res, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
			expectNoError(t, err)
			var uids []types.UID
			for _, c := range k.callsFor("web") {
				uids = append(uids, c.uid)
			}
			if !slices.Equal(uids, tc.wantUIDs) {
				t.Errorf("evictions with UIDs %v, want %v", uids, tc.wantUIDs)
			}
			if res.Gone != 1 || res.RetriedErr != 0 {
				t.Errorf("result %+v, want one gone and no retries", res)
			}
		})
	}
}

func TestBlockedPodsAreDeletedAtTheirCutoffWithGraceClampedToTheDeadline(t *testing.T) {
	k := newKit(t,
		pod("web", withGrace(30)),
		pod("quick", withGrace(3)),
		pod("dns", inNamespace("kube-system"), withGrace(30)),
	)
	for _, n := range []string{"web", "quick", "dns"} {
		k.blocked[n] = true
		k.graceful[n] = true
	}
	reg, metrics := newTestMetrics(t)
	res, err := k.drive(k.drainer(Config{Metrics: metrics}), testMark, runOpts{})
	// Clamped deletes end at the deadline itself, so Run may still see them
	// at that instant; they must then be due to go by it.
	if err != nil {
		expectDeadlinePassed(t, err)
		for name, p := range k.pods() {
			if !terminating(p) || p.DeletionTimestamp.After(testMark.Deadline.Add(clockSkew)) {
				t.Errorf("%s is still there at the deadline and not about to go", name)
			}
		}
	}
	k.expectWithinDeadline(testMark)

	systemCutoff := testMark.Deadline.Add(-DefaultSystemEscalateBefore)
	for _, tc := range []struct {
		pod      string
		notAfter time.Time
		minGrace int64
		maxGrace int64
	}{
		{"web", cutoff, 9, 10},
		{"quick", cutoff, 3, 3},
		{"dns", systemCutoff, 4, 5},
	} {
		del, ok := firstCall(k.callsFor(tc.pod), "delete")
		if !ok {
			t.Errorf("%s was never deleted", tc.pod)
			continue
		}
		if del.at.Before(tc.notAfter) {
			t.Errorf("%s deleted at %s, before its cut-off %s", tc.pod, del.at.Sub(notice), tc.notAfter.Sub(notice))
		}
		if g := *del.grace; g < tc.minGrace || g > tc.maxGrace {
			t.Errorf("%s deleted with grace %ds, want %d..%d", tc.pod, g, tc.minGrace, tc.maxGrace)
		}
		if del.uid != types.UID(tc.pod+"-uid") {
			t.Errorf("%s deleted without its UID precondition", tc.pod)
		}
	}
	dns, _ := firstCall(k.callsFor("dns"), "evict")
	if dns.at.Before(cutoff) {
		t.Errorf("system wave started at %s while regular pods were still there; want the cut-off %s", dns.at.Sub(notice), cutoff.Sub(notice))
	}
	if res.Deleted != 3 || res.Started[StepEscalateRegular] < cutoff.Sub(notice) || res.Started[StepEscalateSystem] < systemCutoff.Sub(notice) {
		t.Errorf("result %+v, want 3 deletes at the cut-offs", res)
	}
	if got := counterValue(t, reg, "termgate_drain_pods_escalated_total", "wave", "regular"); got != 2 {
		t.Errorf("escalated regular pods metric %v, want 2", got)
	}
	if got := counterValue(t, reg, "termgate_drain_evictions_total", "result", "blocked"); got < 3 {
		t.Errorf("blocked evictions metric %v, want at least 3", got)
	}
	if !hasEvent(k.events(), nodemark.EventDrainEscalated) {
		t.Error("no escalation event on the node")
	}
}

func TestPodsBeingDeletedAreNotEvictedAgain(t *testing.T) {
	cases := []struct {
		name string
		pod  *corev1.Pod
		// wantEnd is when the pod's deletion must end; zero means untouched.
		wantShortened bool
	}{
		{"a pod with a huge grace period is shortened at the cut-off to end by the deadline",
			pod("hog", beingDeleted(notice.Add(-time.Minute), 3600)), true},
		{"a pod whose deletion ends before the deadline is left alone",
			pod("hog", beingDeleted(notice, 15)), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := newKit(t, tc.pod)
			k.stuck["hog"] = true
			res, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
			expectDeadlinePassed(t, err)
			k.expectWithinDeadline(testMark)
			if over := k.clk.Now().Sub(testMark.Deadline); over > 2*tick {
				t.Errorf("Run returned %s after the deadline; a stuck pod must not hold it", over)
			}
			calls := k.callsFor("hog")
			if _, evicted := firstCall(calls, "evict"); evicted {
				t.Error("a pod already being deleted was evicted again")
			}
			if !tc.wantShortened {
				if len(calls) != 0 {
					t.Errorf("calls %v, want none", calls)
				}
				return
			}
			if len(calls) != 1 || calls[0].at.Before(cutoff) {
				t.Fatalf("calls %v, want one delete at the cut-off", calls)
			}
			hog := k.pods()["hog"]
			if hog.DeletionTimestamp.After(testMark.Deadline) {
				t.Errorf("deletion still ends at %s, after the deadline", hog.DeletionTimestamp.Sub(notice))
			}
			if res.Remaining != 1 || res.Deleted != 1 {
				t.Errorf("result %+v, want the stuck pod remaining after one delete", res)
			}
		})
	}
}

func TestDelayedPodsAreEvictedWhenTheirTolerationEnds(t *testing.T) {
	k := newKit(t,
		pod("web"),
		pod("cache", tolerating(5)),
		pod("patient", tolerating(100)),
		pod("dns", inNamespace("kube-system")),
	)
	k.blocked["patient"] = true
	res, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
	expectNoError(t, err)
	k.expectWithinDeadline(testMark)

	cache := k.callsFor("cache")
	if len(cache) != 1 || cache[0].at.Before(notice.Add(5*time.Second)) || cache[0].at.After(notice.Add(6*time.Second)) {
		t.Fatalf("cache calls %v, want one eviction 5s after the notice", cache)
	}
	patient := k.callsFor("patient")
	if len(patient) == 0 || patient[0].verb != "delete" || patient[0].at.Before(cutoff) {
		t.Errorf("patient calls %v: a toleration longer than the window ends at the cut-off, where it is deleted", patient)
	}
	dns, _ := firstCall(k.callsFor("dns"), "evict")
	if dns.at.Before(cache[0].at) {
		t.Errorf("system wave started at %s, before the delayed pod left", dns.at.Sub(notice))
	}
	if res.Started[StepEvictDelayed] < 5*time.Second {
		t.Errorf("delayed step started at %s, want 5s", res.Started[StepEvictDelayed])
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	k := newKit(t, pod("web"), pod("blocked"), pod("dns", inNamespace("kube-system")))
	k.blocked["blocked"] = true
	before := k.pods()
	res, err := k.drive(k.drainer(Config{DryRun: true}), testMark, runOpts{})
	expectDeadlinePassed(t, err)
	k.expectWithinDeadline(testMark)

	for _, c := range k.allCalls() {
		if !c.dryRun {
			t.Errorf("%s %s sent without dryRun=All", c.verb, c.name)
		}
	}
	if len(k.callsFor("web")) != 2 {
		t.Errorf("web calls %v, want one eviction and one delete at the cut-off", k.callsFor("web"))
	}
	after := k.pods()
	for name, p := range before {
		if q, ok := after[name]; !ok || q.ResourceVersion != p.ResourceVersion || q.DeletionTimestamp != nil {
			t.Errorf("pod %s changed in a dry run", name)
		}
	}
	if res.Remaining != 3 {
		t.Errorf("remaining %d, want all 3 pods", res.Remaining)
	}
}

func TestARestartedDrainResumesAndMeetsTheDeadline(t *testing.T) {
	k := newKit(t,
		pod("web", withGrace(8)),
		pod("db"),
		pod("dns", inNamespace("kube-system"), withGrace(3)),
	)
	k.graceful["web"], k.graceful["dns"] = true, true
	k.blocked["db"] = true
	stop := notice.Add(5 * time.Second)
	first, err := k.drive(k.drainer(Config{}), testMark, runOpts{stopAt: stop})
	if err == nil || errors.Is(err, ErrDeadlinePassed) {
		t.Fatalf("first run ended with %v, want cancellation", err)
	}
	if first.Evicted != 1 || first.Remaining != 3 {
		t.Fatalf("first run %+v, want web evicted and all three pods present", first)
	}

	second, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
	expectNoError(t, err)
	k.expectWithinDeadline(testMark)
	if web := k.callsFor("web"); len(web) != 1 {
		t.Errorf("web calls %v: a pod already terminating must not be evicted again", web)
	}
	if del, ok := firstCall(k.callsFor("db"), "delete"); !ok || del.at.Before(cutoff) {
		t.Errorf("db calls %v, want a delete at the cut-off after the restart", k.callsFor("db"))
	}
	if second.Remaining != 0 || second.Deleted != 1 {
		t.Errorf("second run %+v, want db deleted and nothing left", second)
	}
}

func TestARunAfterTheDeadlineReturnsAtOnce(t *testing.T) {
	k := newKit(t, pod("web"))
	k.clk.SetTime(testMark.Deadline.Add(time.Second))
	res, err := k.drainer(Config{}).Run(t.Context(), testMark)
	expectDeadlinePassed(t, err)
	if len(k.allCalls()) != 0 || res.Remaining != 1 {
		t.Errorf("calls %v and result %+v, want nothing sent and one pod remaining", k.allCalls(), res)
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	k := newKit(t)
	cases := []struct {
		name string
		cfg  Config
		mark nodemark.Mark
	}{
		{"a mark without a deadline is refused", Config{}, nodemark.Mark{NoticeTime: notice}},
		{"a deadline before the notice is refused", Config{}, nodemark.Mark{NoticeTime: notice, Deadline: notice.Add(-time.Second)}},
		{"a config with negative concurrency is refused", Config{Concurrency: -1}, testMark},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := k.drainer(tc.cfg).Run(t.Context(), tc.mark); err == nil {
				t.Error("Run accepted it")
			}
		})
	}
}

func TestManyPodsAreEvictedInParallel(t *testing.T) {
	var pods []*corev1.Pod
	for i := range 110 {
		pods = append(pods, pod("web-"+string(rune('a'+i/26))+string(rune('a'+i%26))))
	}
	k := newKit(t, pods...)
	res, err := k.drainer(Config{}).Run(t.Context(), testMark)
	expectNoError(t, err)
	if res.Evicted != 110 {
		t.Errorf("evicted %d, want 110", res.Evicted)
	}
	for _, c := range k.allCalls() {
		if c.at != notice {
			t.Fatalf("%s evicted at %s; all regular pods should go at once", c.name, c.at.Sub(notice))
		}
	}
}

// TestHurryWakesTheDrainOnceNotForever: a Hurry wakes a waiting drain so it
// moves its cut-offs, and the drain then waits again. A wake channel left
// closed would make every later wait return at once: the drain would spin
// through the rest of the grace period on a node that is shutting down.
func TestHurryWakesTheDrainOnceNotForever(t *testing.T) {
	d := newKit(t).drainer(Config{})
	isClosed := func(c <-chan struct{}) bool {
		select {
		case <-c:
			return true
		default:
			return false
		}
	}
	_, before := d.exitTime()
	exit := notice.Add(20 * time.Second)
	d.Hurry(exit)
	if !isClosed(before) {
		t.Fatal("a Hurry did not wake the drain")
	}
	got, next := d.exitTime()
	if !got.Equal(exit) {
		t.Fatalf("exit time %v, want %v", got, exit)
	}
	if isClosed(next) {
		t.Fatal("after a Hurry the drain's next wait would return at once")
	}
	d.Hurry(exit.Add(time.Second))
	if isClosed(next) {
		t.Fatal("a later exit time woke the drain")
	}
	d.Hurry(exit.Add(-time.Second))
	if !isClosed(next) {
		t.Fatal("an earlier exit time did not wake the drain")
	}
}

func TestAWaveOfOnePodSaysOnePod(t *testing.T) {
	k := newKit(t, pod("only"))
	_, err := k.drive(k.drainer(Config{}), testMark, runOpts{})
	expectNoError(t, err)
	var wave string
	for _, e := range k.events() {
		if strings.Contains(e, " "+nodemark.EventDrainWaveStarted+" ") && strings.Contains(e, string(StepEvictRegular)) {
			wave = e
		}
	}
	if !strings.Contains(wave, "evicting 1 pod, ") {
		t.Errorf("regular wave event %q, want it to say \"evicting 1 pod\"", wave)
	}
}
