package agent

import (
	"testing"
	"time"

	"termgate.dev/termgate/agent/aws"
	"termgate.dev/termgate/agent/azure"
	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/nodemark"
)

// reading is a complete reading of a source with these notices.
func reading(source string, ns ...notice.Notice) notice.Reading {
	r := notice.Reading{Source: source, At: t0, Notices: ns}
	return r
}

func spot(action notice.Impact, at time.Time) notice.Notice {
	return notice.Notice{ID: aws.PathInstanceAction, Reason: nodemark.ReasonPreempted, Impact: action, NotBefore: at, FirstSeen: t0}
}

func scheduled(id string, impact notice.Impact, notBefore time.Time) notice.Notice {
	return notice.Notice{ID: id, Reason: nodemark.ReasonUpcomingMaintenance, Impact: impact, NotBefore: notBefore,
		FirstSeen: t0, Withdrawable: true, Reschedulable: true}
}

func azureEvent(id string, reason nodemark.Reason, impact notice.Impact, notBefore time.Time) notice.Notice {
	return notice.Notice{ID: id, Reason: reason, Impact: impact, NotBefore: notBefore, FirstSeen: t0, Withdrawable: true, Reschedulable: true}
}

// The cloud-neutral table: every cloud's notices give the marks and
// deadlines users rely on, the mark naming its source and notice.
func TestDecideOverEveryCloudsNotices(t *testing.T) {
	cfg := DefaultConfig()
	in := func(d time.Duration) time.Time { return t0.Add(d) }
	cases := map[string]struct {
		cfg          func(*Config)
		r            notice.Reading
		now          time.Time
		wantNone     bool
		wantReason   nodemark.Reason
		wantState    nodemark.State
		wantID       string
		wantDeadline time.Time
		wantNotice   time.Time
		wantWake     time.Time
	}{
		"an EC2 Spot interruption drains by the time EC2 gives": {
			r:          reading(aws.SourceName, spot(notice.ImpactTerminate, in(2*time.Minute))),
			wantReason: nodemark.ReasonPreempted, wantState: nodemark.StateTerminating, wantID: aws.PathInstanceAction,
			wantDeadline: in(2 * time.Minute), wantNotice: t0,
		},
		"an EC2 Spot stop is a restart: it drains all the same": {
			r:          reading(aws.SourceName, spot(notice.ImpactRestart, in(2*time.Minute))),
			wantReason: nodemark.ReasonPreempted, wantState: nodemark.StateTerminating, wantID: aws.PathInstanceAction, wantDeadline: in(2 * time.Minute),
		},
		"an EC2 Spot interruption whose time has passed drains against that time": {
			r:          reading(aws.SourceName, spot(notice.ImpactTerminate, t0.Add(-5*time.Second))),
			wantReason: nodemark.ReasonPreempted, wantState: nodemark.StateTerminating, wantDeadline: t0.Add(-5 * time.Second), wantNotice: t0.Add(-5 * time.Second),
		},
		"an EC2 rebalance recommendation only discourages": {
			r:          reading(aws.SourceName, notice.Notice{ID: aws.PathRebalance, Reason: nodemark.ReasonRebalanceRecommended, Impact: notice.ImpactAdvisory, FirstSeen: t0}),
			wantReason: nodemark.ReasonRebalanceRecommended, wantState: nodemark.StateAdvance, wantID: aws.PathRebalance,
			wantDeadline: in(cfg.AdvisoryBudget),
		},
		"an EC2 rebalance recommendation drains when the user opts in": {
			cfg:        func(c *Config) { c.DrainOnAdvisory = true },
			r:          reading(aws.SourceName, notice.Notice{ID: aws.PathRebalance, Reason: nodemark.ReasonRebalanceRecommended, Impact: notice.ImpactAdvisory, FirstSeen: t0}),
			wantReason: nodemark.ReasonRebalanceRecommended, wantState: nodemark.StateTerminating, wantDeadline: in(cfg.AdvisoryBudget),
		},
		"an EC2 scheduled reboot days ahead waits for its window's lead, not first sight": {
			r:          reading(aws.SourceName, scheduled("instance-event-1", notice.ImpactRestart, in(72*time.Hour))),
			wantReason: nodemark.ReasonUpcomingMaintenance, wantState: nodemark.StateAdvance, wantID: "instance-event-1",
			wantDeadline: in(72 * time.Hour), wantWake: in(72*time.Hour - cfg.UpcomingLead),
		},
		"an EC2 scheduled reboot drains from its window's lead on": {
			r: reading(aws.SourceName, scheduled("instance-event-1", notice.ImpactRestart, in(72*time.Hour))), now: in(72*time.Hour - 10*time.Minute),
			wantReason: nodemark.ReasonUpcomingMaintenance, wantState: nodemark.StateTerminating, wantID: "instance-event-1",
			wantDeadline: in(72 * time.Hour), wantNotice: in(72*time.Hour - 10*time.Minute),
		},
		"EC2 system-maintenance only discourages, drain opt-in": {
			r:          reading(aws.SourceName, scheduled("instance-event-2", notice.ImpactPause, in(10*time.Minute))),
			wantReason: nodemark.ReasonUpcomingMaintenance, wantState: nodemark.StateAdvance, wantDeadline: in(10 * time.Minute),
		},
		"EC2 system-maintenance drains with --drain-on-pause": {
			cfg:        func(c *Config) { c.DrainOnPause = true },
			r:          reading(aws.SourceName, scheduled("instance-event-2", notice.ImpactPause, in(10*time.Minute))),
			wantReason: nodemark.ReasonUpcomingMaintenance, wantState: nodemark.StateTerminating, wantDeadline: in(10 * time.Minute),
		},
		"a Spot interruption wins over a scheduled event and a recommendation": {
			r: reading(aws.SourceName, scheduled("instance-event-1", notice.ImpactRestart, in(5*time.Minute)),
				notice.Notice{ID: aws.PathRebalance, Reason: nodemark.ReasonRebalanceRecommended, Impact: notice.ImpactAdvisory, FirstSeen: t0},
				spot(notice.ImpactTerminate, in(2*time.Minute))),
			wantReason: nodemark.ReasonPreempted, wantState: nodemark.StateTerminating, wantID: aws.PathInstanceAction, wantDeadline: in(2 * time.Minute),
		},
		"an Azure Preempt drains by its NotBefore": {
			r:          reading(azure.SourceName, azureEvent("e-1", nodemark.ReasonPreempted, notice.ImpactTerminate, in(30*time.Second))),
			wantReason: nodemark.ReasonPreempted, wantState: nodemark.StateTerminating, wantID: "e-1", wantDeadline: in(30 * time.Second), wantNotice: t0,
		},
		"an Azure Terminate drains by its NotBefore": {
			r:          reading(azure.SourceName, azureEvent("e-2", nodemark.ReasonTermination, notice.ImpactTerminate, in(10*time.Minute))),
			wantReason: nodemark.ReasonTermination, wantState: nodemark.StateTerminating, wantDeadline: in(10 * time.Minute),
		},
		"a started Azure event drains now": {
			r: reading(azure.SourceName, func() notice.Notice {
				n := azureEvent("e-3", nodemark.ReasonHostMaintenance, notice.ImpactRestart, t0)
				n.Started, n.Reschedulable = true, false
				return n
			}()),
			now:        in(time.Second),
			wantReason: nodemark.ReasonHostMaintenance, wantState: nodemark.StateTerminating, wantDeadline: t0, wantNotice: t0,
		},
		"an Azure Reboot beyond the lead only discourages until then": {
			r:          reading(azure.SourceName, azureEvent("e-4", nodemark.ReasonHostMaintenance, notice.ImpactRestart, in(20*time.Minute))),
			wantReason: nodemark.ReasonHostMaintenance, wantState: nodemark.StateAdvance, wantDeadline: in(20 * time.Minute), wantWake: in(5 * time.Minute),
		},
		"an Azure Freeze only discourages": {
			r:          reading(azure.SourceName, azureEvent("e-5", nodemark.ReasonHostMaintenance, notice.ImpactPause, in(5*time.Minute))),
			wantReason: nodemark.ReasonHostMaintenance, wantState: nodemark.StateAdvance, wantDeadline: in(5 * time.Minute),
		},
		"a live migration asks for nothing": {
			r:        reading(watch.SourceName, notice.Notice{ID: string(watch.KeyMaintenanceEvent), Reason: nodemark.ReasonHostMaintenance, Impact: notice.ImpactLiveMigrate, FirstSeen: t0}),
			wantNone: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			now := tc.now
			if now.IsZero() {
				now = t0
			}
			d := decideReading(cfg, tc.r, testNode(nil, nil), now)
			if tc.wantNone {
				if d.mark != nil {
					t.Fatalf("got %+v, want no mark", *d.mark)
				}
				return
			}
			if d.mark == nil {
				t.Fatal("no mark")
			}
			m := *d.mark
			if m.Reason != tc.wantReason || m.State != tc.wantState || !m.Deadline.Equal(tc.wantDeadline) || m.Source != tc.r.Source {
				t.Fatalf("got %s/%s deadline %s source %s; want %s/%s deadline %s source %s", m.Reason, m.State, m.Deadline, m.Source,
					tc.wantReason, tc.wantState, tc.wantDeadline, tc.r.Source)
			}
			if tc.wantID != "" && m.NoticeID != tc.wantID {
				t.Errorf("notice id %q, want %q", m.NoticeID, tc.wantID)
			}
			if !tc.wantNotice.IsZero() && !m.NoticeTime.Equal(tc.wantNotice) {
				t.Errorf("notice time %s, want %s", m.NoticeTime, tc.wantNotice)
			}
			if !d.wake.Equal(tc.wantWake) {
				t.Errorf("wake %s, want %s", d.wake, tc.wantWake)
			}
			if d.lateStart {
				t.Error("a late start assumed though the cloud gave a time")
			}
		})
	}
}

