package scenario

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/azurefake"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/ec2fake"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
)

// Expectation budgets. Marking is one metadata read and one patch away
// from the notice, restoring one patch from the cancellation: both take
// milliseconds, so two seconds means something is wrong. Replacements get
// the scheduler's longest backoff (10 s) plus time to start.
const (
	markWithin    = 2 * time.Second
	restoreWithin = 2 * time.Second
	replaceWithin = 15 * time.Second
	tick          = 250 * time.Millisecond
)

// Check is one expectation of a scenario and what was seen.
type Check struct {
	Expect string `json:"expect"`
	Held   bool   `json:"held"`
	Seen   string `json:"seen"`
}

// Result is what a scenario showed.
type Result struct {
	Name, Title, Node string
	Held              bool
	Checks            []Check
	// Times since the notice; the matching flag says whether it happened.
	MarkedAt, Deadline, DrainedAt, RestoredAt time.Duration
	Marked, Drained, Restored                 bool
	// Evicted pods began terminating on the node; Blocked pods had an
	// eviction refused by a PodDisruptionBudget at least once.
	Evicted, Blocked, BindsRefused, Replacements int
	// Lost names the pods lost (see the package doc); budget shortfalls
	// are added to LostCount.
	Lost      []string
	LostCount int
	Budgets   []BudgetFigure
	Timeline  []Event
	// Took is the scenario's wall time, set-up and reset included.
	Took time.Duration
	// LB holds the load-balancer scenario's runs, with their request
	// timelines.
	LB []LBRun
}

// Failures lists the expectations that did not hold.
func (r *Result) Failures() []string {
	var out []string
	for _, c := range r.Checks {
		if !c.Held {
			out = append(out, fmt.Sprintf("%s: %s", c.Expect, c.Seen))
		}
	}
	return out
}

// Progress is a scenario's state while it plays.
type Progress struct {
	Phase                 string
	Elapsed, Deadline     time.Duration
	OnNode, Evicted       int
	Replacements, Blocked int
}

// Observer receives a scenario as it plays; nil fields are skipped.
type Observer struct {
	Begin    func(s Scenario, node string)
	Event    func(s Scenario, e Event)
	Progress func(s Scenario, p Progress)
}

// run is one playing of a scenario: the steps are its methods.
type run struct {
	ctx   context.Context
	env   *Env
	s     Scenario
	obs   Observer
	node  string
	md    *gcefake.Server // nil on the other clouds' nodes
	ec2   *ec2fake.Server
	az    *azurefake.Server
	spec  cluster.NodeSpec
	tl    *Timeline
	w     *watcher
	res   *Result
	phase string
	// cutoff is when the scenario stops waiting: the deadline, or less.
	cutoff time.Duration
	// created names the pods the scenario made itself, to delete after.
	created []string
}

// Run plays a scenario. The error is for a broken environment (API server
// gone, watch failed); expectations that fail make Result.Held false.
func Run(ctx context.Context, env *Env, s Scenario, obs Observer) (*Result, error) {
	began := time.Now()
	node := nthNode(env.Nodes, s.Node, s.Index)
	res := &Result{Name: s.Name, Title: s.Title, Node: node}
	if node == "" {
		res.Checks = append(res.Checks, Check{Expect: fmt.Sprintf("the cluster has %s node #%d", s.Node, s.Index+1), Seen: "none: use more nodes"})
		return res, nil
	}
	r := &run{ctx: ctx, env: env, s: s, obs: obs, node: node, res: res}
	var err error
	for _, n := range env.Nodes {
		if n.Name == node {
			r.spec = n
		}
	}
	switch kindOf(r.spec) {
	case NodeAWSSpot:
		r.ec2, err = env.EC2(node)
	case NodeAzureSpot:
		r.az, err = env.Azure(node)
	default:
		r.md, err = env.Metadata(node)
	}
	if err != nil {
		return nil, err
	}
	r.tl = NewTimeline(clock.RealClock{}, func(e Event) {
		if obs.Event != nil {
			obs.Event(s, e)
		}
	})
	r.w = newWatcher(env.Client, node, r.tl, env.Workload.Budgets)
	r.w.ignoreNamespaces = env.ownNamespaces
	if err := r.w.start(ctx); err != nil {
		return nil, err
	}
	if obs.Begin != nil {
		obs.Begin(s, node)
	}
	playErr := r.s.play(r)
	r.w.close()
	r.finish()
	resetErr := r.reset()
	res.Took = time.Since(began)
	return res, errors.Join(playErr, resetErr)
}

// check records an expectation.
func (r *run) check(expect string, held bool, seen string, args ...any) {
	r.res.Checks = append(r.res.Checks, Check{Expect: expect, Held: held, Seen: fmt.Sprintf(seen, args...)})
}

// waitFor waits until cond holds on the watch's figures, reporting progress
// meanwhile, or until budget passes. It never calls the API: the watches
// feed it.
func (r *run) waitFor(phase string, budget time.Duration, cond func(counts) bool) bool {
	r.phase = phase
	t := time.NewTimer(budget)
	defer t.Stop()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		changed := r.tl.Changed()
		c := r.w.snapshot()
		if cond(c) {
			return true
		}
		r.progress(c)
		select {
		case <-r.ctx.Done():
			return false
		case <-t.C:
			return cond(r.w.snapshot())
		case <-changed:
		case <-ticker.C:
		}
	}
}

func (r *run) progress(c counts) {
	if r.obs.Progress == nil {
		return
	}
	var deadline time.Duration
	if c.marked {
		deadline = c.mark.Deadline.Sub(r.tl.Notice())
	}
	r.obs.Progress(r.s, Progress{
		Phase: r.phase, Elapsed: r.tl.Since(), Deadline: deadline, OnNode: c.onNode,
		Evicted: c.evicted, Replacements: c.replacements, Blocked: c.blocked,
	})
}

