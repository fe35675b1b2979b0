package monitoring

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/metricref"
	"termgate.dev/termgate/test/testenv"
)

// evaluations is how many rule evaluations a condition gets to show up:
// a scrape, then the evaluation that sees it, with one of each to spare.
const evaluations = 4

func budget() time.Duration { return evaluations * prom.Interval }

// startupBudget covers Prometheus' first scrape of every target and the
// first evaluation of every rule: the targets are up within a scrape
// interval of the start, the rules within one evaluation after.
func startupBudget() time.Duration { return 10 * prom.Interval }

// waitAllEvaluated waits until every target is up and every rule has been
// evaluated, without error, after since.
func waitAllEvaluated(t *testing.T, since time.Time) promv1.RulesResult {
	t.Helper()
	var rules promv1.RulesResult
	testenv.Eventually(t, startupBudget()+budget(), "every target up and every rule evaluated", func(ctx context.Context) (bool, string, error) {
		targets, err := prom.API.Targets(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		for _, tg := range targets.Active {
			if tg.Health != promv1.HealthGood {
				return false, fmt.Sprintf("target %s of %s: %s %s", tg.ScrapeURL, tg.Labels["job"], tg.Health, tg.LastError), nil
			}
		}
		if len(targets.Active) != 3 {
			return false, fmt.Sprintf("%d active targets", len(targets.Active)), nil
		}
		if rules, err = prom.API.Rules(ctx, nil); err != nil {
			return false, err.Error(), nil
		}
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				a, ok := r.(promv1.AlertingRule)
				if !ok {
					return false, "", fmt.Errorf("group %s holds a %T; the chart's file holds alerts only", g.Name, r)
				}
				if a.Health == promv1.RuleHealthBad {
					return false, "", fmt.Errorf("alert %s does not evaluate: %s", a.Name, a.LastError)
				}
				if a.LastEvaluation.Before(since) {
					return false, "alert " + a.Name + " not evaluated yet", nil
				}
			}
		}
		return len(rules.Groups) > 0, fmt.Sprintf("%d groups", len(rules.Groups)), nil
	})
	return rules
}

// alerts returns the pending and firing alerts, by name.
func alerts(t *testing.T) map[string]promv1.AlertState {
	t.Helper()
	res, err := prom.API.Alerts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]promv1.AlertState{}
	for _, a := range res.Alerts {
		out[string(a.Labels["alertname"])] = a.State
	}
	return out
}

// Runs first: with termgate idle, every rule evaluates and none fires or
// is pending.
func TestAQuietClusterFiresNoAlert(t *testing.T) {
	testenv.NeedCluster(t, env)
	start := time.Now()
	rules := waitAllEvaluated(t, start)
	n := 0
	for _, g := range rules.Groups {
		n += len(g.Rules)
	}
	// A few more evaluations on samples of several scrapes, for rate
	// windows that need two.
	waitAllEvaluated(t, time.Now().Add(2*prom.Interval))
	if got := alerts(t); len(got) != 0 {
		t.Fatalf("on a quiet cluster, alerts %v (of %d rules)", got, n)
	}
	t.Logf("%d rules loaded and evaluated in %s, none pending or firing", n, time.Since(start).Round(time.Millisecond))
}

// A pod that cannot leave (a finalizer holds it) keeps the drain running
// to its deadline: the agent records outcome deadline and the alert fires
// within a few evaluations of the deadline.
func TestADrainPastItsDeadlineFiresTheDeadlineAlert(t *testing.T) {
	testenv.NeedCluster(t, env)
	waitAllEvaluated(t, time.Now())
	ns := testenv.Namespace(t, env.Client)
	held := testenv.CreatePod(t, env.Client, kit.Pod(ns, "held", kit.OnNode(spot.Name), func(p *corev1.Pod) {
		p.Finalizers = []string{"example.com/hold"}
	}))
	t.Cleanup(func() {
		_, _ = env.Client.CoreV1().Pods(ns).Patch(context.Background(), held.Name, "application/merge-patch+json",
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	testenv.ExpectPodsRunning(t, env.Client, ns, nil, 1, 30*time.Second)
	metadata.SetPreempted(true)
	t.Cleanup(func() { metadata.SetPreempted(false) })

	var mark nodemark.Mark
	testenv.Eventually(t, 5*time.Second, "the node marked", func(ctx context.Context) (bool, string, error) {
		n := testenv.GetNode(t, env.Client, spot.Name)
		m, ok, err := nodemark.Read(n.Annotations)
		if err != nil || !ok {
			return false, fmt.Sprintf("no mark (%v)", err), nil
		}
		mark = m
		return true, "", nil
	})
	wait := time.Until(mark.Deadline) + budget()
	var fired time.Time
	testenv.Eventually(t, wait, "TermgateDrainMissedDeadline firing", func(ctx context.Context) (bool, string, error) {
		got := alerts(t)
		if got["TermgateDrainMissedDeadline"] == promv1.AlertStateFiring {
			fired = time.Now()
			return true, "", nil
		}
		return false, fmt.Sprintf("alerts %v", got), nil
	})
	if fired.Before(mark.Deadline) {
		t.Errorf("the deadline alert fired at %s, before the deadline %s", fired, mark.Deadline)
	}
	t.Logf("deadline %s after the notice; the alert fired %s after the deadline; all alerts now %v",
		mark.Deadline.Sub(mark.NoticeTime), fired.Sub(mark.Deadline).Round(time.Millisecond), alerts(t))
}

// Every metric an alert or a dashboard panel names, as Prometheus' own
// parser reads the expression, is one Prometheus holds series of from
// these scrapes; the API server's counters that exist only from their
// first event are the named exception.
func TestEveryMetricTheAlertsAndTheDashboardNameIsScraped(t *testing.T) {
	testenv.NeedCluster(t, env)
	rules := waitAllEvaluated(t, time.Now())
	exprs := map[string]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if a, ok := r.(promv1.AlertingRule); ok {
				exprs["alert "+a.Name] = a.Query
			}
		}
	}
	for title, e := range dashboardExprs(t) {
		exprs["panel "+title] = e
	}
	checked := map[string]bool{}
	for where, e := range exprs {
		names, err := prom.MetricNames(t.Context(), e)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		for _, n := range names {
			if checked[n] || bornAtFirstEvent[n] {
				continue
			}
			checked[n] = true
			ok, err := prom.HasSeries(t.Context(), metricref.BaseName(n))
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Errorf("%s names %s, of which Prometheus scraped no series", where, n)
			}
		}
	}
	if len(checked) < 10 {
		t.Errorf("only %d metric names checked: %v", len(checked), slices.Sorted(maps.Keys(checked)))
	}
	t.Logf("%d expressions, %d metric names, each scraped", len(exprs), len(checked))
}

// bornAtFirstEvent are the API server's vectors that have no series until
// their first event (a webhook call let through, a request rejected by
// priority and fairness): a quiet cluster cannot show them.
var bornAtFirstEvent = map[string]bool{
	"apiserver_admission_webhook_fail_open_count":   true,
	"apiserver_flowcontrol_rejected_requests_total": true,
}

// dashboardExprs are the dashboard's queries with Grafana's variables
// filled in as Grafana fills them.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("$__rate_interval", "1m", "$agent_job", agentJob, "$webhook_job", webhookJob)
	q, err := metricref.DashboardQueries(filepath.Join(root, "charts", "termgate", "files", "dashboard.json"), fill)
	if err != nil {
		t.Fatal(err)
	}
	return q
}
