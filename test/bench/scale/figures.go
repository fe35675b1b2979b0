package main

import (
	"fmt"
	"strings"

	"termgate.dev/termgate/test/bench/asdeployed"
)

// figures are the run's keys (docs/benchmarks.md defines each).
func figures(r *result, f *floorResult, podsPerNode int, watchesPerAgent float64) []asdeployed.Figure {
	all := append(append([]float64{}, r.marksInProcess...), r.marksProcess...)
	unchecked, ownRefused, podReads := 0.0, 0.0, 0.0
	for k, v := range r.webhookRise {
		switch {
		case strings.Contains(k, `verdict="allowed-unknown-node"`), strings.Contains(k, `verdict="allowed-unconfirmed"`),
			strings.Contains(k, `verdict="allowed-pod-unreadable"`):
			unchecked += v
		case strings.Contains(k, `gate="agent"`) && strings.Contains(k, `verdict="denied`):
			ownRefused += v
		case strings.HasPrefix(k, `termgate_webhook_pod_reads_total{gate="agent"`):
			podReads += v
		}
	}
	failOpen, apf := 0.0, 0.0
	for k, v := range r.apiRise {
		switch {
		case strings.HasPrefix(k, "apiserver_admission_webhook_fail_open_count") && strings.Contains(k, "termgate.dev"):
			failOpen += v
		case strings.HasPrefix(k, "apiserver_flowcontrol_rejected_requests_total"):
			apf += v
		}
	}
	evictions := 0.0
	for _, v := range r.results {
		evictions += v
	}
	ratio := 0.0
	if r.span > 0 {
		ratio = f.span.Seconds() / r.span.Seconds()
	}
	group := func(xs []float64) string {
		return fmt.Sprintf("p50 %.0f, p99 %.0f, max %.0f ms", asdeployed.Percentile(xs, 50), asdeployed.Percentile(xs, 99), asdeployed.Percentile(xs, 100))
	}
	return []asdeployed.Figure{
		{Key: "scale_mark_ms_p50", Value: asdeployed.Percentile(all, 50), Note: "in-process " + group(r.marksInProcess)},
		{Key: "scale_mark_ms_p99", Value: asdeployed.Percentile(all, 99), Target: "<= 1000", Note: "processes " + group(r.marksProcess)},
		{Key: "scale_mark_ms_max", Value: asdeployed.Percentile(all, 100), Target: "<= 2000"},
		{Key: "scale_all_marked_ms", Value: float64(r.allMarked.Milliseconds()), Note: "first notice to last taint"},
		{Key: "scale_drains_done_by_deadline", Value: r.doneByDeadline, Target: "1.0"},
		{Key: "scale_evictions_per_s_peak", Value: r.peakPerSecond, Note: fmt.Sprintf("all evicted over %.1f s", r.span.Seconds())},
		{Key: "scale_evictions_to_floor_ratio", Value: ratio, Target: ">= 0.8", Note: fmt.Sprintf("floor: over %.1f s, peak %.0f/s, refusals asked again %v", f.span.Seconds(), f.peakPerSecond, f.refused)},
		{Key: "scale_eviction_429_pdb", Value: r.results["blocked"], Note: "the agents' evictions a PodDisruptionBudget refused"},
		{Key: "scale_eviction_429_apf", Value: r.results["throttled"], Target: fmt.Sprintf("<= %.0f", evictions/100), Note: fmt.Sprintf("of %.0f eviction calls; API server's APF rejections %.0f", evictions, apf)},
		{Key: "scale_eviction_errors", Value: r.results["error"] + r.results["server_error"], Target: "0"},
		{Key: "scale_fail_open_calls", Value: failOpen, Target: "0", Note: "the API server's fail-open count for termgate's webhooks"},
		{Key: "scale_webhook_unchecked_allows", Value: unchecked, Target: "0"},
		{Key: "scale_confinement_refused_own_node", Value: ownRefused, Target: "0", Note: fmt.Sprintf("pods the confinement had to read: %.0f", podReads)},
		{Key: "scale_webhook_rss_mb", Value: r.webhookRSS, Target: "<= 128"},
		{Key: "scale_api_calls_per_node", Value: r.callsPerProcess, Note: fmt.Sprintf("an agent process's requests from the notice to the end of the drains, %d pods", podsPerNode)},
		{Key: "scale_watches_per_node", Value: watchesPerAgent, Target: "<= 2", Note: "the API server's open watches per agent started"},
	}
}