// untilCutoff is the time left before the scenario's cut-off.
func (r *run) untilCutoff() time.Duration { return max(r.cutoff-r.tl.Since(), 0) }

// announce makes time zero and has the metadata server give the notice.
func (r *run) announce(detail string, give func()) {
	r.w.armBudgets()
	r.tl.Start(detail)
	give()
}

// expectMarked waits for the taint and mark and checks the deadline the
// agent derived from the notice.
func (r *run) expectMarked(reason nodemark.Reason, notice time.Duration) bool {
	ok := r.waitFor("marking", markWithin, func(c counts) bool { return c.marked })
	c := r.w.snapshot()
	if !ok {
		r.check(fmt.Sprintf("node marked within %s", markWithin), false, "no taint and mark after %s", markWithin)
		return false
	}
	r.check(fmt.Sprintf("node marked within %s", markWithin), true, "marked at +%s", fmtDur(c.markedAt))
	m := c.mark
	r.res.Deadline = m.Deadline.Sub(r.tl.Notice())
	r.cutoff = r.res.Deadline
	r.check(fmt.Sprintf("mark says %s, deadline %s after the notice", reason, notice),
		m.Reason == reason && m.Deadline.Sub(m.NoticeTime) == notice,
		"reason %s, deadline %s after the agent saw the notice", m.Reason, m.Deadline.Sub(m.NoticeTime))
	return true
}

// awaitDrain waits until every pod the policy evicts has left the node, or
// the deadline passes.
func (r *run) awaitDrain() {
	ok := r.waitFor("draining", r.untilCutoff(), func(c counts) bool { return c.drained })
	c := r.w.snapshot()
	if !ok {
		r.check("every pod the policy evicts gone before the deadline", false,
			"%d still on the node at the deadline (+%s)", c.onNode, fmtDur(r.res.Deadline))
		return
	}
	r.check("every pod the policy evicts gone before the deadline", c.drainedAt < r.res.Deadline,
		"drained at +%s, deadline +%s", fmtDur(c.drainedAt), fmtDur(r.res.Deadline))
}

// awaitReplacements waits until every departed pod has a Ready replacement
// on another node.
func (r *run) awaitReplacements(deadlinePassed bool) {
	r.waitFor("replacing", replaceWithin, func(c counts) bool {
		return len(lostPods(r.w.departures(deadlinePassed), c.replaced)) == 0
	})
}

// expectNothingLost checks the loss figures (see the package doc).
func (r *run) expectNothingLost(deadlinePassed bool) {
	c := r.w.snapshot()
	lost := lostPods(r.w.departures(deadlinePassed), c.replaced)
	short := 0
	for _, b := range c.budgets {
		short += b.shortfall()
		r.check(fmt.Sprintf("PDB %s held: at least %d Ready", b.App, b.Guarantee), b.MinReady >= b.Guarantee,
			"fewest Ready: %d", b.MinReady)
	}
	r.check("no pod lost", len(lost) == 0, "%d departed pods without a Ready replacement %v", len(lost), lost)
	r.res.Lost, r.res.LostCount = lost, len(lost)+short
}

// finish fills the result's figures from the watch.
func (r *run) finish() {
	c := r.w.snapshot()
	res := r.res
	res.Marked, res.MarkedAt = c.marked, c.markedAt
	res.Drained, res.DrainedAt = c.drained, c.drainedAt
	res.Restored, res.RestoredAt = c.restored, c.restoredAt
	res.Evicted, res.Blocked, res.Replacements = c.evicted, c.blocked, c.replacements
	res.BindsRefused += c.bindsRefused
	res.Budgets = c.budgets
	res.Timeline = r.tl.Events()
	res.Held = len(res.Checks) > 0 && len(res.Failures()) == 0
}

// reset withdraws the notice so the node serves the next scenario, as a
// fresh VM would, and waits until the agent has unmarked it.
func (r *run) reset() error {
	switch {
	case r.ec2 != nil:
		r.ec2.SetInstanceAction("", time.Time{})
		r.ec2.SetRebalance(time.Time{})
		r.ec2.SetScheduled()
	case r.az != nil:
		r.az.Set()
	default:
		r.md.SetPreempted(false)
		r.md.SetMaintenanceEvent("NONE")
	}
	err := kit.Poll(r.ctx, 10*time.Second, func(ctx context.Context) (bool, string, error) {
		n, err := r.env.Client.CoreV1().Nodes().Get(ctx, r.node, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return unmarked(n), "node still marked", nil
	})
	if err != nil {
		return fmt.Errorf("reset node %s after %s: %w", r.node, r.s.Name, err)
	}
	return nil
}

// expectUnmarkedAtStart refuses to play on a node that is already marked.
func (r *run) expectUnmarkedAtStart() error {
	n, err := r.env.Client.CoreV1().Nodes().Get(r.ctx, r.node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read node %s: %w", r.node, err)
	}
	if !unmarked(n) {
		return fmt.Errorf("node %s is already marked before the scenario", r.node)
	}
	return nil
}

// podsOnNode lists the pods of an app on the scenario's node.
func (r *run) podsOnNode(app string) ([]corev1.Pod, error) {
	list, err := r.env.Client.CoreV1().Pods(r.env.Workload.Namespace).List(r.ctx, metav1.ListOptions{
		FieldSelector: "spec.nodeName=" + r.node, LabelSelector: "app=" + app,
	})
	if err != nil {
		return nil, fmt.Errorf("list %s pods on %s: %w", app, r.node, err)
	}
	return list.Items, nil
}
