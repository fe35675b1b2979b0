package main

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strings"
)

// The picture: one panel per scenario. A budget bar shows the drain against
// the whole deadline; below it a zoomed timeline (its own scale, as the
// action takes seconds of a 30-60 s budget) has a row for the node, one per
// evicted pod (a bar from eviction to gone, crosses where a PDB refused),
// one for replacements Ready elsewhere and one for refused binds.
const (
	svgWidth   = 1100
	plotLeft   = 190
	plotRight  = svgWidth - 40
	rowHeight  = 16
	maxPodRows = 16
)

var palette = map[string]string{
	"notice": "#2d3436", "marked": "#6c5ce7", "wave": "#636e72", "escalated": "#d63031",
	"evicted": "#e17055", "blocked": "#d63031", "replacement": "#00b894", "placed": "#0984e3",
	"bind-refused": "#0984e3", "admitted": "#d63031", "drained": "#00b894", "cancelled": "#e67e22",
	"restored": "#00cec9", "deadline": "#d63031",
}

// svgDoc accumulates SVG elements.
type svgDoc struct {
	b strings.Builder
	y float64
}

func (d *svgDoc) add(format string, args ...any) { fmt.Fprintf(&d.b, format+"\n", args...) }

func (d *svgDoc) text(x, y float64, size int, fill, anchor, weight, s string) {
	d.add(`<text x="%.1f" y="%.1f" font-size="%d" fill="%s" text-anchor="%s" font-weight="%s">%s</text>`,
		x, y, size, fill, anchor, weight, html.EscapeString(s))
}

