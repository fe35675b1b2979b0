package aws

import (
	"testing"
	"time"

	"termgate.dev/termgate/agent/notice"
)

func TestParseEveryFormatIMDSServes(t *testing.T) {
	n, err := ParseInstanceAction(`{"action": "hibernate", "time": "2026-12-01T10:02:00Z"}`)
	if err != nil || n.Impact != notice.ImpactRestart || !n.NotBefore.Equal(time.Date(2026, 12, 1, 10, 2, 0, 0, time.UTC)) {
		t.Fatalf("hibernate: %+v, %v", n, err)
	}
	r, err := ParseRebalance(`{"noticeTime": "2026-12-01T09:58:00Z"}`)
	if err != nil || r.Impact != notice.ImpactAdvisory || r.Issued.IsZero() {
		t.Fatalf("rebalance: %+v, %v", r, err)
	}
	events, bad, err := ParseScheduled(`[ {
    "NotBefore" : "21 Jan 2026 09:00:43 GMT",
    "Code" : "system-reboot",
    "Description" : "scheduled reboot",
    "EventId" : "instance-event-0d59937288b749b32",
    "NotAfter" : "21 Jan 2026 09:17:23 GMT",
    "State" : "active"
  }, {"Code":"instance-stop","EventId":"instance-event-2","NotBefore":"22 Jan 2026 09:00:00 GMT","State":"completed"},
  {"Code":"instance-retirement","EventId":"instance-event-3","NotBefore":"23 Jan 2026 09:00:00 GMT","State":"canceled"} ]`)
	if err != nil || len(bad) != 0 || len(events) != 1 {
		t.Fatalf("scheduled: %+v %v %v", events, bad, err)
	}
	if e := events[0]; e.ID != "instance-event-0d59937288b749b32" || !e.NotBefore.Equal(time.Date(2026, 1, 21, 9, 0, 43, 0, time.UTC)) ||
		!e.WindowEnd.Equal(time.Date(2026, 1, 21, 9, 17, 23, 0, time.UTC)) || e.Impact != notice.ImpactRestart {
		t.Fatalf("event: %+v", e)
	}
	if events, _, err := ParseScheduled(`[]`); err != nil || len(events) != 0 {
		t.Fatalf("no events: %v %v", events, err)
	}
}

func TestParseRefusesWhatItCannotUnderstand(t *testing.T) {
	for name, body := range map[string]string{
		"an unknown action":      `{"action":"reboot","time":"2026-12-01T10:02:00Z"}`,
		"a time that is no time": `{"action":"terminate","time":"soon"}`,
		"truncated JSON":         `{"action":"terminate"`,
		"two values":             `{"action":"terminate","time":"2026-12-01T10:02:00Z"}{}`,
		"the old text format":    `2026-12-01T10:02:00Z`,
	} {
		if n, err := ParseInstanceAction(body); err == nil {
			t.Errorf("%s: read as %+v", name, n)
		}
	}
	if _, err := ParseRebalance(`{"noticeTime":""}`); err == nil {
		t.Error("a rebalance without a time was read")
	}
	events, bad, err := ParseScheduled(`[{"Code":"system-reboot","EventId":"a","NotBefore":"2026-01-21T09:00:43Z","State":"active"},
		{"Code":"galactic-realignment","EventId":"b","NotBefore":"21 Jan 2026 09:00:43 GMT"},
		{"Code":"system-reboot","NotBefore":"21 Jan 2026 09:00:43 GMT"},
		{"Code":"system-reboot","EventId":"c","NotBefore":"21 Jan 2026 09:00:43 GMT","State":"paused"},
		{"Code":"system-reboot","EventId":"d","NotBefore":"21 Jan 2026 09:00:43 GMT","State":"active"}]`)
	if err != nil || len(events) != 1 || events[0].ID != "d" || len(bad) != 4 {
		t.Fatalf("one readable event among four that are not: %+v, %d unreadable, %v", events, len(bad), err)
	}
	if _, _, err := ParseScheduled(`{"Code":"system-reboot"}`); err == nil {
		t.Error("an object where the array goes was read")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"action":"terminate","time":"2026-12-01T10:02:00Z"}`, `{"noticeTime":"2026-12-01T10:02:00Z"}`,
		`[{"Code":"system-reboot","EventId":"a","NotBefore":"21 Jan 2026 09:00:43 GMT"}]`, "\x00", "[]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, p := range Paths {
			ns, _, err := parse(p, body)
			for _, n := range ns {
				if err == nil && (n.ID == "" || n.Reason == "" || n.Impact == "") {
					t.Fatalf("%s %q: notice without id, reason or impact: %+v", p, body, n)
				}
			}
		}
	})
}
