package watch

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	cases := map[string]struct {
		key  Key
		raw  string
		want Kind
	}{
		"preempted FALSE is clear":                     {KeyPreempted, "FALSE", KindClear},
		"preempted TRUE is a termination":              {KeyPreempted, "TRUE", KindTerminate},
		"a trailing newline is tolerated":              {KeyPreempted, "TRUE\n", KindTerminate},
		"maintenance NONE is clear":                    {KeyMaintenanceEvent, "NONE", KindClear},
		"live migration is not a termination":          {KeyMaintenanceEvent, "MIGRATE_ON_HOST_MAINTENANCE", KindMigrate},
		"terminate on host maintenance is a notice":    {KeyMaintenanceEvent, "TERMINATE_ON_HOST_MAINTENANCE", KindTerminate},
		"the legacy shutdown form is a notice":         {KeyMaintenanceEvent, "SHUTDOWN_ON_HOST_MAINTENANCE", KindTerminate},
		"no upcoming maintenance reads as empty":       {KeyUpcomingMaintenance, "", KindClear},
		"an empty JSON object means nothing scheduled": {KeyUpcomingMaintenance, "{}", KindClear},
		"the server's not-yet error means nothing":     {KeyUpcomingMaintenance, `{"error":{"message":"no notifications have been received yet"}}`, KindClear},
		"a scheduled window is announced": {KeyUpcomingMaintenance,
			`{"type":"SCHEDULED","maintenance_status":"PENDING","window_start_time":"2026-11-26T10:00:00Z","window_end_time":"2026-11-26T14:00:00Z"}`, KindScheduled},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			o, err := Parse(tc.key, tc.raw)
			if err != nil {
				t.Fatalf("Parse(%s, %q): %v", tc.key, tc.raw, err)
			}
			if o.Kind != tc.want {
				t.Fatalf("kind %s, want %s", o.Kind, tc.want)
			}
		})
	}
}

func TestParseWindowTimes(t *testing.T) {
	o, err := Parse(KeyUpcomingMaintenance, `{"type":"SCHEDULED","window_start_time":"2026-11-26T10:00:00Z","window_end_time":"2026-11-26T14:00:00Z"}`)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC); !o.Window.Start.Equal(want) {
		t.Fatalf("window start %s, want %s", o.Window.Start, want)
	}
}

func TestParseRefusesWhatItCannotUnderstand(t *testing.T) {
	cases := map[string]struct {
		key Key
		raw string
	}{
		"a lower-case boolean":            {KeyPreempted, "true"},
		"garbage bytes":                   {KeyPreempted, "\x00\xffgarbage"},
		"an empty preempted value":        {KeyPreempted, ""},
		"an unknown maintenance event":    {KeyMaintenanceEvent, "TERMINATE_SOON"},
		"truncated JSON":                  {KeyUpcomingMaintenance, `{"window_start_time":"2026-11-26T10:00:00Z"`},
		"a window start that is not time": {KeyUpcomingMaintenance, `{"type":"SCHEDULED","window_start_time":"tomorrow"}`},
		"an unknown key":                  {Key("instance/name"), "vm-1"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if o, err := Parse(tc.key, tc.raw); err == nil {
				t.Fatalf("Parse(%s, %q) = %s, want an error", tc.key, tc.raw, o.Kind)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"TRUE", "FALSE", "NONE", "TERMINATE_ON_HOST_MAINTENANCE", "{}", `{"window_start_time":"2026-11-26T10:00:00Z"}`, "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for _, k := range Keys {
			o, err := Parse(k, raw)
			if err == nil && o.Kind == KindScheduled && o.Window == nil {
				t.Fatalf("%s %q: scheduled without a window", k, raw)
			}
		}
	})
}

// An upcoming-maintenance value the agent cannot schedule by counts as no
// window, with the reason; the other keys keep refusing garbage.
func TestLenientReadsUnreadableMaintenanceAsNoWindow(t *testing.T) {
	for _, raw := range []string{`{"type":"UNSCHEDULED","maintenance_status":"ONGOING"}`, `{"window_start_time":"tomorrow"}`, "\x00garbage"} {
		o, err := Lenient(KeyUpcomingMaintenance, raw)
		if err != nil || o.Kind != KindClear || o.Window != nil || o.Unreadable == "" {
			t.Errorf("%q: got %+v, %v; want clear with a reason", raw, o, err)
		}
	}
	if o, err := Lenient(KeyUpcomingMaintenance, `{}`); err != nil || o.Kind != KindClear || o.Unreadable != "" {
		t.Errorf("{}: got %+v, %v; want a plain clear", o, err)
	}
	for _, key := range []Key{KeyPreempted, KeyMaintenanceEvent} {
		if _, err := Lenient(key, "MAYBE"); err == nil {
			t.Errorf("%s: garbage accepted", key)
		}
	}
}

// decide reads the window's start alone; a malformed field it never reads
// (the end, the latest start, the reasons) must not discard a valid start.
func TestAMalformedFieldBesideAValidStartKeepsTheWindow(t *testing.T) {
	start := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	for name, raw := range map[string]string{
		"an end that is not a time":   `{"type":"SCHEDULED","maintenance_status":"PENDING","window_start_time":"2026-11-26T10:00:00Z","window_end_time":"soon"}`,
		"an end that is not a string": `{"type":"SCHEDULED","window_start_time":"2026-11-26T10:00:00Z","window_end_time":42}`,
		"a latest start of garbage":   `{"type":"SCHEDULED","window_start_time":"2026-11-26T10:00:00Z","latest_window_start_time":"?"}`,
		"reasons of an unknown shape": `{"type":"SCHEDULED","window_start_time":"2026-11-26T10:00:00Z","maintenance_reasons":{"x":1},"can_reschedule":"maybe"}`,
	} {
		t.Run(name, func(t *testing.T) {
			o, err := Lenient(KeyUpcomingMaintenance, raw)
			if err != nil || o.Kind != KindScheduled || o.Window == nil || !o.Window.Start.Equal(start) || o.Unreadable != "" {
				t.Fatalf("got %+v, %v; want the window starting %s", o, err, start)
			}
		})
	}
}