// renderSVG draws the report.
func renderSVG(r *report) string {
	body := &svgDoc{y: 30}
	verdict := "every expectation held"
	if !r.Held {
		verdict = "some expectations did NOT hold"
	}
	body.text(20, body.y, 18, "#2d3436", "start", "bold", fmt.Sprintf("termgate demo: %s on %d kwok nodes, %s", plural(len(r.Scenarios), "scenario"), r.Nodes, verdict))
	body.y += 22
	legend(body)
	body.y += 20
	for i, s := range r.Scenarios {
		panel(body, i+1, s)
	}
	var out strings.Builder
	fmt.Fprintf(&out, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="Helvetica, Arial, sans-serif">`+"\n",
		svgWidth, body.y+10, svgWidth, body.y+10)
	fmt.Fprintf(&out, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	out.WriteString(body.b.String())
	out.WriteString("</svg>\n")
	return out.String()
}

// plural writes n with its noun, "1 scenario", "2 scenarios".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func legend(d *svgDoc) {
	items := []struct{ kind, label string }{
		{"marked", "node marked"}, {"wave", "drain wave"}, {"evicted", "pod evicted → gone"}, {"blocked", "PDB said 429"},
		{"replacement", "replacement Ready"}, {"bind-refused", "bind refused"}, {"restored", "node restored"},
	}
	x := 20.0
	for _, it := range items {
		marker(d, it.kind, x+5, d.y-4)
		d.text(x+14, d.y, 11, "#2d3436", "start", "normal", it.label)
		x += 20 + float64(len(it.label))*6.2
	}
}

// panel draws one scenario.
func panel(d *svgDoc, n int, s scenarioReport) {
	d.y += 18
	badge, color := "HELD", "#00b894"
	if !s.Held {
		badge, color = "NOT HELD", "#d63031"
	}
	d.add(`<rect x="20" y="%.1f" width="%d" height="18" rx="3" fill="%s"/>`, d.y-13, 8*len(badge)+12, color)
	d.text(26, d.y, 12, "#ffffff", "start", "bold", badge)
	head := fmt.Sprintf("%d  %s", n, s.Name)
	x := float64(8*len(badge) + 44)
	d.text(x, d.y, 14, "#2d3436", "start", "bold", head)
	d.text(x+9*float64(len(head))+12, d.y, 12, "#636e72", "start", "normal", fmt.Sprintf("%s (node %s)", s.Title, s.Node))
	d.y += 12
	budgetBar(d, s)
	d.y += 8
	detail(d, s)
	lbTimelines(d, s)
	d.add(`<line x1="20" y1="%.1f" x2="%d" y2="%.1f" stroke="#dfe6e9"/>`, d.y+6, svgWidth-20, d.y+6)
	d.y += 26
}

// budgetBar draws the whole deadline and how much of it the drain used.
func budgetBar(d *svgDoc, s scenarioReport) {
	if s.DeadlineMs == nil || *s.DeadlineMs <= 0 {
		return
	}
	deadline := float64(*s.DeadlineMs)
	w := float64(plotRight - plotLeft)
	d.text(plotLeft-10, d.y+11, 11, "#2d3436", "end", "normal", "deadline budget")
	d.add(`<rect x="%d" y="%.1f" width="%.1f" height="12" fill="#dfe6e9" rx="2"/>`, plotLeft, d.y, w)
	used, fill, label := 0.0, "#00b894", ""
	switch {
	case s.DrainMs != nil:
		used = float64(*s.DrainMs)
		label = fmt.Sprintf("drained in %.2f s of %.0f s (%.0f%%)", used/1000, deadline/1000, 100*used/deadline)
	case s.RestoredMs != nil:
		used, fill = float64(*s.RestoredMs), "#00cec9"
		label = fmt.Sprintf("cancelled, restored at %.2f s of %.0f s", used/1000, deadline/1000)
	default:
		used, fill = deadline, "#d63031"
		label = fmt.Sprintf("not drained by the %.0f s deadline", deadline/1000)
	}
	d.add(`<rect x="%d" y="%.1f" width="%.1f" height="12" fill="%s" rx="2"/>`, plotLeft, d.y, math.Max(2, w*math.Min(1, used/deadline)), fill)
	d.text(plotRight, d.y+26, 11, "#2d3436", "end", "normal", label)
	d.y += 30
}

// scale maps milliseconds onto the plot.
type scale struct{ max float64 }

func (s scale) x(ms int64) float64 {
	return plotLeft + float64(plotRight-plotLeft)*math.Min(float64(ms), s.max)/s.max
}

// niceMax rounds the zoomed scale up to a readable span.
func niceMax(ms int64) float64 {
	for _, m := range []float64{500, 1000, 2000, 3000, 5000, 10000, 15000, 20000, 30000, 45000, 60000, 90000, 120000} {
		if float64(ms)*1.08 <= m {
			return m
		}
	}
	return float64(ms) * 1.1
}

func tickStep(max float64) float64 {
	for _, s := range []float64{100, 200, 500, 1000, 2000, 5000, 10000, 20000} {
		if max/s <= 10 {
			return s
		}
	}
	return 30000
}

// podRow is one evicted pod's bar.
type podRow struct {
	name           string
	evicted, gone  int64
	hasGone        bool
	blocked        []int64
	firstSeenOrder int
}

func podRows(s scenarioReport) []*podRow {
	rows := map[string]*podRow{}
	get := func(name string) *podRow {
		r, ok := rows[name]
		if !ok {
			r = &podRow{name: name, evicted: -1, firstSeenOrder: len(rows)}
			rows[name] = r
		}
		return r
	}
	for _, e := range s.Timeline {
		switch e.Kind {
		case "evicted":
			get(e.Subject).evicted = e.Ms
		case "gone":
			r := get(e.Subject)
			r.gone, r.hasGone = e.Ms, true
		case "blocked":
			r := get(e.Subject)
			r.blocked = append(r.blocked, e.Ms)
		}
	}
	var out []*podRow
	for _, r := range rows {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if (a.evicted < 0) != (b.evicted < 0) {
			return a.evicted >= 0 // evicted pods first, blocked-only last
		}
		if a.evicted != b.evicted {
			return a.evicted < b.evicted
		}
		return a.firstSeenOrder < b.firstSeenOrder
	})
	return out
}

// detail draws the zoomed timeline of one scenario.
func detail(d *svgDoc, s scenarioReport) {
	var last int64 = 100
	for _, e := range s.Timeline {
		last = max(last, e.Ms)
	}
	sc := scale{max: niceMax(last)}
	rows := podRows(s)
	shown := min(len(rows), maxPodRows)
	nRows := 3 + shown
	top, bottom := d.y, d.y+float64(nRows*rowHeight)+4
	axis(d, sc, top, bottom)
	y := top + rowHeight
	d.text(plotLeft-10, y-3, 11, "#2d3436", "end", "bold", "node "+s.Node)
	// The node row's markers, so that a step's label is not written over
	// one (a cancellation's label would cover the restore that follows it).
	var markers []float64
	for _, e := range s.Timeline {
		if rowMarker(e.Kind) {
			markers = append(markers, sc.x(e.Ms))
		}
	}
	lastLabel, lastLeft := -1000.0, false
	for _, e := range s.Timeline {
		switch e.Kind {
		case "wave", "escalated", "cancelled", "deadline":
			x := sc.x(e.Ms)
			d.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="3,3"/>`, x, top, x, bottom, palette[e.Kind])
			label := waveLabel(e)
			anchor, lx := labelSide(x, label, lastLabel, lastLeft, markers)
			lastLabel, lastLeft = x, anchor == "end"
			d.text(lx, y-4, 10, palette[e.Kind], anchor, "normal", label)
		default:
			if rowMarker(e.Kind) {
				marker(d, e.Kind, sc.x(e.Ms), y-7)
			}
		}
	}
	for _, r := range rows[:shown] {
		y += rowHeight
		d.text(plotLeft-10, y-4, 10, "#636e72", "end", "normal", shortPod(r.name))
		if r.evicted >= 0 {
			end, color := int64(sc.max), "#fab1a0"
			if r.hasGone {
				end, color = r.gone, palette["evicted"]
			}
			x0, x1 := sc.x(r.evicted), sc.x(end)
			d.add(`<rect x="%.1f" y="%.1f" width="%.1f" height="8" fill="%s" rx="2"><title>%s evicted +%dms</title></rect>`,
				x0, y-12, math.Max(3, x1-x0), color, html.EscapeString(r.name), r.evicted)
		}
		for _, b := range r.blocked {
			marker(d, "blocked", sc.x(b), y-8)
		}
	}
	if len(rows) > shown {
		d.text(plotLeft-10, y+10, 10, "#636e72", "end", "italic", fmt.Sprintf("+%d more pods", len(rows)-shown))
	}
	y += rowHeight
	d.text(plotLeft-10, y-4, 10, "#2d3436", "end", "normal", "replacements Ready")
	for _, e := range s.Timeline {
		if e.Kind == "replacement" || e.Kind == "placed" {
			marker(d, e.Kind, sc.x(e.Ms), y-8)
		}
	}
	y += rowHeight
	d.text(plotLeft-10, y-4, 10, "#2d3436", "end", "normal", "binds refused")
	for _, e := range s.Timeline {
		if e.Kind == "bind-refused" || e.Kind == "admitted" {
			marker(d, e.Kind, sc.x(e.Ms), y-8)
		}
	}
	d.y = bottom + 18
}

