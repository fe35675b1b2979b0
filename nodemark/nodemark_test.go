package nodemark_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"termgate.dev/termgate/nodemark"
)

func TestMarkRoundTripsThroughAnnotations(t *testing.T) {
	notice := time.Date(2026, 11, 25, 14, 0, 0, 123_000_000, time.UTC)
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: notice, Deadline: notice.Add(30 * time.Second), BootID: "b-1", Source: "aws", NoticeID: "instance-event-0123"}
	got, ok, err := nodemark.Read(m.Annotations())
	if !ok || err != nil {
		t.Fatalf("Read = %v, %v", ok, err)
	}
	if got.State != m.State || got.Reason != m.Reason || got.BootID != m.BootID || got.Source != m.Source || got.NoticeID != m.NoticeID ||
		!got.NoticeTime.Equal(m.NoticeTime) || !got.Deadline.Equal(m.Deadline) {
		t.Fatalf("got %+v, want %+v", got, m)
	}
}

// Every annotation a mark writes is in the key lists that unmarking and
// the Node policy go by, or it would be left behind or refused.
func TestEveryAnnotationAMarkWritesIsListed(t *testing.T) {
	m := nodemark.Mark{State: nodemark.StateAdvance, Reason: nodemark.ReasonRebalanceRecommended, BootID: "b",
		Source: "azure", NoticeID: "602d9444-d2cd-49c7-8624-8643e7171297"}
	for k := range m.Annotations() {
		if !slices.Contains(nodemark.AnnotationKeys, k) || !slices.Contains(nodemark.OwnedAnnotationKeys, k) {
			t.Errorf("annotation %s is written but not listed", k)
		}
	}
	legacy := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted}
	if a := legacy.Annotations(); a[nodemark.AnnotationSource] != "" || len(a) != 5 {
		t.Errorf("a mark without source writes %v", a)
	}
}

func TestReadReportsMalformedMarks(t *testing.T) {
	cases := map[string]map[string]string{
		"an unknown state":   {nodemark.AnnotationState: "melting"},
		"a missing deadline": {nodemark.AnnotationState: "terminating", nodemark.AnnotationNoticeTime: "2026-11-25T14:00:00Z"},
		"an unparsable time": {nodemark.AnnotationState: "terminating", nodemark.AnnotationNoticeTime: "yesterday", nodemark.AnnotationDeadline: "2026-11-25T14:00:00Z"},
	}
	for name, annotations := range cases {
		t.Run(name, func(t *testing.T) {
			if _, ok, err := nodemark.Read(annotations); !ok || err == nil {
				t.Fatalf("Read = ok %v, err %v; want a present but malformed mark", ok, err)
			}
		})
	}
	if _, ok, err := nodemark.Read(map[string]string{"other": "x"}); ok || err != nil {
		t.Fatalf("unmarked node: ok %v, err %v", ok, err)
	}
}

func FuzzRead(f *testing.F) {
	f.Add("terminating", "2026-11-25T14:00:00.000Z", "2026-11-25T14:00:30.000Z")
	f.Add("advance", "", "x")
	f.Fuzz(func(t *testing.T, state, notice, deadline string) {
		_, _, _ = nodemark.Read(map[string]string{
			nodemark.AnnotationState: state, nodemark.AnnotationNoticeTime: notice, nodemark.AnnotationDeadline: deadline,
		})
	})
}

func TestLongNoticeIDsAreShortenedStablyAndDistinctly(t *testing.T) {
	short := "602d9444-d2cd-49c7-8624-8643e7171297"
	if got := nodemark.NoticeIDValue(short); got != short {
		t.Fatalf("a short id changed: %q", got)
	}
	long := strings.Repeat("x", 100)
	a, b := nodemark.NoticeIDValue(long), nodemark.NoticeIDValue(long+"y")
	if len(a) > nodemark.MaxNoticeIDLength || a != nodemark.NoticeIDValue(long) || a == b {
		t.Fatalf("long ids: %q and %q", a, b)
	}
}