// A scheduled event that moves moves the drain; its notice time stays.
func TestDecideFollowsARescheduledEvent(t *testing.T) {
	cfg := DefaultConfig()
	start := t0.Add(10 * time.Minute)
	first := decideReading(cfg, reading(aws.SourceName, scheduled("instance-event-1", notice.ImpactRestart, start)), testNode(nil, nil), t0)
	if first.mark == nil || !first.mark.Terminating() {
		t.Fatalf("event within the lead: %+v", first)
	}
	node := testNode(nil, first.mark.Annotations())
	earlier := t0.Add(8 * time.Minute)
	moved := decideReading(cfg, reading(aws.SourceName, scheduled("instance-event-1", notice.ImpactRestart, earlier)), node, t0.Add(time.Minute))
	if !moved.mark.Deadline.Equal(earlier) || !moved.mark.NoticeTime.Equal(first.mark.NoticeTime) {
		t.Fatalf("rescheduled earlier: %+v, want deadline %s and the first notice time", moved.mark, earlier)
	}
	later := t0.Add(4 * time.Hour)
	again := decideReading(cfg, reading(aws.SourceName, scheduled("instance-event-1", notice.ImpactRestart, later)), node, t0.Add(time.Minute))
	if again.mark.State != nodemark.StateAdvance || !again.wake.Equal(later.Add(-cfg.UpcomingLead)) {
		t.Fatalf("rescheduled hours later: %+v, want the node only discouraged until the new lead", again)
	}
}

