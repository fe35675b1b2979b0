package agent

import (
	"context"
	"strings"
	"testing"

	"k8s.io/client-go/tools/record"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/agent/watch"
	"termgate.dev/termgate/nodemark"
)

// A value no source understands raises one Warning event while it stays
// (a hanging GET or a poll repeats it), a new one when it changes or comes
// back, and never stands in the way of a notice beside it.
func TestUnreadableValuesRaiseOneEventEachAndBlockNothing(t *testing.T) {
	rec := record.NewFakeRecorder(16)
	a := &Agent{cfg: DefaultConfig(), events: rec, reported: map[notice.Unreadable]bool{}}
	a.cfg.NodeName = "n"
	unknown := notice.Unreadable{Channel: string(watch.KeyMaintenanceEvent), Value: "TERMINATE_ON_HOST_MAINTENANCE_V2",
		Err: "unexpected value", Alarming: true}
	preempted := notice.Notice{ID: string(watch.KeyPreempted), Reason: nodemark.ReasonPreempted, Impact: notice.ImpactTerminate, FirstSeen: t0}
	r := notice.Reading{Source: "gce", At: t0, Unreadable: []notice.Unreadable{unknown}}
	a.observe(context.Background(), r)
	r.At, r.Notices = t0.Add(1), []notice.Notice{preempted}
	a.observe(context.Background(), r)
	if got := recorded(rec); len(got) != 1 || !strings.Contains(got[0], nodemark.EventNoticeUnreadable) || !strings.Contains(got[0], "reads like a termination") {
		t.Fatalf("events %q, want one alarming NoticeValueUnreadable", got)
	}
	if d := decideReading(a.cfg, a.reading, testNode(nil, nil), t0); d.mark == nil || d.mark.Reason != nodemark.ReasonPreempted {
		t.Fatalf("the unreadable value held back the preemption: %+v", d)
	}
	a.observe(context.Background(), notice.Reading{Source: "gce", At: t0.Add(2), Notices: r.Notices})
	a.observe(context.Background(), notice.Reading{Source: "gce", At: t0.Add(3), Notices: r.Notices, Unreadable: r.Unreadable})
	if got := recorded(rec); len(got) != 1 {
		t.Fatalf("the value came back: events %q, want one more", got)
	}
}

func recorded(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}
