package aws

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
)

// Paths under /latest/meta-data/ the source polls; each is a channel of
// its own and the id of its notice (scheduled events use their EventId).
const (
	PathInstanceAction = "spot/instance-action"
	PathRebalance      = "events/recommendations/rebalance"
	PathScheduled      = "events/maintenance/scheduled"
)

// Paths lists every path the source polls.
var Paths = []string{PathInstanceAction, PathRebalance, PathScheduled}

// scheduledTimeLayout is how IMDS writes NotBefore and NotAfter,
// e.g. "21 Jan 2019 09:00:43 GMT".
const scheduledTimeLayout = "2 Jan 2006 15:04:05 GMT"

// ParseInstanceAction reads spot/instance-action:
// {"action":"terminate|stop|hibernate","time":"<RFC 3339>"}. Stop and
// hibernate bring the same instance back with a new boot ID: a restart
// under the same node name.
func ParseInstanceAction(body string) (notice.Notice, error) {
	var v struct {
		Action string `json:"action"`
		Time   string `json:"time"`
	}
	if err := strictJSON(body, &v); err != nil {
		return notice.Notice{}, fmt.Errorf("%s: %w", PathInstanceAction, err)
	}
	n := notice.Notice{ID: PathInstanceAction, Reason: nodemark.ReasonPreempted, Raw: compact(body)}
	switch v.Action {
	case "terminate":
		n.Impact = notice.ImpactTerminate
	case "stop", "hibernate":
		n.Impact = notice.ImpactRestart
	default:
		return notice.Notice{}, fmt.Errorf("%s: unknown action %q (want terminate, stop or hibernate)", PathInstanceAction, notice.Truncate(v.Action))
	}
	t, err := time.Parse(time.RFC3339, v.Time)
	if err != nil {
		return notice.Notice{}, fmt.Errorf("%s: time %q: %w", PathInstanceAction, notice.Truncate(v.Time), err)
	}
	n.NotBefore = t
	return n, nil
}

// ParseRebalance reads events/recommendations/rebalance:
// {"noticeTime":"<RFC 3339>"}. It is advisory: the instance is at elevated
// risk of interruption. AWS documents no clearing.
func ParseRebalance(body string) (notice.Notice, error) {
	var v struct {
		NoticeTime string `json:"noticeTime"`
	}
	if err := strictJSON(body, &v); err != nil {
		return notice.Notice{}, fmt.Errorf("%s: %w", PathRebalance, err)
	}
	t, err := time.Parse(time.RFC3339, v.NoticeTime)
	if err != nil {
		return notice.Notice{}, fmt.Errorf("%s: noticeTime %q: %w", PathRebalance, notice.Truncate(v.NoticeTime), err)
	}
	return notice.Notice{ID: PathRebalance, Reason: nodemark.ReasonRebalanceRecommended, Impact: notice.ImpactAdvisory,
		Issued: t, Raw: compact(body)}, nil
}

// scheduledImpact is what each scheduled event code does to the instance.
var scheduledImpact = map[string]notice.Impact{
	"instance-stop":       notice.ImpactRestart,
	"instance-retirement": notice.ImpactTerminate,
	"instance-reboot":     notice.ImpactRestart,
	"system-reboot":       notice.ImpactRestart,
	"system-maintenance":  notice.ImpactPause,
}

// ParseScheduled reads events/maintenance/scheduled: a JSON array of
// {"Code","Description","EventId","NotBefore","NotAfter","State"}. Each
// active event is a notice by its EventId, with NotBefore as its time
// (rescheduling moves it); canceled and completed events are not in force.
// An event that cannot be read is reported and skipped: the others count.
// err is set only when the document as a whole cannot be read.
func ParseScheduled(body string) ([]notice.Notice, []notice.Unreadable, error) {
	if strings.TrimSpace(body) == "" {
		return nil, nil, nil
	}
	var events []map[string]json.RawMessage
	if err := strictJSON(body, &events); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", PathScheduled, err)
	}
	var notices []notice.Notice
	var bad []notice.Unreadable
	for i, raw := range events {
		n, inForce, err := scheduledEvent(raw)
		if err != nil {
			b, _ := json.Marshal(raw)
			bad = append(bad, notice.Unreadable{Channel: PathScheduled, Value: notice.Truncate(string(b)),
				Err: fmt.Sprintf("event %d: %v", i, err), Alarming: true})
			continue
		}
		if inForce {
			notices = append(notices, n)
		}
	}
	return notices, bad, nil
}

func scheduledEvent(raw map[string]json.RawMessage) (n notice.Notice, inForce bool, err error) {
	field := func(name string) (string, error) {
		v, ok := raw[name]
		if !ok {
			return "", nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", fmt.Errorf("%s is not a string", name)
		}
		return s, nil
	}
	var code, id, state, notBefore, notAfter, desc string
	for name, into := range map[string]*string{"Code": &code, "EventId": &id, "State": &state, "NotBefore": &notBefore, "NotAfter": &notAfter, "Description": &desc} {
		if *into, err = field(name); err != nil {
			return n, false, err
		}
	}
	if id == "" {
		return n, false, fmt.Errorf("no EventId")
	}
	switch state {
	case "canceled", "completed":
		return n, false, nil
	case "", "active":
	default:
		return n, false, fmt.Errorf("event %s: unknown State %q", id, notice.Truncate(state))
	}
	impact, known := scheduledImpact[code]
	if !known {
		return n, false, fmt.Errorf("event %s: unknown Code %q", id, notice.Truncate(code))
	}
	n = notice.Notice{ID: id, Reason: nodemark.ReasonUpcomingMaintenance, Impact: impact, Withdrawable: true, Reschedulable: true,
		Raw: fmt.Sprintf("%s %s: %s", code, id, notice.Truncate(desc))}
	if n.NotBefore, err = time.Parse(scheduledTimeLayout, notBefore); err != nil {
		return n, false, fmt.Errorf("event %s: NotBefore %q: %w", id, notice.Truncate(notBefore), err)
	}
	if notAfter != "" {
		// Informational: an unreadable end leaves the window's start.
		if end, err := time.Parse(scheduledTimeLayout, notAfter); err == nil {
			n.WindowEnd = end
		}
	}
	return n, true, nil
}

// strictJSON decodes exactly one JSON value.
func strictJSON(body string, into any) error {
	dec := json.NewDecoder(strings.NewReader(body))
	if err := dec.Decode(into); err != nil {
		return fmt.Errorf("malformed JSON %q: %w", notice.Truncate(body), err)
	}
	if dec.More() {
		return fmt.Errorf("malformed JSON %q: more than one value", notice.Truncate(body))
	}
	return nil
}

// compact keeps a value on one line for logs and events.
func compact(body string) string {
	return notice.Truncate(strings.Join(strings.Fields(body), " "))
}
