package azure

import (
	"testing"
	"time"

	"termgate.dev/termgate/agent/notice"
)

const doc = `{"DocumentIncarnation": 7, "Events": [
 {"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventType": "Preempt", "ResourceType": "VirtualMachine",
  "Resources": ["aks-spot-1-vmss_3"], "EventStatus": "Scheduled", "NotBefore": "Mon, 19 Sep 2026 18:29:47 GMT",
  "Description": "", "EventSource": "Platform", "DurationInSeconds": -1},
 {"EventId": "B", "EventType": "Reboot", "ResourceType": "VirtualMachine", "Resources": ["aks-spot-1-vmss_3", "aks-spot-1-vmss_4"],
  "EventStatus": "Started", "NotBefore": "", "Description": "Host maintenance", "EventSource": "Platform", "DurationInSeconds": 900}]}`

func TestParseDocument(t *testing.T) {
	d, ns, bad, err := ParseDocument(doc, "AKS-SPOT-1-VMSS_3")
	if err != nil || len(bad) != 0 || d.DocumentIncarnation != 7 || len(ns) != 2 {
		t.Fatalf("got %+v %+v %v %v", d, ns, bad, err)
	}
	if p := ns[0]; p.Impact != notice.ImpactTerminate || !p.NotBefore.Equal(time.Date(2026, 9, 19, 18, 29, 47, 0, time.UTC)) || p.Started {
		t.Fatalf("Preempt: %+v", p)
	}
	if r := ns[1]; !r.Started || !r.NotBefore.IsZero() || r.Impact != notice.ImpactRestart || r.Reschedulable {
		t.Fatalf("started Reboot: %+v", r)
	}
	if d.Events[1].onlyFor("aks-spot-1-vmss_3") || !d.Events[0].onlyFor("aks-spot-1-vmss_3") {
		t.Fatal("onlyFor")
	}
	if _, ns, _, _ := ParseDocument(doc, "aks-spot-1-vmss_9"); len(ns) != 0 {
		t.Fatalf("another VM's events counted: %+v", ns)
	}
	for _, bad := range []string{``, `{"Events":[]}`, `[]`, `{"DocumentIncarnation":"x"}`} {
		if _, _, _, err := ParseDocument(bad, "vm"); err == nil {
			t.Errorf("%q read", bad)
		}
	}
}

func FuzzParseDocument(f *testing.F) {
	f.Add(doc)
	f.Add(`{"DocumentIncarnation":1,"Events":[{"EventId":"x","EventType":"Freeze","Resources":["vm"],"EventStatus":"Scheduled","NotBefore":"?"}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		_, ns, _, err := ParseDocument(body, "vm")
		for _, n := range ns {
			if err == nil && (n.ID == "" || n.Impact == "" || (!n.Started && n.NotBefore.IsZero())) {
				t.Fatalf("%q: unusable notice %+v", body, n)
			}
		}
	})
}
