package main

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"termgate.dev/termgate/test/scenario"
)

// sample is what a run of two scenarios returns, one of them failed.
func sample() *report {
	held := &scenario.Result{
		Name: "spot-preemption", Title: "Spot node preempted", Node: "spot-0", Held: true,
		Marked: true, MarkedAt: 5 * time.Millisecond, Deadline: 30 * time.Second, Drained: true, DrainedAt: 880 * time.Millisecond,
		Evicted: 4, Blocked: 1, Replacements: 3,
		Checks: []scenario.Check{{Expect: "node marked within 2s", Held: true, Seen: "+5ms"}},
		Timeline: []scenario.Event{
			{At: 0, Kind: scenario.KindNotice},
			{At: 5 * time.Millisecond, Kind: scenario.KindMarked, Subject: "spot-0"},
			{At: 20 * time.Millisecond, Kind: scenario.KindWave, Subject: "spot-0", Detail: "evictRegular: evicting 2 pods"},
			{At: 21 * time.Millisecond, Kind: scenario.KindEvicted, Subject: "shop/web-a"},
			{At: 30 * time.Millisecond, Kind: scenario.KindBlocked, Subject: "shop/web-b"},
			{At: 120 * time.Millisecond, Kind: scenario.KindGone, Subject: "shop/web-a"},
			{At: 140 * time.Millisecond, Kind: scenario.KindReplacement, Subject: "shop/web-c"},
		},
	}
	failed := &scenario.Result{
		Name: "pinned-pod-refused", Title: "Pinned <pod> & co", Node: "spot-1", Held: false,
		Marked: true, Deadline: 30 * time.Second, LostCount: 1, Lost: []string{"shop/pinned"},
		Checks:   []scenario.Check{{Expect: "pinned pod refused", Held: false, Seen: "admitted"}},
		Timeline: []scenario.Event{{At: 0, Kind: scenario.KindNotice}, {At: 90 * time.Millisecond, Kind: scenario.KindAdmitted, Subject: "shop/pinned"}},
	}
	return newReport(6, scenario.CertsSelfManaged, &scenario.Env{AgentFlags: []string{"--accelerator-maintenance-budget=45s"}}, []*scenario.Result{held, failed})
}

func TestReportListsEveryScenarioWithItsVerdictAndFigures(t *testing.T) {
	dir := t.TempDir()
	if err := sample().write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, reportFile))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Held      bool `json:"held"`
		Scenarios []struct {
			Name         string `json:"name"`
			Held         *bool  `json:"held"`
			TimeToMarkMs *int64 `json:"time_to_mark_ms"`
			DrainMs      *int64 `json:"drain_ms"`
			PodsLost     *int   `json:"pods_lost"`
			Timeline     []any  `json:"timeline"`
		} `json:"scenarios"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("report.json does not parse: %v", err)
	}
	if got.Held || len(got.Scenarios) != 2 {
		t.Fatalf("report held=%v with %d scenarios, want false with 2", got.Held, len(got.Scenarios))
	}
	first, second := got.Scenarios[0], got.Scenarios[1]
	if first.Name != "spot-preemption" || first.Held == nil || !*first.Held || *first.TimeToMarkMs != 5 || *first.DrainMs != 880 || *first.PodsLost != 0 {
		t.Errorf("first scenario reads %+v", first)
	}
	if second.Held == nil || *second.Held || second.DrainMs != nil || *second.PodsLost != 1 {
		t.Errorf("failed scenario reads %+v, want held false, no drain time, 1 lost", second)
	}
}

func TestTimelinePictureIsWellFormedSVGWithAPanelPerScenario(t *testing.T) {
	svg := renderSVG(sample())
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("timeline.svg is not well-formed XML: %v", err)
		}
	}
	for _, want := range []string{"spot-preemption", "pinned-pod-refused", "HELD", "NOT HELD", "Pinned &lt;pod&gt; &amp; co", "drained in 0.88 s of 30 s", "web-a"} {
		if !strings.Contains(svg, want) {
			t.Errorf("timeline.svg lacks %q", want)
		}
	}
}
