package azure_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/azure"
	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/azurefake"
)

const vm = "aks-spot-12345678-vmss_3"

type follower struct {
	t       *testing.T
	md      *azurefake.Server
	src     *azure.Source
	metrics *notice.Metrics
	cfg     azure.Config
	out     chan notice.Reading
	last    notice.Reading
}

func follow(t *testing.T, prepare func(*azurefake.Server, *azure.Config)) *follower {
	t.Helper()
	md, err := azurefake.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = md.Close() })
	m, err := notice.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cfg := azure.DefaultConfig()
	cfg.Endpoint, cfg.VMName, cfg.PollInterval = md.Endpoint(), vm, 500*time.Millisecond
	if prepare != nil {
		prepare(md, &cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	f := &follower{t: t, md: md, metrics: m, cfg: cfg, src: azure.New(clock.RealClock{}, cfg, m), out: make(chan notice.Reading, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.src.Run(ctx, f.out) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// await reads readings until want holds: within two polls and a read.
func (f *follower) await(what string, want func(notice.Reading) bool) notice.Reading {
	f.t.Helper()
	limit := time.After(2*f.cfg.PollInterval + f.cfg.ReadTimeout)
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

func has(id string) func(notice.Reading) bool {
	return func(r notice.Reading) bool { _, ok := r.Find(id); return ok }
}

// Events are filtered to this VM by Resources; each type means what Azure
// says it does; a started event's time is when it started; an event gone
// from the document is withdrawn.
func TestScheduledEventsOfThisVMBecomeNotices(t *testing.T) {
	f := follow(t, nil)
	f.await("the empty document", func(r notice.Reading) bool { return r.Complete() })
	if len(f.md.Stats().Acknowledged) != 0 || f.md.Stats().WithoutHeader != 0 {
		t.Fatalf("fake saw %+v", f.md.Stats())
	}
	soon := time.Now().Add(30 * time.Second).UTC().Truncate(time.Second)
	later := time.Now().Add(20 * time.Minute).UTC().Truncate(time.Second)
	f.md.Set(
		azurefake.Scheduled("preempt-1", "Preempt", soon, vm),
		azurefake.Scheduled("reboot-neighbour", "Reboot", later, "aks-spot-12345678-vmss_4"),
		azurefake.Scheduled("freeze-set", "Freeze", later, "aks-spot-12345678-vmss_4", "AKS-SPOT-12345678-VMSS_3"),
	)
	r := f.await("this VM's two events", func(r notice.Reading) bool { return has("preempt-1")(r) && has("freeze-set")(r) })
	if has("reboot-neighbour")(r) {
		t.Fatal("an event for another VM counted")
	}
	p, _ := r.Find("preempt-1")
	if p.Reason != nodemark.ReasonPreempted || p.Impact != notice.ImpactTerminate || !p.NotBefore.Equal(soon) || p.Started {
		t.Fatalf("Preempt: %+v", p)
	}
	if fr, _ := r.Find("freeze-set"); fr.Impact != notice.ImpactPause || fr.Reason != nodemark.ReasonHostMaintenance {
		t.Fatalf("Freeze: %+v", fr)
	}
	seen := time.Now()
	f.md.StartEvent("preempt-1")
	r = f.await("the start", func(r notice.Reading) bool { n, _ := r.Find("preempt-1"); return n.Started })
	// It started before its NotBefore: its time is when the agent saw it
	// started, not the NotBefore it no longer has.
	if n, _ := r.Find("preempt-1"); n.NotBefore.Before(seen) || n.NotBefore.After(time.Now()) {
		t.Fatalf("started event's time %s: want between %s and now", n.NotBefore, seen)
	}
	f.md.Remove("preempt-1")
	f.md.Remove("freeze-set")
	f.await("the withdrawal", func(r notice.Reading) bool { return len(r.Notices) == 0 })
}

// The first request enables the service and may take minutes: until it
// answers, nothing is read (not "no events"), and the source is not ready.
func TestASlowFirstCallCountsAsUnread(t *testing.T) {
	slow := 1500 * time.Millisecond
	f := follow(t, func(md *azurefake.Server, _ *azure.Config) {
		md.SlowFirst(slow)
		md.Set(azurefake.Scheduled("terminate-1", "Terminate", time.Now().Add(10*time.Minute), vm))
	})
	select {
	case r := <-f.out:
		t.Fatalf("a reading before the first answer: %+v", r)
	case <-time.After(slow / 2):
	}
	if err := f.src.Ready(); err == nil {
		t.Fatal("ready before the first answer")
	}
	if err := f.src.Alive(); err != nil {
		t.Fatalf("a slow first answer made the source dead: %v", err)
	}
	limit := time.After(slow + f.cfg.ReadTimeout)
	select {
	case r := <-f.out:
		if n, ok := r.Find("terminate-1"); !ok || n.Reason != nodemark.ReasonTermination || !n.AtFirstRead {
			t.Fatalf("first reading %+v: want the Terminate event, present at the first read", r)
		}
	case <-limit:
		t.Fatal("no reading after the slow first answer")
	}
	if f.src.Ready() != nil {
		t.Fatal("not ready after the first answer")
	}
}

// Garbage neither raises nor withdraws an event; one unreadable event
// beside readable ones blocks none of them; errors and 429s are survived.
func TestGarbageAndErrorsBlockNoOtherEvent(t *testing.T) {
	f := follow(t, nil)
	f.md.Set(azurefake.Scheduled("redeploy-1", "Redeploy", time.Now().Add(20*time.Minute), vm))
	f.await("the redeploy", has("redeploy-1"))
	f.md.SetRaw(`{"DocumentIncarnation":`)
	r := f.await("the garbage reported", func(r notice.Reading) bool { return len(r.Unreadable) == 1 })
	if !has("redeploy-1")(r) {
		t.Fatal("a garbage document withdrew the event")
	}
	good := azurefake.Scheduled("preempt-2", "Preempt", time.Now().Add(30*time.Second), vm)
	odd := azurefake.Scheduled("odd-1", "Hibernate", time.Now().Add(30*time.Second), vm)
	undated := azurefake.Scheduled("undated-1", "Reboot", time.Now(), vm)
	undated.NotBefore = "tomorrow morning"
	f.md.Set(good, odd, undated)
	r = f.await("the readable event beside two unreadable ones", func(r notice.Reading) bool { return has("preempt-2")(r) && len(r.Unreadable) == 2 })
	if has("odd-1")(r) || has("undated-1")(r) || has("redeploy-1")(r) {
		t.Fatalf("acted on what it cannot read, or kept a removed event: %+v", r.Notices)
	}
	if testutil.ToFloat64(f.metrics.Invalid.WithLabelValues(azure.Channel)) == 0 {
		t.Error("unreadable values not counted")
	}
	f.md.FailNext(http.StatusInternalServerError, http.StatusTooManyRequests)
	f.md.Set()
	f.await("the withdrawal after an error and a 429", func(r notice.Reading) bool { return len(r.Notices) == 0 && len(r.Unreadable) == 0 })
	if testutil.ToFloat64(f.metrics.Errors.WithLabelValues(azure.Channel)) < 2 {
		t.Error("the error and the 429 were not counted")
	}
	if st := f.md.Stats(); st.Throttled != 0 {
		t.Errorf("polling at %s tripped the rate limit %d times", f.cfg.PollInterval, st.Throttled)
	}
}

// Acknowledging starts the event for every VM it names, so the agent does
// it only when asked to and only for an event of this VM alone.
func TestAcknowledgementOnlyWhenOnAndTheEventIsThisVMsAlone(t *testing.T) {
	off := follow(t, nil)
	off.md.Set(azurefake.Scheduled("reboot-1", "Reboot", time.Now().Add(20*time.Minute), vm))
	off.await("the reboot", has("reboot-1"))
	if done, err := off.src.Acknowledge(context.Background(), "reboot-1"); done || err != nil || len(off.md.Stats().Acknowledged) != 0 {
		t.Fatalf("acknowledged with the option off: %v %v", done, err)
	}

	on := follow(t, func(_ *azurefake.Server, c *azure.Config) { c.Acknowledge = true })
	on.md.Set(azurefake.Scheduled("reboot-1", "Reboot", time.Now().Add(20*time.Minute), vm),
		azurefake.Scheduled("reboot-set", "Reboot", time.Now().Add(20*time.Minute), vm, "aks-spot-12345678-vmss_4"))
	on.await("both reboots", func(r notice.Reading) bool { return has("reboot-1")(r) && has("reboot-set")(r) })
	if done, err := on.src.Acknowledge(context.Background(), "reboot-set"); done || err != nil {
		t.Fatalf("acknowledged an event shared with another VM: %v %v", done, err)
	}
	if done, err := on.src.Acknowledge(context.Background(), "reboot-1"); !done || err != nil {
		t.Fatalf("acknowledge this VM's own event: %v %v", done, err)
	}
	if got := on.md.Stats().Acknowledged; len(got) != 1 || got[0] != "reboot-1" {
		t.Fatalf("fake acknowledged %v, want [reboot-1]", got)
	}
	on.await("the acknowledged event started", func(r notice.Reading) bool { n, _ := r.Find("reboot-1"); return n.Started })
}

func TestVMNameFromTheProviderID(t *testing.T) {
	cases := map[string]string{
		"azure:///subscriptions/s/resourceGroups/mc_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-spot-12345678-vmss/virtualMachines/3": "aks-spot-12345678-vmss_3",
		"azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/worker-7":                                            "worker-7",
	}
	for id, want := range cases {
		if got, err := azure.VMName(id); err != nil || got != want {
			t.Errorf("VMName(%q) = %q, %v; want %q", id, got, err, want)
		}
	}
	for _, bad := range []string{"", "gce://p/z/n", "azure:///subscriptions/s/resourceGroups/rg", "aws:///us-east-1a/i-0abc"} {
		if got, err := azure.VMName(bad); err == nil {
			t.Errorf("VMName(%q) = %q, want an error", bad, got)
		}
	}
}
