package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/scenario"
)

// nonTTYProgressEvery spaces progress lines when the output is a log file:
// a CI log reads best with a line every few seconds, not a redraw.
const nonTTYProgressEvery = 5 * time.Second

// console prints the live timeline. On a terminal a status line at the
// bottom is redrawn in place; elsewhere progress is a plain line now and
// then, so CI logs stay readable.
type console struct {
	w   io.Writer
	tty bool

	mu       sync.Mutex
	status   string // the status line shown, TTY only
	lastLine time.Time
	count    int // scenarios begun
}

func newConsole(w io.Writer, tty bool) *console { return &console{w: w, tty: tty} }

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// println prints a line above the status line.
func (c *console) println(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.printlnLocked(format, args...)
}

func (c *console) printlnLocked(format string, args ...any) {
	if c.tty && c.status != "" {
		fmt.Fprint(c.w, "\r\033[K")
	}
	fmt.Fprintf(c.w, format+"\n", args...)
	if c.tty && c.status != "" {
		fmt.Fprint(c.w, c.status)
	}
}

func (c *console) clearStatus() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty && c.status != "" {
		fmt.Fprint(c.w, "\r\033[K")
	}
	c.status = ""
}

func (c *console) headline(nodes []cluster.NodeSpec, scenarios []scenario.Scenario) {
	var spot, gpu, od, other int
	for _, n := range nodes {
		switch {
		case n.Cloud != "" && n.Cloud != cluster.CloudGCE:
			other++
		case n.Spot:
			spot++
		case n.Accelerator != "":
			gpu++
		default:
			od++
		}
	}
	c.println("termgate demo: %d kwok nodes (GCE: %d Spot, %d GPU, %d on-demand; %d Spot on EC2 and Azure), %d scenario(s)", len(nodes), spot, gpu, od, other, len(scenarios))
}

func (c *console) step(format string, args ...any) { c.println("  ok  "+format, args...) }
func (c *console) note(format string, args ...any) { c.println("  ..  "+format, args...) }
func (c *console) warn(format string, args ...any) { c.println("  !!  "+format, args...) }

func (c *console) broken(err error) int {
	c.clearStatus()
	c.println("demo FAILED to run: %v", err)
	return exitBroken
}

// observer prints a scenario as it plays.
func (c *console) observer(total int) scenario.Observer {
	return scenario.Observer{
		Begin: func(s scenario.Scenario, node string) {
			c.mu.Lock()
			c.count++
			n := c.count
			c.mu.Unlock()
			c.println("")
			c.println("== %d/%d %s: %s (node %s)", n, total, s.Name, s.Title, node)
		},
		Event:    func(_ scenario.Scenario, e scenario.Event) { c.event(e) },
		Progress: func(_ scenario.Scenario, p scenario.Progress) { c.progress(p) },
	}
}

// event prints one timeline line: time since the notice, kind, subject,
// detail. Pods leaving are implied by their eviction and only drawn in the
// picture, to keep the text short.
func (c *console) event(e scenario.Event) {
	if e.Kind == scenario.KindGone {
		return
	}
	line := fmt.Sprintf("%10s  %-12s %s", "+"+ms(e.At), e.Kind, e.Subject)
	if e.Detail != "" {
		line += "  " + oneLine(e.Detail, 110)
	}
	c.println("%s", line)
}

func (c *console) progress(p scenario.Progress) {
	c.mu.Lock()
	defer c.mu.Unlock()
	line := progressLine(p)
	if c.tty {
		c.status = line
		fmt.Fprint(c.w, "\r\033[K"+line)
		return
	}
	if time.Since(c.lastLine) >= nonTTYProgressEvery {
		c.lastLine = time.Now()
		fmt.Fprintln(c.w, line)
	}
}

// progressLine draws the time used against the deadline as a bar.
func progressLine(p scenario.Progress) string {
	const width = 30
	bar := strings.Repeat(".", width)
	deadline := "?"
	if p.Deadline > 0 {
		filled := min(width, int(float64(width)*p.Elapsed.Seconds()/p.Deadline.Seconds()))
		bar = strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
		deadline = secs(p.Deadline)
	}
	return fmt.Sprintf("      [%s] %s of %s  %-10s on node %d, evicted %d, blocked %d, replacements Ready %d",
		bar, secs(p.Elapsed), deadline, p.Phase, p.OnNode, p.Evicted, p.Blocked, p.Replacements)
}

// result prints a scenario's verdict line.
func (c *console) result(r *scenario.Result) {
	c.clearStatus()
	verdict := "HELD"
	if !r.Held {
		verdict = "NOT HELD"
	}
	c.println("   => %s  %s", verdict, headlineFigures(r))
	for _, ch := range r.Checks {
		mark := "ok  "
		if !ch.Held {
			mark = "FAIL"
		}
		c.println("      %s %s (%s)", mark, ch.Expect, oneLine(ch.Seen, 140))
	}
}

func headlineFigures(r *scenario.Result) string {
	parts := []string{}
	if r.Marked {
		parts = append(parts, "marked +"+ms(r.MarkedAt))
	}
	if r.Drained {
		parts = append(parts, fmt.Sprintf("drained +%s of %s", ms(r.DrainedAt), secs(r.Deadline)))
	}
	if r.Restored {
		parts = append(parts, "restored +"+ms(r.RestoredAt))
	}
	parts = append(parts, fmt.Sprintf("%d lost", r.LostCount), fmt.Sprintf("%d replacements Ready", r.Replacements))
	if r.BindsRefused > 0 {
		parts = append(parts, fmt.Sprintf("%d binds refused", r.BindsRefused))
	}
	return strings.Join(parts, ", ")
}

// summary prints one row per scenario.
func (c *console) summary(results []*scenario.Result) {
	c.clearStatus()
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintln(c.w)
	tw := tabwriter.NewWriter(c.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tnode\theld\ttime to mark\tdrain / deadline\tpods lost\tevicted\tblocked by PDB\tbinds refused\treplacements Ready")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", r.Name, r.Node, yesNo(r.Held),
			orDash(r.Marked, ms(r.MarkedAt)), drainCell(r), r.LostCount, r.Evicted, r.Blocked, r.BindsRefused, r.Replacements)
	}
	tw.Flush()
	fmt.Fprintln(c.w)
}

func drainCell(r *scenario.Result) string {
	switch {
	case r.Drained:
		return fmt.Sprintf("%s / %s", secs(r.DrainedAt), secs(r.Deadline))
	case r.Restored:
		return "cancelled / " + secs(r.Deadline)
	case r.Marked:
		return "not done / " + secs(r.Deadline)
	}
	return "-"
}

func (c *console) failures(failed []string) {
	c.println("demo FAILED: %d expectation(s) did not hold:", len(failed))
	for _, f := range failed {
		c.println("  - %s", f)
	}
}

func (c *console) keep(kubeconfig string, logs []string) {
	c.println("")
	c.println("cluster kept (--keep). Try:")
	c.println("  KUBECONFIG=%s kubectl get nodes,pods -A -o wide", kubeconfig)
	c.println("logs: %s", strings.Join(logs, " "))
	c.println("Ctrl-C stops everything.")
}

func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func orDash(ok bool, s string) string {
	if !ok {
		return "-"
	}
	return s
}

// oneLine flattens and shortens text for a terminal line.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
