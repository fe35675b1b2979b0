package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/template"
	"time"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
)

// templateFuncs are the only functions a template may call besides
// text/template's own: pure ones, over the values they are given. There is
// no function that reads the environment, a file, the network or the clock,
// and the Notification has no method that does, so a template cannot reach
// anything but the notification.
var templateFuncs = template.FuncMap{
	// json renders a value as JSON: {"text": {{json .Message}}} stays valid
	// whatever the message holds.
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	// rfc3339 formats a time in UTC.
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"upper":   strings.ToUpper,
	"lower":   strings.ToLower,
}

// maxBodyBytes bounds what a template may render.
const maxBodyBytes = 256 << 10

// errTemplateRefused starts every template error at start-up.
var errTemplateRefused = errors.New("template refused")

// parseTemplate parses a sink's template and runs it once on a sample
// notification of every kind the sink accepts, so that a template that
// calls anything but its fields and templateFuncs (such as env, or a file
// reader some template libraries offer), or names a field the notification
// does not have, is refused at start, not at the first preemption.
func parseTemplate(name, text, contentType string, kinds []notification.Kind) (*template.Template, error) {
	if strings.TrimSpace(text) == "" {
		return nil, fmt.Errorf("%w: format template needs a template", errTemplateRefused)
	}
	t, err := template.New(name).Option("missingkey=zero").Funcs(templateFuncs).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %v; %s", errTemplateRefused, err, templateRules())
	}
	for _, k := range kinds {
		out, err := execute(t, Sample(k))
		if err != nil {
			return nil, fmt.Errorf("%w: on a sample %s notification: %v; %s", errTemplateRefused, k, err, templateRules())
		}
		if strings.HasPrefix(contentType, "application/json") && !json.Valid(out) {
			return nil, fmt.Errorf("%w: on a sample %s notification the output is not valid JSON (content type %s); quote strings with {{json .Field}}: %.200s",
				errTemplateRefused, k, contentType, out)
		}
	}
	return t, nil
}

func templateRules() string {
	return fmt.Sprintf("a template sees only the notification (.ID, .Kind, .Type, .Cluster, .Source, .OccurredAt, .Node, .Notice, .Drain, .Withdrawal, .Message) "+
		"and the functions %s besides text/template's own; it cannot read the environment or files", strings.Join(slices.Sorted(maps.Keys(templateFuncs)), ", "))
}

func execute(t *template.Template, n notification.Notification) ([]byte, error) {
	var b limitedBuffer
	if err := t.Execute(&b, n); err != nil {
		return nil, fmt.Errorf("render template: %w", err)
	}
	return b.Bytes(), nil
}

// limitedBuffer fails a write past maxBodyBytes.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxBodyBytes {
		return 0, fmt.Errorf("output larger than %d bytes", maxBodyBytes)
	}
	return b.Buffer.Write(p)
}

// Sample is a notification of kind k with every field its kind has set, as
// a real one would be: what templates are checked against, and what the
// documentation shows. Its message has quotes, so that a template that
// pastes strings into JSON unquoted is caught.
func Sample(k notification.Kind) notification.Notification {
	notice := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: notice, Deadline: notice.Add(30 * time.Second)}
	if k == notification.KindMaintenanceScheduled {
		m = nodemark.Mark{State: nodemark.StateAdvance, Reason: nodemark.ReasonUpcomingMaintenance, NoticeTime: notice, Deadline: notice.Add(72 * time.Hour)}
	}
	n := notification.Notification{
		ID: notification.ID(k, "gke-pool-spot-1a2b", m), Kind: k, Type: notification.TypePrefix + string(k),
		Cluster: "prod", Source: "/termgate.dev/clusters/prod", OccurredAt: notice.Add(50 * time.Millisecond),
		Node:    notification.Node{Name: "gke-pool-spot-1a2b", Labels: map[string]string{"cloud.google.com/gke-spot": "true", "topology.kubernetes.io/zone": "us-central1-a"}},
		Notice:  notification.NoticeOf(m),
		Message: `Preempted: draining before 2026-01-02T03:04:35Z ("30s" left)`,
	}
	switch k {
	case notification.KindMaintenanceScheduled:
		n.Message = `maintenance window starts 2026-01-05T03:04:05Z; drain starts "1h0m0s" before it`
	case notification.KindDrainFinished, notification.KindDeadlineMissed:
		n.Message = `Drained in 14s: 12 evicted, 1 deleted at a cut-off, 3 kept ("sample")`
		n.OccurredAt = notice.Add(14 * time.Second)
		n.Drain = &notification.Drain{FinishedAt: n.OccurredAt, Duration: 14 * time.Second, DurationSeconds: 14, Evicted: 12, Deleted: 1, BlockedByPDB: 2, Kept: 3}
		if k == notification.KindDeadlineMissed {
			n.Drain.Remaining = 2
		}
	case notification.KindNoticeWithdrawn:
		n.Message = `termination marks removed: the notice was withdrawn ("sample")`
		n.OccurredAt = notice.Add(5 * time.Second)
		n.Withdrawal = &notification.Withdrawal{Cause: nodemark.UnmarkNoticeWithdrawn, SeenAt: n.OccurredAt}
	}
	return n
}
