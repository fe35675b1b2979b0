// Package drain empties a node that is about to be terminated, in waves,
// before the deadline recorded in its mark (nodemark.Mark).
//
// # Policy
//
// Each pod's wave comes from the shared drain-order policy,
// nodemark.DrainOrderFor: a valid termgate.dev/drain-order annotation wins,
// otherwise the defaults below apply, checked top to bottom.
//
//	| Pod                                                   | Wave    | What the drain does                                  |
//	|-------------------------------------------------------|---------|------------------------------------------------------|
//	| mirror pod (kubernetes.io/config.mirror)              | -       | skipped: the kubelet owns it                          |
//	| finished (Succeeded or Failed)                        | -       | skipped: nothing runs                                 |
//	| tolerates the termination taint, no tolerationSeconds | keep    | left alone                                            |
//	| tolerates it with tolerationSeconds N                 | delayed | evicted N s after the notice, at the latest at the    |
//	|                                                       |         | regular cut-off                                       |
//	| kube-system, system-*-critical priority, DaemonSet    | system  | evicted last                                          |
//	| anything else                                         | regular | evicted at once                                       |
//
// Tolerations are matched the way the kubelet matches NoExecute taints, so an
// operator-Exists toleration without a key (what node agents carry) counts.
//
// # Timeline
//
// With notice N, deadline D, system grace S and system escalation E:
//
//	N         evictRegular: evict regular pods (Eviction API, UID precondition)
//	N+delay   evictDelayed: evict each delayed pod when its toleration ends
//	D-S       escalateRegular: delete regular and delayed pods still present
//	          with grace min(own, time left), at least MinDeleteGrace
//	≤ D-S     evictSystem: evict system pods once regular and delayed pods are
//	          gone, or at D-S, whichever is first
//	D-E       escalateSystem: delete system pods still present, same clamp
//	D         Run returns, whatever is left
//
// An eviction whose pod's own grace period would outlast the deadline asks
// for the time left instead. A pod already being deleted is never evicted
// again; at its wave's cut-off it is deleted again with a shorter grace period
// only if its deletion would end after the deadline, so finalizers and huge
// grace periods never hold the agent past D.
//
// # Restarts
//
// Nothing is remembered between runs: every decision derives from the mark
// and the pods seen now, and every request is safe to repeat (the UID
// precondition protects a replacement pod with the same name). An agent
// killed mid-drain calls Run again with the same mark and resumes.
package drain