// rowMarker reports whether an event kind is drawn as a marker on the
// node's row.
func rowMarker(kind string) bool {
	switch kind {
	case "notice", "marked", "drained", "restored":
		return true
	}
	return false
}

// labelSide places the label of a step line drawn at x: right of the line
// unless that would overprint the previous step's label (written right of
// its line) or a marker on the node row, then left of it.
func labelSide(x float64, label string, lastLabel float64, lastLeft bool, markers []float64) (anchor string, lx float64) {
	width := labelWidth * float64(len(label))
	covers := func(from, to float64) bool {
		for _, m := range markers {
			if m+markerRadius >= from && m-markerRadius <= to {
				return true
			}
		}
		return false
	}
	right := (x-lastLabel >= 90 || lastLeft) && !covers(x+3, x+3+width)
	if right || covers(x-3-width, x-3) {
		return "start", x + 3
	}
	return "end", x - 3
}

// labelWidth is the width of one character of a 10 px label, and
// markerRadius half a marker's width: both what the drawing uses.
const (
	labelWidth   = 5.5
	markerRadius = 5.0
)

func waveLabel(e eventReport) string {
	if e.Kind == "wave" || e.Kind == "escalated" {
		if step, _, ok := strings.Cut(e.Detail, ":"); ok {
			return step
		}
	}
	return e.Kind
}

// axis draws the time grid and its labels under the rows.
func axis(d *svgDoc, sc scale, top, bottom float64) {
	step := tickStep(sc.max)
	for t := 0.0; t <= sc.max+1; t += step {
		x := sc.x(int64(t))
		d.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#f1f2f6"/>`, x, top, x, bottom)
		label := fmt.Sprintf("+%.0f ms", t)
		if sc.max >= 2000 {
			label = fmt.Sprintf("+%.1f s", t/1000)
		}
		d.text(x, bottom+12, 10, "#636e72", "middle", "normal", label)
	}
}

// marker draws the symbol of an event kind centred on (x, y).
func marker(d *svgDoc, kind string, x, y float64) {
	c := palette[kind]
	switch kind {
	case "marked", "restored":
		d.add(`<path d="M%.1f %.1f l5 5 l-5 5 l-5 -5 z" fill="%s"/>`, x, y-5, c)
	case "blocked", "admitted":
		d.add(`<path d="M%.1f %.1f l6 6 M%.1f %.1f l-6 6" stroke="%s" stroke-width="2"/>`, x-3, y-3, x+3, y-3, c)
	case "replacement", "drained":
		d.add(`<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>`, x, y, c)
	case "placed":
		d.add(`<circle cx="%.1f" cy="%.1f" r="4" fill="none" stroke="%s" stroke-width="1.5"/>`, x, y, c)
	case "bind-refused":
		d.add(`<rect x="%.1f" y="%.1f" width="8" height="8" fill="%s"/>`, x-4, y-4, c)
	case "evicted":
		d.add(`<rect x="%.1f" y="%.1f" width="12" height="8" fill="%s" rx="2"/>`, x-6, y-4, c)
	case "wave":
		d.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="3,3"/>`, x, y-6, x, y+6, c)
	default:
		d.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`, x, y-6, x, y+6, c)
	}
}

// shortPod drops the namespace and shortens long names for the row label.
func shortPod(key string) string {
	_, name, ok := strings.Cut(key, "/")
	if !ok {
		name = key
	}
	if len(name) > 28 {
		name = name[:27] + "…"
	}
	return name
}
