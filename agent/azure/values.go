package azure

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
)

// Document is the Scheduled Events answer.
type Document struct {
	DocumentIncarnation int     `json:"DocumentIncarnation"`
	Events              []Event `json:"Events"`
}

// Event is one scheduled event as served.
type Event struct {
	EventID           string   `json:"EventId"`
	EventType         string   `json:"EventType"`
	ResourceType      string   `json:"ResourceType"`
	Resources         []string `json:"Resources"`
	EventStatus       string   `json:"EventStatus"`
	NotBefore         string   `json:"NotBefore"`
	Description       string   `json:"Description"`
	EventSource       string   `json:"EventSource"`
	DurationInSeconds int      `json:"DurationInSeconds"`
}

// eventKinds says what each event type means for the VM.
var eventKinds = map[string]struct {
	reason nodemark.Reason
	impact notice.Impact
}{
	"Preempt":   {nodemark.ReasonPreempted, notice.ImpactTerminate},
	"Terminate": {nodemark.ReasonTermination, notice.ImpactTerminate},
	"Reboot":    {nodemark.ReasonHostMaintenance, notice.ImpactRestart},
	"Redeploy":  {nodemark.ReasonHostMaintenance, notice.ImpactRestart},
	"Freeze":    {nodemark.ReasonHostMaintenance, notice.ImpactPause},
}

// ParseDocument reads a Scheduled Events document and keeps the events
// whose Resources name vm (case-insensitively: Azure's names are). An event
// that cannot be read is reported and skipped; the others count. err is
// set only when the document as a whole cannot be read. A started event
// carries no NotBefore; its time is the caller's to supply.
func ParseDocument(body, vm string) (doc Document, notices []notice.Notice, bad []notice.Unreadable, err error) {
	dec := json.NewDecoder(strings.NewReader(body))
	var raw struct {
		DocumentIncarnation *int              `json:"DocumentIncarnation"`
		Events              []json.RawMessage `json:"Events"`
	}
	if err := dec.Decode(&raw); err != nil {
		return doc, nil, nil, fmt.Errorf("scheduled events: malformed JSON %q: %w", notice.Truncate(body), err)
	}
	if raw.DocumentIncarnation == nil {
		return doc, nil, nil, fmt.Errorf("scheduled events: no DocumentIncarnation in %q", notice.Truncate(body))
	}
	doc.DocumentIncarnation = *raw.DocumentIncarnation
	for i, r := range raw.Events {
		var e Event
		if err := json.Unmarshal(r, &e); err != nil {
			bad = append(bad, notice.Unreadable{Channel: Channel, Value: notice.Truncate(string(r)), Err: fmt.Sprintf("event %d: %v", i, err), Alarming: true})
			continue
		}
		doc.Events = append(doc.Events, e)
		if !e.concerns(vm) {
			continue
		}
		n, err := e.notice()
		if err != nil {
			bad = append(bad, notice.Unreadable{Channel: Channel, Value: notice.Truncate(string(r)), Err: err.Error(), Alarming: true})
			continue
		}
		notices = append(notices, n)
	}
	return doc, notices, bad, nil
}

// concerns reports whether the event names vm among its Resources: events
// of an availability set or a placement group reach every VM in it.
func (e Event) concerns(vm string) bool {
	for _, r := range e.Resources {
		if strings.EqualFold(r, vm) {
			return true
		}
	}
	return false
}

// onlyFor reports whether vm is the event's one resource: acknowledging
// starts the event for all of them, so only then may this VM's agent do it.
func (e Event) onlyFor(vm string) bool { return len(e.Resources) == 1 && e.concerns(vm) }

func (e Event) notice() (notice.Notice, error) {
	if e.EventID == "" {
		return notice.Notice{}, fmt.Errorf("event without EventId")
	}
	kind, ok := eventKinds[e.EventType]
	if !ok {
		return notice.Notice{}, fmt.Errorf("event %s: unknown EventType %q", e.EventID, notice.Truncate(e.EventType))
	}
	n := notice.Notice{ID: e.EventID, Reason: kind.reason, Impact: kind.impact, Withdrawable: true, Reschedulable: true,
		Raw: fmt.Sprintf("%s %s %s", e.EventType, e.EventStatus, notice.Truncate(e.Description))}
	switch e.EventStatus {
	case "Scheduled":
	case "Started":
		n.Started, n.Reschedulable = true, false
	default:
		return notice.Notice{}, fmt.Errorf("event %s: unknown EventStatus %q", e.EventID, notice.Truncate(e.EventStatus))
	}
	if e.NotBefore != "" {
		t, err := time.Parse(time.RFC1123, e.NotBefore)
		if err != nil {
			return notice.Notice{}, fmt.Errorf("event %s: NotBefore %q: %w", e.EventID, notice.Truncate(e.NotBefore), err)
		}
		n.NotBefore = t
	} else if !n.Started {
		return notice.Notice{}, fmt.Errorf("event %s: Scheduled without NotBefore", e.EventID)
	}
	return n, nil
}

// VMName is the name Scheduled Events uses for the VM behind a node's
// provider ID: the VM's name for a standalone (or flexible scale set) VM,
// azure:///subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/NAME,
// and SCALESET_INSTANCE for a uniform scale set instance (AKS),
// .../virtualMachineScaleSets/SCALESET/virtualMachines/INSTANCE.
func VMName(providerID string) (string, error) {
	rest, ok := strings.CutPrefix(providerID, "azure://")
	if !ok {
		return "", fmt.Errorf("provider ID %q is not an Azure one (azure:///subscriptions/...)", providerID)
	}
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	for i := 0; i+1 < len(parts); i++ {
		switch {
		case strings.EqualFold(parts[i], "virtualMachineScaleSets") && i+3 < len(parts) && strings.EqualFold(parts[i+2], "virtualMachines"):
			return parts[i+1] + "_" + parts[i+3], nil
		case strings.EqualFold(parts[i], "virtualMachines") && parts[i+1] != "":
			return parts[i+1], nil
		}
	}
	return "", fmt.Errorf("provider ID %q names no virtual machine", providerID)
}
