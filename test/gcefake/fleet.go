// Package gcefake is a fake GCE metadata server for tests and demos.
//
// A Fleet runs one Server per fake instance, each on its own 127.0.0.1 port,
// because the real client takes one GCE_METADATA_HOST per process. A Server
// speaks the real protocol: the Metadata-Flavor header, ETags, hanging GETs
// (wait_for_change, last_etag, timeout_sec), alt=json and recursive reads.
// Tests change values while clients watch them, inject faults (503, 429,
// delays, dropped connections, garbage bodies) and read back which requests
// the server saw.
//
// As a missing key has no ETag to wait on, a hanging GET for one gets 404
// at once; to watch instance/upcoming-maintenance while nothing is
// scheduled, set Instance.EmptyUpcomingMaintenance so that it reads as {}.
package gcefake

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// metadataPrefix is where the metadata tree is served.
const metadataPrefix = "/computeMetadata/v1/"

// Keys the fake serves, as paths after /computeMetadata/v1/.
const (
	KeyPreempted           = "instance/preempted"
	KeyMaintenanceEvent    = "instance/maintenance-event"
	KeyUpcomingMaintenance = "instance/upcoming-maintenance"
	KeyPreemptible         = "instance/scheduling/preemptible"
	KeyOnHostMaintenance   = "instance/scheduling/on-host-maintenance"
	KeyName                = "instance/name"
	KeyZone                = "instance/zone"
	KeyMachineType         = "instance/machine-type"
	KeyID                  = "instance/id"
	KeyHostname            = "instance/hostname"
	KeyKubeLabels          = "instance/attributes/kube-labels"
	KeyProjectID           = "project/project-id"
	KeyNumericProjectID    = "project/numeric-project-id"
)

// Instance describes a fake VM. Only Name is required.
type Instance struct {
	Name string
	// Zone is a bare zone name such as "us-central1-a"; the server shows it
	// as projects/NUM/zones/ZONE. Default us-central1-a.
	Zone string
	// MachineType is a bare type such as "g2-standard-4"; the server shows
	// it as projects/NUM/machineTypes/TYPE. Default e2-standard-4.
	MachineType string
	// Preemptible makes the VM a Spot/preemptible one.
	Preemptible bool
	// Accelerator, such as "nvidia-l4", is published the way GKE does, as
	// cloud.google.com/gke-accelerator in instance/attributes/kube-labels.
	Accelerator string
	// OnHostMaintenance is MIGRATE or TERMINATE; the default is TERMINATE
	// for preemptible or accelerator VMs (GCE allows nothing else for
	// them) and MIGRATE otherwise.
	OnHostMaintenance string
	// ID is the numeric instance id; by default the fleet numbers them.
	ID string
	// ProjectID and NumericProjectID default to termgate-test and
	// 123456789012.
	ProjectID, NumericProjectID string
	// EmptyUpcomingMaintenance makes instance/upcoming-maintenance read as
	// {} instead of 404 while nothing is scheduled.
	EmptyUpcomingMaintenance bool
}

func (in Instance) withDefaults(id uint64) Instance {
	in.Zone = cmp.Or(in.Zone, "us-central1-a")
	in.MachineType = cmp.Or(in.MachineType, "e2-standard-4")
	in.ID = cmp.Or(in.ID, fmt.Sprint(4_000_000_000_000_000_000+id))
	in.ProjectID = cmp.Or(in.ProjectID, "termgate-test")
	in.NumericProjectID = cmp.Or(in.NumericProjectID, "123456789012")
	if in.OnHostMaintenance == "" {
		in.OnHostMaintenance = "MIGRATE"
		if in.Preemptible || in.Accelerator != "" {
			in.OnHostMaintenance = "TERMINATE"
		}
	}
	return in
}

