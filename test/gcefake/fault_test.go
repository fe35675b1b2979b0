package gcefake

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"cloud.google.com/go/compute/metadata"
)

func statuses(s *Server, path string) []int {
	var got []int
	for _, r := range s.Requests() {
		if r.Path == path {
			got = append(got, r.Status)
		}
	}
	return got
}

func TestClientSeesInjectedFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault Fault
		// check judges the client's result and the requests the server saw.
		check func(t *testing.T, s *Server, v string, err error, took time.Duration)
	}{
		{
			name:  "Three 503 replies are retried by the client until the value comes.",
			fault: Fault{Key: KeyPreempted, Kind: Fault503, Count: 3},
			check: func(t *testing.T, s *Server, v string, err error, _ time.Duration) {
				if err != nil || v != "FALSE" {
					t.Errorf("got %q, %v; want FALSE after retries", v, err)
				}
				if got, want := statuses(s, KeyPreempted), []int{503, 503, 503, 200}; !slices.Equal(got, want) {
					t.Errorf("server replied %v; want %v", got, want)
				}
			},
		},
		{
			name:  "Two 429 replies are retried by the client until the value comes.",
			fault: Fault{Key: KeyPreempted, Kind: Fault429, Count: 2},
			check: func(t *testing.T, s *Server, v string, err error, _ time.Duration) {
				if got, want := statuses(s, KeyPreempted), []int{429, 429, 200}; err != nil || v != "FALSE" || !slices.Equal(got, want) {
					t.Errorf("got %q, %v; server replied %v; want FALSE after %v", v, err, got, want)
				}
			},
		},
		{
			name:  "A 503 that outlasts the client's retries reaches it as a 503 error.",
			fault: Fault{Key: KeyPreempted, Kind: Fault503},
			check: func(t *testing.T, s *Server, v string, err error, _ time.Duration) {
				var merr *metadata.Error
				if !errors.As(err, &merr) || merr.Code != http.StatusServiceUnavailable {
					t.Errorf("got %q, %v; want a metadata.Error with code 503", v, err)
				}
				if got := s.RequestCount(KeyPreempted); got != 6 {
					t.Errorf("server saw %d requests; want 6 (one and five retries)", got)
				}
			},
		},
		{
			name:  "A dropped connection fails the read.",
			fault: Fault{Key: KeyPreempted, Kind: FaultDrop},
			check: func(t *testing.T, s *Server, v string, err error, _ time.Duration) {
				if err == nil {
					t.Errorf("got %q; want an error", v)
				}
				reqs := s.Requests()
				if len(reqs) == 0 || reqs[0].Fault != FaultDrop || reqs[0].Status != 0 {
					t.Errorf("server saw %+v; want a dropped request without status", reqs)
				}
			},
		},
		{
			name:  "A garbage body reaches the client as the value.",
			fault: Fault{Key: KeyPreempted, Kind: FaultGarbage, Count: 1},
			check: func(t *testing.T, _ *Server, v string, err error, _ time.Duration) {
				if err != nil || v != GarbageBody {
					t.Errorf("got %q, %v; want the garbage body", v, err)
				}
			},
		},
		{
			name:  "A delay holds the reply back.",
			fault: Fault{Kind: FaultDelay, Delay: 200 * time.Millisecond, Count: 1},
			check: func(t *testing.T, _ *Server, v string, err error, took time.Duration) {
				if err != nil || v != "FALSE" || took < 200*time.Millisecond {
					t.Errorf("got %q, %v after %v; want FALSE after at least 200ms", v, err, took)
				}
			},
		},
		{
			name:  "A fault on another key leaves this one alone.",
			fault: Fault{Key: KeyMaintenanceEvent, Kind: Fault503},
			check: func(t *testing.T, s *Server, v string, err error, _ time.Duration) {
				if err != nil || v != "FALSE" || s.RequestCount(KeyPreempted) != 1 {
					t.Errorf("got %q, %v in %d requests; want FALSE at once", v, err, s.RequestCount(KeyPreempted))
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startInstance(t, Instance{Name: "node-a"})
			c := newClient(t, s)
			if err := s.InjectFault(tt.fault); err != nil {
				t.Fatalf("inject: %v", err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			asked := time.Now()
			v, err := c.GetWithContext(ctx, KeyPreempted)
			tt.check(t, s, v, err, time.Since(asked))

			s.ClearFaults()
			if v, err := c.GetWithContext(ctx, KeyPreempted); err != nil || v != "FALSE" {
				t.Errorf("after ClearFaults got %q, %v; want FALSE", v, err)
			}
		})
	}
}

func TestFaultsBreakHangingRequests(t *testing.T) {
	tests := []struct {
		name  string
		fault Fault
		ok    func(r result) bool
	}{
		{name: "A drop ends a hanging read with an error.", fault: Fault{Key: KeyPreempted, Kind: FaultDrop, Count: 1}, ok: func(r result) bool { return r.err != nil }},
		{name: "Garbage ends a hanging read with the garbage.", fault: Fault{Key: KeyPreempted, Kind: FaultGarbage, Count: 1}, ok: func(r result) bool { return r.value == GarbageBody }},
		{name: "A fault for every key reaches a hanging read too.", fault: Fault{Kind: FaultGarbage, Count: 1}, ok: func(r result) bool { return r.value == GarbageBody }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startInstance(t, Instance{Name: "node-a"})
			c := newClient(t, s)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			got := getAsync(ctx, c, KeyPreempted+"?wait_for_change=true")
			eventually(t, 5*time.Second, "the request hangs", func() bool { return s.Waiting(KeyPreempted) == 1 })

			injected := time.Now()
			if err := s.InjectFault(tt.fault); err != nil {
				t.Fatalf("inject: %v", err)
			}
			r := receive(t, got, 5*time.Second)
			if !tt.ok(r) || r.at.Sub(injected) > changeLatency {
				t.Errorf("got %q, %v %v after the fault", r.value, r.err, r.at.Sub(injected))
			}
		})
	}
}

func TestInjectFaultRefusesNonsense(t *testing.T) {
	s := startInstance(t, Instance{Name: "node-a"})
	for _, f := range []Fault{{}, {Kind: FaultKind(99)}, {Kind: Fault503, Count: -1}, {Kind: FaultDelay}} {
		if err := s.InjectFault(f); err == nil {
			t.Errorf("InjectFault(%+v) succeeded; want an error", f)
		}
	}
}
