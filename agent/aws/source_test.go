package aws_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/aws"
	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/ec2fake"
)

// follower runs the real source, with the SDK's client, against a fake.
type follower struct {
	t       *testing.T
	md      *ec2fake.Server
	src     *aws.Source
	metrics *notice.Metrics
	cfg     aws.Config
	out     chan notice.Reading
	last    notice.Reading
}

const interval = 100 * time.Millisecond

func follow(t *testing.T, prepare func(*ec2fake.Server)) *follower {
	t.Helper()
	md, err := ec2fake.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = md.Close() })
	if prepare != nil {
		prepare(md)
	}
	m, err := notice.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cfg := aws.DefaultConfig()
	cfg.Endpoint, cfg.PollInterval = md.Endpoint(), interval
	f := &follower{t: t, md: md, metrics: m, cfg: cfg, src: aws.New(clock.RealClock{}, cfg, m), out: make(chan notice.Reading, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.src.Run(ctx, f.out) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// await reads readings until want holds. A change shows within one poll
// interval and one read (retries included) of happening.
func (f *follower) await(what string, want func(notice.Reading) bool) notice.Reading {
	f.t.Helper()
	limit := time.After(3*f.cfg.PollInterval + 2*f.cfg.ReadTimeout)
	for {
		if !f.last.At.IsZero() && want(f.last) {
			return f.last
		}
		select {
		case f.last = <-f.out:
		case <-limit:
			f.t.Fatalf("%s: not seen; last reading %+v; fake saw %+v", what, f.last, f.md.Stats())
		}
	}
}

func hasNotice(id string) func(notice.Reading) bool {
	return func(r notice.Reading) bool { _, ok := r.Find(id); return ok }
}

func TestASpotInterruptionIsANoticeWithItsOwnTime(t *testing.T) {
	f := follow(t, nil)
	r := f.await("every path read", func(r notice.Reading) bool { return r.Complete() })
	if len(r.Notices) != 0 || f.src.Ready() != nil {
		t.Fatalf("quiet instance: %+v, ready %v", r, f.src.Ready())
	}
	at := time.Now().Add(2 * time.Minute).Truncate(time.Second)
	f.md.SetInstanceAction("terminate", at)
	r = f.await("the interruption", hasNotice(aws.PathInstanceAction))
	n, _ := r.Find(aws.PathInstanceAction)
	if n.Reason != nodemark.ReasonPreempted || n.Impact != notice.ImpactTerminate || !n.NotBefore.Equal(at) || n.AtFirstRead || n.Withdrawable {
		t.Fatalf("got %+v, want a Spot termination at %s seen while running", n, at)
	}
	f.md.SetInstanceAction("stop", at)
	r = f.await("the action changed", func(r notice.Reading) bool {
		n, _ := r.Find(aws.PathInstanceAction)
		return n.Impact == notice.ImpactRestart
	})
	if st := f.md.Stats(); st.WithoutToken != 0 || st.Unauthorized != 0 {
		t.Errorf("the client read without a valid token: %+v", st)
	}
}

// IMDSv2 only: when tokens are refused (IMDS off, or a hop too many) the
// paths are never read without one, and nothing counts as read.
func TestRefusedTokensNeverFallBackToIMDSv1(t *testing.T) {
	f := follow(t, func(md *ec2fake.Server) {
		md.RefuseTokens(-1)
		md.SetInstanceAction("terminate", time.Now().Add(time.Minute))
	})
	deadline := time.Now().Add(5 * f.cfg.PollInterval)
	for time.Now().Before(deadline) {
		select {
		case r := <-f.out:
			t.Fatalf("a reading without a token: %+v", r)
		case <-time.After(f.cfg.PollInterval):
		}
	}
	st := f.md.Stats()
	if st.TokensRefused == 0 || st.WithoutToken != 0 || len(st.Reads) != 0 {
		t.Fatalf("fake saw %+v: want refused token PUTs and no read without a token", st)
	}
	if f.src.Ready() == nil {
		t.Fatal("ready without having read anything")
	}
	if got := testutil.ToFloat64(f.metrics.Errors.WithLabelValues(aws.PathInstanceAction)); got == 0 {
		t.Error("failed reads not counted")
	}
	f.md.RefuseTokens(0)
	f.await("the interruption once tokens are granted", hasNotice(aws.PathInstanceAction))
}

// A token that expires early on the server (revoked, or a clock the client
// did not share) gets a 401; the client takes a new token and the same read
// goes through. A short TTL is renewed while polling.
func TestExpiredTokensAreRenewed(t *testing.T) {
	f := follow(t, func(md *ec2fake.Server) { md.GrantTTL(time.Second) })
	f.await("every path read", func(r notice.Reading) bool { return r.Complete() })
	puts := f.md.Stats().TokenPUTs
	f.md.RevokeTokens()
	f.md.SetRebalance(time.Now())
	f.await("the recommendation after the revocation", hasNotice(aws.PathRebalance))
	st := f.md.Stats()
	if st.Unauthorized == 0 || st.TokenPUTs <= puts {
		t.Fatalf("fake saw %+v: want a 401 and a new token", st)
	}
	// The one-second token runs out while the source polls on.
	time.Sleep(1500 * time.Millisecond)
	f.md.SetRebalance(time.Time{})
	f.await("the recommendation gone", func(r notice.Reading) bool { return !hasNotice(aws.PathRebalance)(r) })
	if after := f.md.Stats(); after.TokenPUTs <= st.TokenPUTs {
		t.Fatalf("no new token after the TTL ran out: %+v", after)
	}
}

// Each scheduled event is a notice by its EventId; rescheduling moves its
// time, cancelling or completing it (or its disappearance) withdraws it.
func TestScheduledEventsAreFollowedByEventID(t *testing.T) {
	f := follow(t, nil)
	f.await("every path read", func(r notice.Reading) bool { return r.Complete() })
	start := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	f.md.SetScheduled(ec2fake.Event("instance-event-1", "system-reboot", start, start.Add(2*time.Hour)),
		ec2fake.Event("instance-event-2", "system-maintenance", start, time.Time{}))
	r := f.await("both events", func(r notice.Reading) bool { return len(r.Notices) == 2 })
	reboot, _ := r.Find("instance-event-1")
	if reboot.Reason != nodemark.ReasonUpcomingMaintenance || reboot.Impact != notice.ImpactRestart || !reboot.NotBefore.Equal(start) ||
		!reboot.WindowEnd.Equal(start.Add(2*time.Hour)) || !reboot.Reschedulable {
		t.Fatalf("system-reboot: %+v", reboot)
	}
	if m, _ := r.Find("instance-event-2"); m.Impact != notice.ImpactPause {
		t.Fatalf("system-maintenance: %+v, want a pause", m)
	}
	later := start.Add(24 * time.Hour)
	f.md.SetScheduled(ec2fake.Event("instance-event-1", "system-reboot", later, time.Time{}),
		ec2fake.Event("instance-event-2", "system-maintenance", start, time.Time{}))
	r = f.await("the rescheduled event", func(r notice.Reading) bool { n, _ := r.Find("instance-event-1"); return n.NotBefore.Equal(later) })
	if n, _ := r.Find("instance-event-1"); !n.FirstSeen.Equal(reboot.FirstSeen) {
		t.Errorf("rescheduling made a new notice: first seen %s, was %s", n.FirstSeen, reboot.FirstSeen)
	}
	cancelled := ec2fake.Event("instance-event-1", "system-reboot", later, time.Time{})
	cancelled.State = "canceled"
	f.md.SetScheduled(cancelled, ec2fake.Event("instance-event-2", "system-maintenance", start, time.Time{}))
	f.await("the cancelled event withdrawn", func(r notice.Reading) bool {
		return !hasNotice("instance-event-1")(r) && hasNotice("instance-event-2")(r)
	})
	f.md.SetScheduled()
	f.await("the other event gone", func(r notice.Reading) bool { return len(r.Notices) == 0 })
}

// Garbage on one path is reported and counted, and neither raises nor
// withdraws anything: that path keeps its last notice, the others count.
func TestGarbageOnOnePathBlocksNoOtherSignal(t *testing.T) {
	f := follow(t, nil)
	f.md.SetInstanceAction("terminate", time.Now().Add(time.Minute))
	f.await("the interruption", hasNotice(aws.PathInstanceAction))
	f.md.SetRaw(aws.PathInstanceAction, `{"action":"terminate","time":"in two minutes"}`, false)
	f.md.SetRaw(aws.PathScheduled, `[{"Code":"system-reboot","EventId":"instance-event-9","NotBefore":"someday","State":"active"},`+
		`{"Code":"instance-stop","EventId":"instance-event-8","NotBefore":"21 Jan 2030 09:00:43 GMT","State":"active"}]`, false)
	f.md.SetRebalance(time.Now())
	r := f.await("the rebalance and the readable event beside the garbage", func(r notice.Reading) bool {
		return hasNotice(aws.PathRebalance)(r) && hasNotice("instance-event-8")(r) && len(r.Unreadable) == 2
	})
	if !hasNotice(aws.PathInstanceAction)(r) {
		t.Error("the unreadable instance-action withdrew the interruption")
	}
	if hasNotice("instance-event-9")(r) {
		t.Error("an event without a readable NotBefore was acted on")
	}
	for _, p := range []string{aws.PathInstanceAction, aws.PathScheduled} {
		if testutil.ToFloat64(f.metrics.Invalid.WithLabelValues(p)) == 0 {
			t.Errorf("garbage on %s not counted", p)
		}
	}
	// Server errors: the path keeps its last value and is polled on.
	f.md.SetInstanceAction("terminate", time.Now().Add(time.Minute))
	f.md.FailNext(aws.PathInstanceAction, http.StatusInternalServerError, http.StatusInternalServerError, http.StatusInternalServerError, http.StatusInternalServerError)
	f.md.SetRebalance(time.Time{})
	r = f.await("the rebalance withdrawn while the other path fails", func(r notice.Reading) bool { return !hasNotice(aws.PathRebalance)(r) })
	if !hasNotice(aws.PathInstanceAction)(r) {
		t.Error("failing reads withdrew the interruption")
	}
}

// The metadata path never goes through a proxy: HTTP(S)_PROXY is for the
// API server, and a proxy would see (or break) the instance's own service.
func TestTheMetadataTransportUsesNoProxy(t *testing.T) {
	t.Setenv("HTTP_PROXY", "http://proxy.invalid:3128")
	req, _ := http.NewRequest(http.MethodGet, "http://169.254.169.254/latest/meta-data/", nil)
	if tr := notice.DirectTransport(); tr.Proxy != nil {
		if u, err := tr.Proxy(req); err != nil || u != nil {
			t.Fatalf("metadata requests go through %v (%v)", u, err)
		}
	}
}
