package main

import (
	"fmt"
	"strings"
	"time"

	"termgate.dev/termgate/test/scenario"
)

// checkRealContainers adds what only the real node can show to the Spot
// preemption's result: each real container received SIGTERM from the
// kubelet and had the time its work needs, inside its grace, instead of
// being killed with its VM.
func checkRealContainers(env *scenario.Env, results []*scenario.Result, con *console) {
	var res *scenario.Result
	for _, r := range results {
		if r.Node == env.RealNode.Node.Name {
			res = r
		}
	}
	if res == nil {
		return
	}
	records, err := env.RealNode.RealContainerRecords()
	const what = "every real container on the node got SIGTERM and finished its work inside its grace"
	if err != nil {
		addCheck(res, what, false, err.Error())
		return
	}
	var seen, bad []string
	for _, r := range records {
		switch {
		case r.SIGTERM.IsZero():
			bad = append(bad, r.Pod+": no SIGTERM")
		case r.Exit.IsZero():
			bad = append(bad, r.Pod+": killed before it finished")
		case r.Exit.Sub(r.SIGTERM) < scenario.RealNodeExitDelay || r.Exit.Sub(r.SIGTERM) > scenario.RealNodeGrace:
			bad = append(bad, fmt.Sprintf("%s: exited %s after SIGTERM", r.Pod, r.Exit.Sub(r.SIGTERM).Round(time.Millisecond)))
		default:
			seen = append(seen, fmt.Sprintf("%s exited %s after SIGTERM", r.Pod, r.Exit.Sub(r.SIGTERM).Round(time.Millisecond)))
		}
	}
	if len(records) == 0 {
		bad = append(bad, "no container records")
	}
	if len(bad) > 0 {
		addCheck(res, what, false, strings.Join(bad, "; "))
		return
	}
	addCheck(res, what, true, fmt.Sprintf("%d containers (grace %s, %s of work): %s",
		len(records), scenario.RealNodeGrace, scenario.RealNodeExitDelay, strings.Join(seen, ", ")))
	con.step("real containers: %s", strings.Join(seen, ", "))
}

func addCheck(r *scenario.Result, expect string, held bool, seen string) {
	r.Checks = append(r.Checks, scenario.Check{Expect: expect, Held: held, Seen: seen})
	r.Held = len(r.Failures()) == 0
}
