// Package watch follows the GCE metadata keys that announce a VM's end,
// with the real metadata client's hanging GETs, and turns each value into a
// typed Observation. It decides nothing: the agent does.
package watch

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Key is a metadata path under computeMetadata/v1/.
type Key string

const (
	KeyPreempted           Key = "instance/preempted"
	KeyMaintenanceEvent    Key = "instance/maintenance-event"
	KeyUpcomingMaintenance Key = "instance/upcoming-maintenance"
)

// Keys lists every key the agent follows.
var Keys = []Key{KeyPreempted, KeyMaintenanceEvent, KeyUpcomingMaintenance}

// Kind classifies an observed value.
type Kind string

const (
	// KindClear: nothing is happening (FALSE, NONE, no upcoming window).
	KindClear Kind = "clear"
	// KindTerminate: the VM is going away (preempted TRUE, terminate or
	// shutdown on host maintenance).
	KindTerminate Kind = "terminate"
	// KindMigrate: live migration; the VM survives, nothing is drained.
	KindMigrate Kind = "migrate"
	// KindScheduled: an upcoming maintenance window is announced.
	KindScheduled Kind = "scheduled"
	// KindUnknown: the value could not be read (Unreadable says why); the
	// key keeps its last known value.
	KindUnknown Kind = "unknown"
)

// Observation is one parsed value of one key.
type Observation struct {
	Key  Key
	Kind Kind
	// Raw is the value as served, for logs and events.
	Raw string
	// At is when the agent received it: the notice time of a termination.
	At time.Time
	// Window is set for KindScheduled.
	Window *Window
	// First is set on the first value this process read for the key: a
	// termination notice seen first is one that may have begun before the
	// agent started.
	First bool
	// Unreadable explains why a value could not be read: for
	// upcoming-maintenance, why it counts as "no window"; for KindUnknown,
	// why it was ignored. Empty for readable values.
	Unreadable string
}

// Window is an upcoming maintenance window: what decide reads of it.
type Window struct {
	Start time.Time // window_start_time
	// End is window_end_time; zero when absent or unreadable, which
	// leaves the start, the one time the drain goes by, standing.
	End time.Time
}

// Parse classifies a raw value of key. A value it cannot classify is an
// error: the agent must never act on a value it does not understand.
// Lenient is the watcher's reading of that rule per key.
func Parse(key Key, raw string) (Observation, error) {
	o := Observation{Key: key, Raw: raw}
	v := strings.TrimSpace(raw)
	switch key {
	case KeyPreempted:
		switch v {
		case "FALSE":
			o.Kind = KindClear
		case "TRUE":
			o.Kind = KindTerminate
		default:
			return o, fmt.Errorf("%s: unexpected value %q (want TRUE or FALSE)", key, truncate(v))
		}
	case KeyMaintenanceEvent:
		switch v {
		case "NONE":
			o.Kind = KindClear
		case "MIGRATE_ON_HOST_MAINTENANCE":
			o.Kind = KindMigrate
		case "TERMINATE_ON_HOST_MAINTENANCE", "SHUTDOWN_ON_HOST_MAINTENANCE":
			o.Kind = KindTerminate
		default:
			return o, fmt.Errorf("%s: unexpected value %q", key, truncate(v))
		}
	case KeyUpcomingMaintenance:
		w, err := parseWindow(v)
		if err != nil {
			return o, fmt.Errorf("%s: %w", key, err)
		}
		o.Kind, o.Window = KindClear, w
		if w != nil {
			o.Kind = KindScheduled
		}
	default:
		return o, fmt.Errorf("unknown key %q", key)
	}
	return o, nil
}

// parseWindow returns nil when nothing is scheduled: an empty value, `{}`,
// or the server's "no notifications have been received yet" error object.
// It reads window_start_time, the one field the drain goes by, and
// window_end_time when it is readable; every other field (type, status,
// latest_window_start_time, can_reschedule, maintenance_reasons) only tells
// an announcement from an empty answer, so a malformed one cannot discard a
// valid window start.
func parseWindow(v string) (*Window, error) {
	if v == "" {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(v))
	if err := dec.Decode(&fields); err != nil {
		return nil, fmt.Errorf("malformed JSON %q: %w", truncate(v), err)
	}
	if e, failed := fields["error"]; failed && string(e) != "null" {
		return nil, nil
	}
	startRaw, hasStart := fields["window_start_time"]
	_, hasType := fields["type"]
	_, hasStatus := fields["maintenance_status"]
	if !hasStart && !hasType && !hasStatus {
		return nil, nil
	}
	var startText string
	if err := json.Unmarshal(startRaw, &startText); err != nil && hasStart {
		return nil, fmt.Errorf("window_start_time %s: not a string", truncate(string(startRaw)))
	}
	start, err := time.Parse(time.RFC3339, startText)
	if err != nil {
		return nil, fmt.Errorf("window_start_time %q: %w", truncate(startText), err)
	}
	w := &Window{Start: start}
	// The end is informational: unreadable, it is simply not known.
	var endText string
	if json.Unmarshal(fields["window_end_time"], &endText) == nil {
		if end, err := time.Parse(time.RFC3339, endText); err == nil {
			w.End = end
		}
	}
	return w, nil
}

// truncate keeps garbage values short in logs and errors.
func truncate(s string) string {
	const limit = 64
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}

// Lenient reads a value the way the watcher acts on it. An unreadable
// preempted or maintenance-event value is an error: acting on it could mark
// or unmark a node for nothing, so the key keeps its last known value. An
// unreadable upcoming-maintenance value is "no window", with the reason in
// Unreadable: its fields are optional and vary by machine family, and a
// value the agent cannot schedule by must neither drain the node nor hold
// back what the other keys say.
func Lenient(key Key, raw string) (Observation, error) {
	o, err := Parse(key, raw)
	if err != nil && key == KeyUpcomingMaintenance {
		return Observation{Key: key, Kind: KindClear, Raw: raw, Unreadable: err.Error()}, nil
	}
	return o, err
}
