package cluster

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The API server's audit log records every pod eviction and delete with
// the time the server received the request: the ground truth for "which
// requests did the agent send, and when", independent of how long the
// server then held them (an eviction against a busy disruption budget is
// retried inside the server for up to ten seconds). It also records every
// bind (with its target node) and every Node patch, with the times the
// server received and answered them: whether a bind was asked for after a
// node's mark was stored, on the server's one clock.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create"]
  resources: [{group: "", resources: ["pods/eviction"]}]
- level: Metadata
  verbs: ["delete"]
  resources: [{group: "", resources: ["pods"]}]
- level: Request
  verbs: ["create"]
  resources: [{group: "", resources: ["pods/binding"]}]
- level: Metadata
  verbs: ["patch"]
  resources: [{group: "", resources: ["nodes"]}]
- level: None
`

func (c *Cluster) auditArgs() ([]string, error) {
	policy := filepath.Join(c.Dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, fmt.Errorf("write audit policy: %w", err)
	}
	return []string{
		"--audit-policy-file=" + policy,
		"--audit-log-path=" + c.AuditLogPath(),
		"--audit-log-mode=blocking",
	}, nil
}

// AuditLogPath is the API server's current audit log file.
func (c *Cluster) AuditLogPath() string { return filepath.Join(c.Dir, "audit.log") }

// PodRemoval is one eviction or delete of a pod, as the API server audited it.
type PodRemoval struct {
	// Eviction is true for an eviction, false for a delete.
	Eviction bool
	// User is who sent it; Node is the node its token is bound to (the
	// user extra authentication.kubernetes.io/node-name), if any.
	User      string
	Node      string
	Namespace string
	Pod       string
	// Received is when the API server received the request.
	Received time.Time
	// Code is the HTTP status the server answered.
	Code int
}

type auditEvent struct {
	Verb string `json:"verb"`
	User struct {
		Username string              `json:"username"`
		Extra    map[string][]string `json:"extra"`
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
	// StageTimestamp is when the answer was complete (the policy omits
	// every other stage).
	StageTimestamp time.Time `json:"stageTimestamp"`
	// RequestObject is logged for binds only.
	RequestObject struct {
		Target struct {
			Name string `json:"name"`
		} `json:"target"`
	} `json:"requestObject"`
}

// AuditLogFiles are the audit log's files, oldest first: the files the API
// server rotated it into (its log writer rotates at 100 MB, the default of
// --audit-log-maxsize 0, which a reclaim of tens of thousands of evictions
// passes), then the current one.
func (c *Cluster) AuditLogFiles() ([]string, error) {
	current := c.AuditLogPath()
	ext := filepath.Ext(current)
	rotated, err := filepath.Glob(strings.TrimSuffix(current, ext) + "-*" + ext)
	if err != nil {
		return nil, fmt.Errorf("rotated audit logs: %w", err)
	}
	slices.Sort(rotated) // their names end in the time of rotation
	return append(rotated, current), nil
}

// readAudit calls fn with every event audited so far, in every file.
func (c *Cluster) readAudit(fn func(*auditEvent)) error {
	files, err := c.AuditLogFiles()
	if err != nil {
		return err
	}
	for _, path := range files {
		if err := readAuditFile(path, fn); err != nil {
			return err
		}
	}
	return nil
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

// PodRemovals reads every pod eviction and delete audited so far.
func (c *Cluster) PodRemovals() ([]PodRemoval, error) {
	var out []PodRemoval
	err := c.readAudit(func(ev *auditEvent) {
		if ev.ObjectRef.Resource != "pods" || (ev.ObjectRef.Subresource != "eviction" && ev.Verb != "delete") {
			return
		}
		out = append(out, PodRemoval{
			Eviction: ev.ObjectRef.Subresource == "eviction", User: ev.User.Username, Node: tokenNode(ev.User.Extra),
			Namespace: ev.ObjectRef.Namespace, Pod: ev.ObjectRef.Name,
			Received: ev.RequestReceived, Code: ev.ResponseStatus.Code,
		})
	})
	return out, err
}

// APICall is one audited request: when the API server received it and
// when its answer was complete, on the server's clock.
type APICall struct {
	User                string
	Received, Completed time.Time
	// Code is the HTTP status the server answered (201 for a bind made).
	Code int
}

// Bind is one pods/binding create.
type Bind struct {
	APICall
	Namespace, Pod, Node string
}

// NodePatch is one patch of a Node object (not of its status).
type NodePatch struct {
	APICall
	Node string
}

// Binds reads every bind audited so far.
func (c *Cluster) Binds() ([]Bind, error) {
	var out []Bind
	err := c.readAudit(func(ev *auditEvent) {
		if ev.ObjectRef.Resource == "pods" && ev.ObjectRef.Subresource == "binding" {
			out = append(out, Bind{APICall: ev.call(), Namespace: ev.ObjectRef.Namespace, Pod: ev.ObjectRef.Name, Node: ev.RequestObject.Target.Name})
		}
	})
	return out, err
}

// NodePatches reads every Node patch audited so far.
func (c *Cluster) NodePatches() ([]NodePatch, error) {
	var out []NodePatch
	err := c.readAudit(func(ev *auditEvent) {
		if ev.ObjectRef.Resource == "nodes" && ev.ObjectRef.Subresource == "" && ev.Verb == "patch" {
			out = append(out, NodePatch{APICall: ev.call(), Node: ev.ObjectRef.Name})
		}
	})
	return out, err
}

func (ev *auditEvent) call() APICall {
	return APICall{User: ev.User.Username, Received: ev.RequestReceived, Completed: ev.StageTimestamp, Code: ev.ResponseStatus.Code}
}

func tokenNode(extra map[string][]string) string {
	if v := extra["authentication.kubernetes.io/node-name"]; len(v) == 1 {
		return v[0]
	}
	return ""
}
