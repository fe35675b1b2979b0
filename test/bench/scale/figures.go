package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"termgate.dev/termgate/test/bench/asdeployed"
)

// figures are the run's keys (docs/benchmarks.md defines each).
func figures(r *result, f *floorResult, podsPerNode int, watchesPerAgent float64) []asdeployed.Figure {
	all := append(append([]float64{}, r.marksInProcess...), r.marksProcess...)
	unchecked, ownRefused, podReads := webhookTallies(r.webhookRise)
	failOpen, apf := apiTallies(r.apiRise)
	evictions := 0.0
	for _, v := range r.results {
		evictions += v
	}
	ratio := 0.0
	if r.span > 0 {
		ratio = f.span.Seconds() / r.span.Seconds()
	}
	return []asdeployed.Figure{
		{Key: "scale_mark_ms_p50", Value: asdeployed.Percentile(all, 50), Note: "in-process " + markGroup(r.marksInProcess)},
		{Key: "scale_mark_ms_p99", Value: asdeployed.Percentile(all, 99), Target: "<= 1000", Note: "processes " + markGroup(r.marksProcess)},
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

func markGroup(xs []float64) string {
	return fmt.Sprintf("p50 %.0f, p99 %.0f, max %.0f ms", asdeployed.Percentile(xs, 50), asdeployed.Percentile(xs, 99), asdeployed.Percentile(xs, 100))
}

// webhookTallies sums the webhook's answers that allowed without having
// checked, the confinement's refusals of agents' evictions, and the pods
// the confinement had to read, from its counters' rise.
func webhookTallies(rise map[string]float64) (unchecked, ownRefused, podReads float64) {
	for k, v := range rise {
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
	return unchecked, ownRefused, podReads
}

// apiTallies sums the API server's fail-open count for termgate's webhooks
// and its APF rejections, from their rise.
func apiTallies(rise map[string]float64) (failOpen, apf float64) {
	for k, v := range rise {
		switch {
		case strings.HasPrefix(k, "apiserver_admission_webhook_fail_open_count") && strings.Contains(k, "termgate.dev"):
			failOpen += v
		case strings.HasPrefix(k, "apiserver_flowcontrol_rejected_requests_total"):
			apf += v
		}
	}
	return failOpen, apf
}

// zoneFigures are shape Z's keys (docs/benchmarks.md defines each).
func zoneFigures(r *zoneResult, watchesPerAgent float64) []asdeployed.Figure {
	all := append(append([]float64{}, r.marksInProcess...), r.marksProcess...)
	unchecked, ownRefused, podReads := webhookTallies(r.webhookRise)
	failOpen, apf := apiTallies(r.apiRise)
	evictions := 0.0
	for _, v := range r.results {
		evictions += v
	}
	// Which gates answered unchecked, and which webhooks the API server
	// failed open on.
	uncheckedBy, failOpenBy := map[string]float64{}, map[string]float64{}
	for k, v := range r.webhookRise {
		if verdict := asdeployed.Label(k, "verdict"); strings.HasPrefix(k, "termgate_webhook_decisions_total{") && (verdict == "allowed-unknown-node" || verdict == "allowed-unconfirmed" || verdict == "allowed-pod-unreadable") {
			uncheckedBy[asdeployed.Label(k, "gate")+"/"+verdict] += v
		}
	}
	for k, v := range r.apiRise {
		if strings.HasPrefix(k, "apiserver_admission_webhook_fail_open_count") && strings.Contains(k, "termgate.dev") {
			failOpenBy[asdeployed.Label(k, "name")] += v
		}
	}
	rss := 0.0
	for _, v := range r.rss {
		rss = max(rss, v)
	}
	figs := []asdeployed.Figure{
		{Key: "scale_mark_ms_p50", Value: asdeployed.Percentile(all, 50), Note: "in-process " + markGroup(r.marksInProcess)},
		{Key: "scale_mark_ms_p99", Value: asdeployed.Percentile(all, 99), Target: "<= 1000", Note: "processes " + markGroup(r.marksProcess)},
		{Key: "scale_mark_ms_max", Value: asdeployed.Percentile(all, 100), Target: "<= 2000"},
		{Key: "scale_all_marked_ms", Value: float64(r.allMarked.Milliseconds()), Note: "first notice to last taint"},
		{Key: "scale_binds_onto_marked", Value: float64(r.bindsOnto), Target: "0", Note: r.bindNote},
		{Key: "scale_binds_racing_mark", Value: float64(r.bindsRacing), Note: "received before the mark was stored, answered after it"},
		{Key: "scale_pinned_admitted_onto_marked", Value: float64(r.pinnedAdmitted), Target: "0", Note: r.pinnedNote},
		{Key: "scale_fail_open_calls", Value: failOpen, Target: "0", Note: fmt.Sprintf("the API server's fail-open count, by webhook %v", failOpenBy)},
		{Key: "scale_webhook_unchecked_allows", Value: unchecked, Target: "0", Note: fmt.Sprintf("by gate and verdict %v; confinement refusals of own-node evictions %.0f, pods it had to read %.0f", uncheckedBy, ownRefused, podReads)},
		{Key: "scale_drains_done_by_deadline", Value: r.doneByDeadline, Target: "1.0", Note: fmt.Sprintf("%d pods tracked", r.tracked)},
		{Key: "scale_evictions_per_s_peak", Value: r.peakPerSecond, Note: fmt.Sprintf("all evicted over %.1f s", r.span.Seconds())},
		{Key: "scale_eviction_429_pdb", Value: r.results["blocked"], Note: "the agents' evictions a PodDisruptionBudget refused"},
		{Key: "scale_eviction_429_apf", Value: r.results["throttled"], Target: fmt.Sprintf("<= %.0f", evictions/100), Note: fmt.Sprintf("of %.0f eviction calls; API server's APF rejections %.0f", evictions, apf)},
		{Key: "scale_eviction_errors", Value: r.results["error"] + r.results["server_error"], Target: "0"},
	}
	worst, worstKey := 0.0, ""
	for _, k := range slices.Sorted(maps.Keys(r.mutatingP99)) {
		if r.mutatingP99[k] >= worst {
			worst, worstKey = r.mutatingP99[k], k
		}
		figs = append(figs, asdeployed.Figure{Key: "scale_mutating_p99_ms_" + keyPart(k), Value: r.mutatingP99[k], Target: "<= 1000", Note: fmt.Sprintf("%s, %.0f requests", k, r.mutatingCount[k])})
	}
	figs = append(figs, asdeployed.Figure{Key: "scale_mutating_p99_ms_max", Value: worst, Target: "<= 1000", Note: worstKey + "; " + r.bystanderNote})
	for _, g := range slices.Sorted(maps.Keys(r.webhookP99)) {
		figs = append(figs, asdeployed.Figure{Key: "scale_webhook_p99_ms_" + keyPart(g), Value: r.webhookP99[g], Note: "as the API server timed its calls to " + g + ".termgate.dev"})
	}
	for i, v := range r.rss {
		figs = append(figs, asdeployed.Figure{Key: fmt.Sprintf("scale_webhook_rss_mb_%d", i), Value: v, Target: "<= 128", Note: fmt.Sprintf("replica %d's largest resident memory during the reclaim; %d connections handed to it", i, r.connections[i])})
	}
	figs = append(figs,
		asdeployed.Figure{Key: "scale_webhook_rss_mb", Value: rss, Target: "<= 128", Note: "the largest replica"},
		asdeployed.Figure{Key: "scale_watches_per_node", Value: watchesPerAgent, Target: "<= 2", Note: "the API server's open watches per agent started"},
	)
	return figs
}
