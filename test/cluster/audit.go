package cluster

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// The API server's audit log records every pod eviction and delete with
// the time the server received the request: the ground truth for "which
// requests did the agent send, and when", independent of how long the
// server then held them (an eviction against a busy disruption budget is
// retried inside the server for up to ten seconds).
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

// AuditLogPath is the API server's audit log of pod evictions and deletes.
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
}

// PodRemovals reads every pod eviction and delete audited so far.
func (c *Cluster) PodRemovals() ([]PodRemoval, error) {
	f, err := os.Open(c.AuditLogPath())
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	var out []PodRemoval
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev auditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("audit log line: %w", err)
		}
		if ev.ObjectRef.Resource != "pods" {
			continue
		}
		out = append(out, PodRemoval{
			Eviction: ev.ObjectRef.Subresource == "eviction", User: ev.User.Username, Node: tokenNode(ev.User.Extra),
			Namespace: ev.ObjectRef.Namespace, Pod: ev.ObjectRef.Name,
			Received: ev.RequestReceived, Code: ev.ResponseStatus.Code,
		})
	}
	return out, sc.Err()
}

func tokenNode(extra map[string][]string) string {
	if v := extra["authentication.kubernetes.io/node-name"]; len(v) == 1 {
		return v[0]
	}
	return ""
}
