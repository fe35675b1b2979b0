package main

import (
	"fmt"
	"math"
)

// lbTimelines draws, for the load-balancer scenario, one request timeline
// per run on a shared scale from a second before the notice: requests per
// 100 ms as bars (failures in red on top), the moment the node left the
// load balancer's host set (purple line) and the agent's evictions of the
// backends on the node (orange ticks).
func lbTimelines(d *svgDoc, s scenarioReport) {
	if len(s.LB) == 0 {
		return
	}
	const from = -1000 // ms: the client runs a second before the notice
	var last int64 = 1000
	peak := 1
	for _, run := range s.LB {
		for _, b := range run.Buckets {
			last = max(last, b.Ms+100)
			peak = max(peak, b.OK+b.Failed)
		}
	}
	span := niceMax(last - from)
	x := func(ms int64) float64 {
		return plotLeft + float64(plotRight-plotLeft)*math.Max(0, math.Min(float64(ms-from), span))/span
	}
	const height = 46.0
	d.y += 6
	d.text(20, d.y+4, 12, "#2d3436", "start", "bold", "requests through the load balancer, per 100 ms")
	d.y += 12
	for _, run := range s.LB {
		top, bottom := d.y, d.y+height
		label := fmt.Sprintf("%s: %d of %d failed", run.Name, run.Failed, run.Total)
		d.text(plotLeft-10, top+14, 11, "#2d3436", "end", "bold", run.Name)
		d.text(plotLeft-10, top+28, 10, failColor(run.Failed), "end", "normal", fmt.Sprintf("%d of %d failed", run.Failed, run.Total))
		d.add(`<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="#f8f9fa"><title>%s</title></rect>`, plotLeft, top, plotRight-plotLeft, height, label)
		w := math.Max(1, x(100)-x(0)-0.5)
		for _, b := range run.Buckets {
			okH := height * float64(b.OK) / float64(peak)
			failH := height * float64(b.Failed) / float64(peak)
			bx := x(b.Ms)
			if b.OK > 0 {
				d.add(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#b2bec3"/>`, bx, bottom-okH, w, okH)
			}
			if b.Failed > 0 {
				d.add(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#d63031"><title>+%d ms: %d failed</title></rect>`, bx, bottom-okH-failH, w, failH, b.Ms, b.Failed)
			}
		}
		zero := x(0)
		d.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`, zero, top, zero, bottom, palette["notice"])
		if run.LeftMs != nil {
			lx := x(*run.LeftMs)
			d.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#6c5ce7" stroke-width="2"><title>node left the host set +%d ms</title></line>`, lx, top-2, lx, bottom+2, *run.LeftMs)
			d.text(lx+3, top+9, 10, "#6c5ce7", "start", "normal", "left the host set")
		}
		for _, e := range run.EvictionsMs {
			ex := x(e)
			d.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"><title>backend evicted +%d ms</title></line>`, ex, bottom, ex, bottom+7, palette["evicted"], e)
		}
		d.y = bottom + 12
	}
	for t := 0.0; t <= span+float64(from)+1; t += tickStep(span) {
		d.text(x(int64(t)), d.y, 10, "#636e72", "middle", "normal", fmt.Sprintf("+%.0f s", t/1000))
	}
	d.text(plotRight, d.y+14, 10, "#636e72", "end", "normal", "black: notice; purple: node left the host set; orange ticks: backends on the node evicted; red: failed requests")
	d.y += 22
}

func failColor(n int) string {
	if n > 0 {
		return "#d63031"
	}
	return "#00b894"
}
