package gcefake

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHangingGetReturnsWithin50msOfAChange(t *testing.T) {
	tests := []struct {
		name, suffix, watched string
		change                func(*Server)
		want                  string
	}{
		{
			name: "A watcher of preempted learns of the preemption.", suffix: "instance/preempted?wait_for_change=true",
			watched: KeyPreempted, change: func(s *Server) { s.SetPreempted(true) }, want: "TRUE",
		},
		{
			name: "A watcher of the instance directory learns of a maintenance event.", suffix: "instance/?recursive=true&wait_for_change=true",
			watched: "instance/", change: func(s *Server) { s.SetMaintenanceEvent("TERMINATE_ON_HOST_MAINTENANCE") }, want: `"maintenanceEvent":"TERMINATE_ON_HOST_MAINTENANCE"`,
		},
		{
			name: "A watcher of upcoming maintenance learns that the window went away.", suffix: "instance/upcoming-maintenance?wait_for_change=true",
			watched: KeyUpcomingMaintenance, change: func(s *Server) { s.SetUpcomingMaintenance(nil) }, want: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startInstance(t, Instance{Name: "node-a"})
			s.SetUpcomingMaintenance(&UpcomingMaintenance{Type: "SCHEDULED"})
			c := newClient(t, s)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			got := getAsync(ctx, c, tt.suffix)
			eventually(t, 5*time.Second, "the request hangs", func() bool { return s.Waiting(tt.watched) == 1 })

			changed := time.Now()
			tt.change(s)
			r := receive(t, got, 5*time.Second)
			latency := r.at.Sub(changed)
			t.Logf("reply %v after the change", latency)
			if latency > changeLatency {
				t.Errorf("reply came %v after the change; the requirement is %v", latency, changeLatency)
			}
			if tt.want == "" {
				if r.err == nil {
					t.Errorf("got %q; want an error for a value that went away", r.value)
				}
				return
			}
			if r.err != nil || !strings.Contains(r.value, tt.want) {
				t.Errorf("got %q, %v; want it to hold %q", r.value, r.err, tt.want)
			}
		})
	}
}

func TestSubscribeSeesEachChangeWithin50ms(t *testing.T) {
	s := startInstance(t, Instance{Name: "node-a"})
	c := newClient(t, s)
	seen := make(chan result, 4)
	errDone := errors.New("seen enough")
	done := make(chan error, 1)
	go func() {
		calls := 0
		done <- c.SubscribeWithContext(t.Context(), KeyMaintenanceEvent, func(_ context.Context, v string, _ bool) error {
			seen <- result{value: v, at: time.Now()}
			if calls++; calls == 3 {
				return errDone
			}
			return nil
		})
	}()
	if r := receive(t, seen, 5*time.Second); r.value != "NONE" {
		t.Fatalf("first value %q; want NONE", r.value)
	}
	for _, event := range []string{"TERMINATE_ON_HOST_MAINTENANCE", "NONE"} {
		eventually(t, 5*time.Second, "the subscription hangs", func() bool { return s.Waiting(KeyMaintenanceEvent) == 1 })
		changed := time.Now()
		s.SetMaintenanceEvent(event)
		r := receive(t, seen, 5*time.Second)
		if r.value != event || r.at.Sub(changed) > changeLatency {
			t.Errorf("saw %q %v after setting %q; want it within %v", r.value, r.at.Sub(changed), event, changeLatency)
		}
	}
	if err := <-done; !errors.Is(err, errDone) {
		t.Errorf("subscription ended with %v", err)
	}
}

func TestStaleLastETagReturnsAtOnce(t *testing.T) {
	s := startInstance(t, Instance{Name: "node-a"})
	c := newClient(t, s)
	before, _ := rawGet(t, s, "/computeMetadata/v1/"+KeyPreempted, true)
	s.SetPreempted(true) // the change a watcher missed between two polls

	asked := time.Now()
	v, err := c.GetWithContext(t.Context(), KeyPreempted+"?wait_for_change=true&last_etag="+before.Header.Get("ETag"))
	if err != nil || v != "TRUE" {
		t.Fatalf("got %q, %v; want TRUE", v, err)
	}
	if took := time.Since(asked); took > changeLatency {
		t.Errorf("a stale last_etag took %v to answer; want at once (< %v)", took, changeLatency)
	}
	if got := s.RequestCount(KeyPreempted); got != 2 {
		t.Errorf("server saw %d requests; want 2", got)
	}
}

func TestTimeoutSecReturnsTheUnchangedValue(t *testing.T) {
	const timeout = time.Second
	s := startInstance(t, Instance{Name: "node-a"})
	c := newClient(t, s)
	res, _ := rawGet(t, s, "/computeMetadata/v1/"+KeyPreempted, true)

	asked := time.Now()
	v, err := c.GetWithContext(t.Context(), KeyPreempted+"?wait_for_change=true&timeout_sec=1&last_etag="+res.Header.Get("ETag"))
	took := time.Since(asked)
	if err != nil || v != "FALSE" {
		t.Fatalf("got %q, %v; want the unchanged FALSE", v, err)
	}
	if took < timeout || took > timeout+timeout/2 {
		t.Errorf("answered after %v; want between %v and %v", took, timeout, timeout+timeout/2)
	}
}

func TestCloseReleasesHangingRequestsPromptly(t *testing.T) {
	fleet := NewFleet()
	s, err := fleet.Add(Instance{Name: "node-a"})
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	c := newClient(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	got := getAsync(ctx, c, KeyPreempted+"?wait_for_change=true")
	eventually(t, 5*time.Second, "the request hangs", func() bool { return s.Waiting(KeyPreempted) == 1 })

	closing := time.Now()
	if err := fleet.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if took := time.Since(closing); took > 500*time.Millisecond {
		t.Errorf("Close took %v with a hanging request", took)
	}
	// The client may retry once on a fresh connection, which is refused.
	if r := receive(t, got, 5*time.Second); r.err == nil {
		t.Errorf("hanging request got %q after Close; want an error", r.value)
	}
}