// An Azure event that starts before its NotBefore pulls the deadline in;
// a Spot interruption's time, fixed, is kept as first recorded.
func TestDecideStartedEventsPullTheDeadlineIn(t *testing.T) {
	cfg := DefaultConfig()
	ev := azureEvent("e-1", nodemark.ReasonPreempted, notice.ImpactTerminate, t0.Add(30*time.Second))
	first := decideReading(cfg, reading(azure.SourceName, ev), testNode(nil, nil), t0)
	node := testNode(nil, first.mark.Annotations())
	ev.Started, ev.Reschedulable, ev.NotBefore = true, false, t0.Add(5*time.Second)
	started := decideReading(cfg, reading(azure.SourceName, ev), node, t0.Add(6*time.Second))
	if !started.mark.Deadline.Equal(t0.Add(5*time.Second)) || !started.mark.NoticeTime.Equal(first.mark.NoticeTime) {
		t.Fatalf("started early: %+v, want the deadline at the start and the notice time kept", started.mark)
	}
	s := spot(notice.ImpactTerminate, t0.Add(2*time.Minute))
	marked := decideReading(cfg, reading(aws.SourceName, s), testNode(nil, nil), t0)
	s.NotBefore = t0.Add(3 * time.Minute)
	kept := decideReading(cfg, reading(aws.SourceName, s), testNode(nil, marked.mark.Annotations()), t0.Add(time.Second))
	if !kept.mark.Deadline.Equal(t0.Add(2 * time.Minute)) {
		t.Fatalf("Spot deadline moved to %s; a Spot interruption's time is kept", kept.mark.Deadline)
	}
}

