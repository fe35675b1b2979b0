package main

import (
	"strings"
	"testing"
)

func TestTitleCountsOneScenarioInTheSingular(t *testing.T) {
	r := sample()
	r.Scenarios = r.Scenarios[:1]
	if svg := renderSVG(r); !strings.Contains(svg, "termgate demo: 1 scenario on ") {
		t.Errorf("title of a one-scenario run: %s", svg[:min(len(svg), 400)])
	}
	if got := plural(2, "scenario"); got != "2 scenarios" {
		t.Errorf("plural(2) = %q", got)
	}
}

func TestStepLabelStaysOffTheMarkerThatFollowsIt(t *testing.T) {
	// A cancellation at x=400 with the restore marker 10 px later: the
	// label goes left of its line.
	if anchor, lx := labelSide(400, "cancelled", -1000, false, []float64{410}); anchor != "end" || lx != 397 {
		t.Errorf("cancelled before a restore: anchor %s at %.0f, want end at 397", anchor, lx)
	}
	// Nothing on its right: right of the line, as every other label.
	if anchor, _ := labelSide(400, "cancelled", -1000, false, []float64{300}); anchor != "start" {
		t.Errorf("nothing to the right: anchor %s, want start", anchor)
	}
	// Close behind a label written right of its line: left, and the next
	// close one right again.
	if anchor, _ := labelSide(440, "escalated", 400, false, nil); anchor != "end" {
		t.Errorf("close to the previous label: anchor %s, want end", anchor)
	}
	if anchor, _ := labelSide(470, "deadline", 440, true, nil); anchor != "start" {
		t.Errorf("after a label written left: anchor %s, want start", anchor)
	}
}
