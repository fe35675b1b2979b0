package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"termgate.dev/termgate/test/scenario"
)

// Files the demo writes into its output directory.
const (
	reportFile = "report.json"
	svgFile    = "timeline.svg"
)

// report is report.json. Times are milliseconds since the scenario's
// notice; a null time means it did not happen.
type report struct {
	Generated  time.Time `json:"generated"`
	Nodes      int       `json:"nodes"`
	AgentFlags []string  `json:"agent_flags"`
	Webhook    string    `json:"webhook"`
	Certs      string    `json:"webhook_certificates"`
	// RealNode: termgate ran as pods on the real node (--real-node), with
	// the shipped DaemonSet's flags, not as local processes.
	RealNode  bool             `json:"real_node"`
	Held      bool             `json:"held"`
	Scenarios []scenarioReport `json:"scenarios"`
}

type scenarioReport struct {
	Name              string                  `json:"name"`
	Title             string                  `json:"title"`
	Node              string                  `json:"node"`
	Held              bool                    `json:"held"`
	TimeToMarkMs      *int64                  `json:"time_to_mark_ms"`
	DeadlineMs        *int64                  `json:"deadline_ms"`
	DrainMs           *int64                  `json:"drain_ms"`
	RestoredMs        *int64                  `json:"restored_ms"`
	Evicted           int                     `json:"evicted"`
	BlockedByPDB      int                     `json:"blocked_by_pdb"`
	BindsRefused      int                     `json:"binds_refused"`
	ReplacementsReady int                     `json:"replacements_ready"`
	PodsLost          int                     `json:"pods_lost"`
	LostPods          []string                `json:"lost_pods"`
	Budgets           []scenario.BudgetFigure `json:"budgets"`
	Checks            []scenario.Check        `json:"checks"`
	Timeline          []eventReport           `json:"timeline"`
	TookMs            int64                   `json:"took_ms"`
	// LB holds the load-balancer scenario's runs (lb-preemption): the
	// request timelines with and without the wait.
	LB []scenario.LBRun `json:"lb_runs,omitempty"`
}

type eventReport struct {
	Ms      int64  `json:"ms"`
	Kind    string `json:"kind"`
	Subject string `json:"subject,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

func newReport(nodes int, certs string, env *scenario.Env, results []*scenario.Result) *report {
	r := &report{Generated: time.Now().UTC(), Nodes: nodes, AgentFlags: env.AgentFlags, Webhook: "running", Certs: certs, Held: len(results) > 0}
	if env.WebhookErr != nil {
		r.Webhook = "not running: " + env.WebhookErr.Error()
	}
	r.RealNode = env.RealNode != nil
	for _, res := range results {
		r.Held = r.Held && res.Held
		r.Scenarios = append(r.Scenarios, scenarioJSON(res))
	}
	return r
}

func scenarioJSON(res *scenario.Result) scenarioReport {
	s := scenarioReport{
		Name: res.Name, Title: res.Title, Node: res.Node, Held: res.Held,
		TimeToMarkMs: msIf(res.Marked, res.MarkedAt), DeadlineMs: msIf(res.Deadline > 0, res.Deadline),
		DrainMs: msIf(res.Drained, res.DrainedAt), RestoredMs: msIf(res.Restored, res.RestoredAt),
		Evicted: res.Evicted, BlockedByPDB: res.Blocked, BindsRefused: res.BindsRefused,
		ReplacementsReady: res.Replacements, PodsLost: res.LostCount, LostPods: res.Lost,
		Budgets: res.Budgets, Checks: res.Checks, TookMs: res.Took.Milliseconds(), LB: res.LB,
	}
	if s.LostPods == nil {
		s.LostPods = []string{}
	}
	for _, e := range res.Timeline {
		s.Timeline = append(s.Timeline, eventReport{Ms: e.At.Milliseconds(), Kind: string(e.Kind), Subject: e.Subject, Detail: e.Detail})
	}
	return s
}

func msIf(ok bool, d time.Duration) *int64 {
	if !ok {
		return nil
	}
	v := d.Milliseconds()
	return &v
}

// write saves report.json and timeline.svg into dir.
func (r *report) write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, reportFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, svgFile), []byte(renderSVG(r)), 0o644); err != nil {
		return fmt.Errorf("write timeline picture: %w", err)
	}
	return nil
}
