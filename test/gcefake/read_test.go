package gcefake

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/compute/metadata"
)

var spotL4 = Instance{
	Name:        "node-a",
	Zone:        "europe-west4-b",
	MachineType: "g2-standard-4",
	Preemptible: true,
	Accelerator: "nvidia-l4",
}

func TestClientReadsWhatAnInstancePublishes(t *testing.T) {
	s := startInstance(t, spotL4)
	c := newClient(t, s)
	tests := []struct {
		name, suffix, want string
		notDefined         bool
	}{
		{name: "A new instance is not preempted.", suffix: "instance/preempted", want: "FALSE"},
		{name: "A new instance has no maintenance event.", suffix: "instance/maintenance-event", want: "NONE"},
		{name: "The zone is given with the project number.", suffix: "instance/zone", want: "projects/123456789012/zones/europe-west4-b"},
		{name: "The machine type is given with the project number.", suffix: "instance/machine-type", want: "projects/123456789012/machineTypes/g2-standard-4"},
		{name: "A spot instance says it is preemptible.", suffix: "instance/scheduling/preemptible", want: "TRUE"},
		{name: "A spot GPU instance terminates on host maintenance.", suffix: "instance/scheduling/on-host-maintenance", want: "TERMINATE"},
		{name: "The name is served.", suffix: "instance/name", want: "node-a"},
		{name: "The hostname is the zonal DNS name.", suffix: "instance/hostname", want: "node-a.europe-west4-b.c.termgate-test.internal"},
		{name: "The project id is served.", suffix: "project/project-id", want: "termgate-test"},
		{name: "The accelerator shows in the GKE kube-labels attribute.", suffix: "instance/attributes/kube-labels", want: "cloud.google.com/gke-accelerator=nvidia-l4"},
		{name: "A string value in JSON is quoted.", suffix: "instance/name?alt=json", want: `"node-a"`},
		{name: "The numeric id in JSON is a number.", suffix: "instance/id?alt=json", want: s.Instance().ID},
		{name: "A directory lists its children one a line.", suffix: "instance/scheduling/", want: "on-host-maintenance\npreemptible\n"},
		{name: "A subdirectory is listed with a trailing slash.", suffix: "", want: "instance/\nproject/\n"},
		{name: "An unknown key is not defined.", suffix: "instance/no-such-key", notDefined: true},
		{name: "With nothing scheduled, upcoming maintenance is not defined.", suffix: "instance/upcoming-maintenance", notDefined: true},
		{name: "A value asked for as a directory is not defined.", suffix: "instance/name/", notDefined: true},
		{name: "A path with an empty segment is not defined.", suffix: "instance//name", notDefined: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.GetWithContext(t.Context(), tt.suffix)
			var nd metadata.NotDefinedError
			switch {
			case tt.notDefined && !errors.As(err, &nd):
				t.Fatalf("GET %q = %q, %v; want metadata.NotDefinedError", tt.suffix, got, err)
			case !tt.notDefined && err != nil:
				t.Fatalf("GET %q: %v", tt.suffix, err)
			case got != tt.want:
				t.Errorf("GET %q = %q; want %q", tt.suffix, got, tt.want)
			}
		})
	}
}

