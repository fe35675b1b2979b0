package main

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"termgate.dev/termgate/test/scenario"
)

func TestLoadBalancerRunsShowTheirRequestTimelinesInTheReportAndThePicture(t *testing.T) {
	left, first := int64(5200), int64(7300)
	res := &scenario.Result{Name: "lb-preemption", Title: "behind a load balancer", Node: "spot-2", Held: true, Deadline: 30 * time.Second,
		Timeline: []scenario.Event{{At: 0, Kind: scenario.KindNotice}},
		LB: []scenario.LBRun{
			{Name: "wait on", Wait: true, Total: 500, LeftMs: &left, FirstEviction: &first, EvictionsMs: []int64{7300, 7310},
				Buckets: []scenario.LBBucket{{Ms: -100, OK: 5}, {Ms: 0, OK: 5}, {Ms: 7300, OK: 5}}},
			{Name: "wait off", Total: 480, Failed: 37, LeftMs: &left, EvictionsMs: []int64{20},
				Buckets: []scenario.LBBucket{{Ms: 0, OK: 5}, {Ms: 1200, OK: 2, Failed: 3}}},
		}}
	r := newReport(6, scenario.CertsSelfManaged, &scenario.Env{}, []*scenario.Result{res})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"lb_runs"`, `"name":"wait off"`, `"failed":37`, `"left_ms":5200`, `"buckets"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("report.json lacks %s", want)
		}
	}
	svg := renderSVG(r)
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		if _, err := dec.Token(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("timeline.svg is not well-formed XML: %v", err)
		}
	}
	for _, want := range []string{"requests through the load balancer", "0 of 500 failed", "37 of 480 failed", "left the host set", "+1200 ms: 3 failed"} {
		if !strings.Contains(svg, want) {
			t.Errorf("timeline.svg lacks %q", want)
		}
	}
}
