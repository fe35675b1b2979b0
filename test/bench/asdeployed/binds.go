package asdeployed

import (
	"fmt"
	"time"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
)

// BindsVsMarks classifies the binds onto marked nodes by the API server's
// audit log, on its one clock.
type BindsVsMarks struct {
	// All binds made (201) from since on; OntoPreempted of them onto the
	// nodes asked about.
	All, OntoPreempted int
	// Marks is how many of those nodes have a mark in the log: the
	// agent's first Node patch from since on, stored when the server
	// answered it.
	Marks int
	// Onto are binds the server received after the node's mark was
	// stored: the binds the bind gate should have refused.
	Onto int
	// Racing are binds received before the mark was stored and answered
	// after it: admission answered on the node as it was while the mark
	// was on its way.
	Racing int
	// Lines describe each bind counted in Onto or Racing.
	Lines []string
	// Files is how many audit log files were read (the API server rotates
	// its log).
	Files int
}

// BindsAgainstMarks reads the audit log for the agents' first Node patch
// of each node in nodes from since on (the mark: agents patch only their
// own node, and only on a notice) and classifies the binds onto those
// nodes.
func BindsAgainstMarks(c *cluster.Cluster, since time.Time, nodes map[string]bool) (BindsVsMarks, error) {
	var out BindsVsMarks
	files, err := c.AuditLogFiles()
	if err != nil {
		return out, err
	}
	out.Files = len(files)
	patches, err := c.NodePatches()
	if err != nil {
		return out, err
	}
	binds, err := c.Binds()
	if err != nil {
		return out, err
	}
	agent := "system:serviceaccount:" + localrun.AgentNamespace + ":" + localrun.AgentServiceAccount
	stored := map[string]time.Time{}
	for _, p := range patches {
		if p.User != agent || p.Code != 200 || p.Received.Before(since) || !nodes[p.Node] {
			continue
		}
		if first, ok := stored[p.Node]; !ok || p.Completed.Before(first) {
			stored[p.Node] = p.Completed
		}
	}
	out.Marks = len(stored)
	for _, b := range binds {
		if b.Code != 201 || b.Received.Before(since) {
			continue
		}
		out.All++
		if !nodes[b.Node] {
			continue
		}
		out.OntoPreempted++
		mark, ok := stored[b.Node]
		switch {
		case !ok:
		case b.Received.After(mark):
			out.Onto++
			out.Lines = append(out.Lines, fmt.Sprintf("bound %s/%s onto %s %s after its mark was stored", b.Namespace, b.Pod, b.Node, b.Received.Sub(mark).Round(time.Microsecond)))
		case b.Completed.After(mark):
			out.Racing++
			out.Lines = append(out.Lines, fmt.Sprintf("bind of %s/%s onto %s raced its mark: received %s before the mark was stored, answered %s after", b.Namespace, b.Pod, b.Node,
				mark.Sub(b.Received).Round(time.Microsecond), b.Completed.Sub(mark).Round(time.Microsecond)))
		}
	}
	return out, nil
}