func TestRecursiveReadReturnsTheInstanceAsJSON(t *testing.T) {
	s := startInstance(t, spotL4)
	c := newClient(t, s)
	start := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	s.SetUpcomingMaintenance(&UpcomingMaintenance{Type: "SCHEDULED", MaintenanceStatus: "PENDING", WindowStartTime: start})

	body, err := c.GetWithContext(t.Context(), "instance/?recursive=true")
	if err != nil {
		t.Fatalf("recursive read: %v", err)
	}
	var got struct {
		Name             string
		Preempted        string
		MaintenanceEvent string
		ID               json.Number
		Scheduling       struct{ Preemptible, OnHostMaintenance string }
		Attributes       map[string]string
		Upcoming         map[string]any `json:"upcomingMaintenance"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if got.Name != "node-a" || got.Preempted != "FALSE" || got.MaintenanceEvent != "NONE" || got.ID.String() != s.Instance().ID {
		t.Errorf("top-level values wrong in %s", body)
	}
	if got.Scheduling.Preemptible != "TRUE" || got.Scheduling.OnHostMaintenance != "TERMINATE" {
		t.Errorf("scheduling wrong in %s", body)
	}
	if got.Attributes["kube-labels"] != "cloud.google.com/gke-accelerator=nvidia-l4" {
		t.Errorf("attribute names must stay as they are, got %s", body)
	}
	if got.Upcoming["window_start_time"] != "2031-05-06T07:08:09Z" || got.Upcoming["type"] != "SCHEDULED" {
		t.Errorf("upcoming maintenance must be embedded as an object, got %s", body)
	}

	shallow, err := c.GetWithContext(t.Context(), "instance/?alt=json")
	if err != nil {
		t.Fatalf("directory as JSON: %v", err)
	}
	if !strings.Contains(shallow, `"scheduling":{}`) || !strings.Contains(shallow, `"preempted":"FALSE"`) {
		t.Errorf("a non-recursive JSON directory shows values and empty subdirectories, got %s", shallow)
	}
}

func TestUpcomingMaintenanceComesAndGoes(t *testing.T) {
	tests := []struct {
		name      string
		emptyJSON bool
	}{
		{name: "By default a cleared window reads as not defined."},
		{name: "Configured so, a cleared window reads as {}.", emptyJSON: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startInstance(t, Instance{Name: "node-b", EmptyUpcomingMaintenance: tt.emptyJSON})
			c := newClient(t, s)
			end := time.Date(2031, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
			s.SetUpcomingMaintenance(&UpcomingMaintenance{Type: "SCHEDULED", WindowEndTime: end, CanReschedule: true, MaintenanceReasons: []string{"HOST_ERROR"}})
			v, err := c.GetWithContext(t.Context(), KeyUpcomingMaintenance)
			want := `{"type":"SCHEDULED","window_end_time":"2031-01-02T02:04:05Z","can_reschedule":true,"maintenance_reasons":["HOST_ERROR"]}`
			if err != nil || v != want {
				t.Fatalf("scheduled window = %q, %v; want %q", v, err, want)
			}
			s.SetUpcomingMaintenance(nil)
			v, err = c.GetWithContext(t.Context(), KeyUpcomingMaintenance)
			var nd metadata.NotDefinedError
			if tt.emptyJSON && (err != nil || v != "{}") {
				t.Errorf("cleared window = %q, %v; want {}", v, err)
			}
			if !tt.emptyJSON && !errors.As(err, &nd) {
				t.Errorf("cleared window = %q, %v; want metadata.NotDefinedError", v, err)
			}
		})
	}
}

func TestRequestsWithoutTheFlavorHeaderAreRefused(t *testing.T) {
	s := startInstance(t, Instance{Name: "node-c"})
	res, body := rawGet(t, s, "/computeMetadata/v1/instance/preempted", false)
	if res.StatusCode != http.StatusForbidden {
		t.Errorf("status = %d; want 403", res.StatusCode)
	}
	if !strings.Contains(body, "Metadata-Flavor: Google") {
		t.Errorf("body %q does not say which header is missing", body)
	}
	if got := res.Header.Get("Metadata-Flavor"); got != "Google" {
		t.Errorf("reply Metadata-Flavor = %q; want Google", got)
	}
}

func TestEveryValueReplyCarriesAnETagThatMovesOnChange(t *testing.T) {
	s := startInstance(t, Instance{Name: "node-d"})
	first, _ := rawGet(t, s, "/computeMetadata/v1/instance/preempted", true)
	again, _ := rawGet(t, s, "/computeMetadata/v1/instance/preempted", true)
	dir, _ := rawGet(t, s, "/computeMetadata/v1/instance/", true)
	s.SetPreempted(true)
	changed, body := rawGet(t, s, "/computeMetadata/v1/instance/preempted", true)
	dirChanged, _ := rawGet(t, s, "/computeMetadata/v1/instance/", true)

	if e := first.Header.Get("ETag"); e == "" || e != again.Header.Get("ETag") {
		t.Errorf("ETag of an unchanged value: %q then %q", e, again.Header.Get("ETag"))
	}
	if body != "TRUE" || changed.Header.Get("ETag") == first.Header.Get("ETag") {
		t.Errorf("after a change: body %q, ETag %q (was %q)", body, changed.Header.Get("ETag"), first.Header.Get("ETag"))
	}
	if dir.Header.Get("ETag") == "" || dir.Header.Get("ETag") == dirChanged.Header.Get("ETag") {
		t.Errorf("directory ETag must move when a child changes: %q then %q", dir.Header.Get("ETag"), dirChanged.Header.Get("ETag"))
	}
	for _, res := range []*http.Response{first, changed, dir} {
		if res.Header.Get("Metadata-Flavor") != "Google" {
			t.Errorf("reply without Metadata-Flavor: Google")
		}
	}
}

func TestMalformedParametersAreBadRequests(t *testing.T) {
	s := startInstance(t, Instance{Name: "node-e"})
	for _, q := range []string{"timeout_sec=soon", "timeout_sec=-1", "alt=xml", "wait_for_change=maybe"} {
		res, _ := rawGet(t, s, "/computeMetadata/v1/instance/preempted?"+q, true)
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("?%s: status %d; want 400", q, res.StatusCode)
		}
	}
}

func TestSetRefusesKeysThatCannotExist(t *testing.T) {
	s := startInstance(t, Instance{Name: "node-f"})
	for _, key := range []string{"", "instance", "instance/name/sub", "a//b", "../x", "instance/"} {
		if err := s.Set(key, "v"); err == nil {
			t.Errorf("Set(%q) succeeded; want an error", key)
		}
	}
	if err := s.Set("instance/attributes/role", "gpu"); err != nil {
		t.Errorf("Set of a new attribute: %v", err)
	}
}

func TestFleetKeepsNamesUnique(t *testing.T) {
	fleet := NewFleet()
	a, err := fleet.Add(Instance{Name: "node-a"})
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	b, err := fleet.Add(Instance{Name: "node-b"})
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	if a.Host() == b.Host() || a.Instance().ID == b.Instance().ID {
		t.Errorf("two instances share host %s or id %s", a.Host(), a.Instance().ID)
	}
	if _, err := fleet.Add(Instance{Name: "node-a"}); err == nil {
		t.Error("a second node-a was accepted")
	}
	if _, err := fleet.Add(Instance{}); err == nil {
		t.Error("an instance without a name was accepted")
	}
	if got, ok := fleet.Get("node-b"); !ok || got != b {
		t.Error("Get(node-b) did not return node-b")
	}
	if err := fleet.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := fleet.Add(Instance{Name: "node-c"}); err == nil {
		t.Error("a closed fleet took a new instance")
	}
}