// A withdrawal removes exactly the mark its notice made: another notice in
// force takes over, and a mark stays while its channel is unread.
func TestDecideWithdrawsOnlyTheNoticeThatMadeTheMark(t *testing.T) {
	cfg := DefaultConfig()
	a := scheduled("instance-event-a", notice.ImpactRestart, t0.Add(5*time.Minute))
	b := scheduled("instance-event-b", notice.ImpactRestart, t0.Add(48*time.Hour))
	d := decideReading(cfg, reading(aws.SourceName, a, b), testNode(nil, nil), t0)
	if d.mark.NoticeID != "instance-event-a" || !d.mark.Terminating() {
		t.Fatalf("two events: %+v, want the sooner one draining", d.mark)
	}
	node := testNode(nil, d.mark.Annotations())
	after := decideReading(cfg, reading(aws.SourceName, b), node, t0.Add(time.Minute))
	if after.mark == nil || after.mark.NoticeID != "instance-event-b" || after.mark.State != nodemark.StateAdvance {
		t.Fatalf("event a cancelled: %+v, want event b's advance mark", after.mark)
	}
	if none := decideReading(cfg, reading(aws.SourceName), node, t0.Add(time.Minute)); none.mark != nil || none.hold {
		t.Fatalf("both cancelled: %+v, want the mark removed", none)
	}

	spotMark := decideReading(cfg, reading(aws.SourceName, spot(notice.ImpactTerminate, t0.Add(2*time.Minute))), testNode(nil, nil), t0).mark
	spotNode := testNode(nil, spotMark.Annotations())
	restarted := notice.Reading{Source: aws.SourceName, At: t0, Unread: []string{aws.PathInstanceAction}}
	restarted.ChannelOf = func(m nodemark.Mark) string {
		if m.NoticeID == aws.PathInstanceAction {
			return aws.PathInstanceAction
		}
		return aws.PathScheduled
	}
	if d := decideReading(cfg, restarted, spotNode, t0); !d.hold {
		t.Fatalf("Spot path unread after a restart: %+v, want the mark held", d)
	}
	restarted.Unread = []string{aws.PathRebalance}
	if d := decideReading(cfg, restarted, spotNode, t0); d.hold || d.mark != nil {
		t.Fatalf("Spot path read empty, another unread: %+v, want the mark removed", d)
	}
	azureFirst := notice.Reading{Source: azure.SourceName, Unread: []string{azure.Channel}}
	azMark := decideReading(cfg, reading(azure.SourceName, azureEvent("e-1", nodemark.ReasonPreempted, notice.ImpactTerminate, t0.Add(30*time.Second))), testNode(nil, nil), t0).mark
	if d := decideReading(cfg, azureFirst, testNode(nil, azMark.Annotations()), t0); !d.hold {
		t.Fatalf("Azure's first answer still pending: %+v, want the mark held", d)
	}
}