// keys is the metadata an instance starts with.
func (in Instance) keys() [][2]string {
	kv := [][2]string{
		{KeyPreempted, "FALSE"},
		{KeyMaintenanceEvent, "NONE"},
		{KeyPreemptible, boolValue(in.Preemptible)},
		{KeyOnHostMaintenance, in.OnHostMaintenance},
		{KeyName, in.Name},
		{KeyZone, "projects/" + in.NumericProjectID + "/zones/" + in.Zone},
		{KeyMachineType, "projects/" + in.NumericProjectID + "/machineTypes/" + in.MachineType},
		{KeyID, in.ID},
		{KeyHostname, in.Name + "." + in.Zone + ".c." + in.ProjectID + ".internal"},
		{KeyProjectID, in.ProjectID},
		{KeyNumericProjectID, in.NumericProjectID},
	}
	if in.Accelerator != "" {
		kv = append(kv, [2]string{KeyKubeLabels, "cloud.google.com/gke-accelerator=" + in.Accelerator})
	}
	if in.EmptyUpcomingMaintenance {
		kv = append(kv, [2]string{KeyUpcomingMaintenance, "{}"})
	}
	return kv
}

// UpcomingMaintenance is the JSON of instance/upcoming-maintenance. Zero
// fields are left out.
type UpcomingMaintenance struct {
	Type                  string // SCHEDULED, UNSCHEDULED or MULTIPLE
	MaintenanceStatus     string // PENDING or ONGOING
	WindowStartTime       time.Time
	WindowEndTime         time.Time
	LatestWindowStartTime time.Time
	CanReschedule         bool
	MaintenanceReasons    []string
}

// MarshalJSON writes the snake_case fields and RFC 3339 times of the real
// server.
func (m UpcomingMaintenance) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Type                  string   `json:"type,omitempty"`
		MaintenanceStatus     string   `json:"maintenance_status,omitempty"`
		WindowStartTime       string   `json:"window_start_time,omitempty"`
		WindowEndTime         string   `json:"window_end_time,omitempty"`
		LatestWindowStartTime string   `json:"latest_window_start_time,omitempty"`
		CanReschedule         bool     `json:"can_reschedule"`
		MaintenanceReasons    []string `json:"maintenance_reasons,omitempty"`
	}{m.Type, m.MaintenanceStatus, rfc3339(m.WindowStartTime), rfc3339(m.WindowEndTime),
		rfc3339(m.LatestWindowStartTime), m.CanReschedule, m.MaintenanceReasons})
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// Fleet is a set of fake instances.
type Fleet struct {
	clock clock.Clock

	mu      sync.Mutex
	closed  bool
	servers []*Server
	nextID  uint64
}

// Option configures a Fleet.
type Option func(*Fleet)

// WithClock makes the fleet's servers time timeout_sec and delay faults on
// clk instead of the real clock.
func WithClock(clk clock.Clock) Option { return func(f *Fleet) { f.clock = clk } }

// NewFleet returns an empty fleet.
func NewFleet(opts ...Option) *Fleet {
	f := &Fleet{clock: clock.RealClock{}}
	for _, o := range opts {
		o(f)
	}
	return f
}

// Add starts the metadata server of a new instance.
func (f *Fleet) Add(in Instance) (*Server, error) {
	if in.Name == "" {
		return nil, errors.New("add instance: empty name")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, fmt.Errorf("add instance %s: fleet is closed", in.Name)
	}
	for _, s := range f.servers {
		if s.spec.Name == in.Name {
			return nil, fmt.Errorf("add instance %s: name taken", in.Name)
		}
	}
	f.nextID++
	s, err := newServer(in.withDefaults(f.nextID), f.clock, f.nextID)
	if err != nil {
		return nil, fmt.Errorf("add instance %s: %w", in.Name, err)
	}
	f.servers = append(f.servers, s)
	return s, nil
}

// Get returns the server of the named instance.
func (f *Fleet) Get(name string) (*Server, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.servers {
		if s.spec.Name == name {
			return s, true
		}
	}
	return nil, false
}

// Servers returns every server, in the order they were added.
func (f *Fleet) Servers() []*Server {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*Server(nil), f.servers...)
}

// Close closes every server; the fleet takes no new instances after it.
func (f *Fleet) Close() error {
	f.mu.Lock()
	f.closed = true
	servers := f.servers
	f.mu.Unlock()
	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
