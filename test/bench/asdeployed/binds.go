package asdeployed

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	patches, binds, files, err := auditedPatchesAndBinds(c)
	out.Files = files
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

// auditedPatchesAndBinds reads the Node patches and binds of the audit
// log and of the files it was rotated into: the API server's log writer
// rotates at 100 MB (its default when --audit-log-maxsize is 0), which a
// reclaim of tens of thousands of evictions passes, and the cluster's
// own readers (Cluster.NodePatches, Cluster.Binds) read the current file
// only.
func auditedPatchesAndBinds(c *cluster.Cluster) ([]cluster.NodePatch, []cluster.Bind, int, error) {
	current := c.AuditLogPath()
	ext := filepath.Ext(current)
	rotated, err := filepath.Glob(current[:len(current)-len(ext)] + "-*" + ext)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("rotated audit logs: %w", err)
	}
	slices.Sort(rotated) // their names end in the time of rotation
	var patches []cluster.NodePatch
	var binds []cluster.Bind
	for _, path := range append(rotated, current) {
		if err := readAuditFile(path, func(ev *auditEvent) {
			call := cluster.APICall{User: ev.User.Username, Received: ev.RequestReceived, Completed: ev.StageTimestamp, Code: ev.ResponseStatus.Code}
			switch {
			case ev.ObjectRef.Resource == "nodes" && ev.ObjectRef.Subresource == "" && ev.Verb == "patch":
				patches = append(patches, cluster.NodePatch{APICall: call, Node: ev.ObjectRef.Name})
			case ev.ObjectRef.Resource == "pods" && ev.ObjectRef.Subresource == "binding":
				binds = append(binds, cluster.Bind{APICall: call, Namespace: ev.ObjectRef.Namespace, Pod: ev.ObjectRef.Name, Node: ev.RequestObject.Target.Name})
			}
		}); err != nil {
			return nil, nil, 0, err
		}
	}
	return patches, binds, len(rotated) + 1, nil
}

// auditEvent holds the audit event's fields the benches read.
type auditEvent struct {
	Verb string `json:"verb"`
	User struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestReceived time.Time `json:"requestReceivedTimestamp"`
	StageTimestamp  time.Time `json:"stageTimestamp"`
	RequestObject   struct {
		Target struct {
			Name string `json:"name"`
		} `json:"target"`
	} `json:"requestObject"`
}

func readAuditFile(path string, fn func(*auditEvent)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev auditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("%s: audit log line: %w", path, err)
		}
		fn(&ev)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}
