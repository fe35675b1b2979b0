// Package azurefake is a stand-in for one Azure VM's Scheduled Events
// endpoint, speaking its protocol so that the agent's own client drives it:
//
//   - GET /metadata/scheduledevents?api-version=... answers
//     {"DocumentIncarnation":N,"Events":[...]}; N grows with every change.
//     Without the header Metadata: true, without api-version, or with
//     X-Forwarded-For (a proxy in the way) the answer is 400.
//   - Times are RFC 1123 ("Mon, 19 Sep 2016 18:29:47 GMT"); a started event
//     has a blank NotBefore; a finished or cancelled event simply goes.
//   - An event may name several VMs in Resources (an availability set).
//   - The first request may be made slow (it enables the service, which
//     can take up to two minutes on Azure).
//   - More than 5 requests within a second get 429.
//   - POST {"StartRequests":[{"EventId":...}]} acknowledges events, which
//     then start.
package azurefake

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// TimeLayout is how Scheduled Events writes NotBefore: RFC 1123 in GMT,
// "Mon, 19 Sep 2016 18:29:47 GMT".
const TimeLayout = http.TimeFormat

// RateLimit is how many requests a second the service answers per VM.
const RateLimit = 5

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

// Scheduled returns a scheduled event of type (Preempt, Terminate, Reboot,
// Redeploy, Freeze) for the named VMs, not before notBefore.
func Scheduled(id, eventType string, notBefore time.Time, vms ...string) Event {
	return Event{EventID: id, EventType: eventType, ResourceType: "VirtualMachine", Resources: vms, EventStatus: "Scheduled",
		NotBefore: notBefore.UTC().Format(TimeLayout), Description: eventType + " scheduled by the platform", EventSource: "Platform", DurationInSeconds: -1}
}

// Stats counts what the fake saw.
type Stats struct {
	Requests, WithoutHeader, Throttled int
	Acknowledged                       []string
}

// Server is one VM's Scheduled Events endpoint on its own loopback port.
type Server struct {
	ln   net.Listener
	http *http.Server
	done chan struct{}

	mu          sync.Mutex
	incarnation int
	events      []Event
	raw         *string
	slowFirst   time.Duration
	answered    bool
	fail        []int
	recent      []time.Time
	stats       Stats
	closeOnce   sync.Once
}

// Start listens on a free loopback port.
func Start() (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &Server{ln: ln, done: make(chan struct{}), incarnation: 1}
	s.http = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.http.Serve(ln) }()
	return s, nil
}

// Close stops the server, releasing a slow first request.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	return s.http.Close()
}

// Endpoint is the agent's --azure-metadata-endpoint: http://127.0.0.1:PORT.
func (s *Server) Endpoint() string { return "http://" + s.ln.Addr().String() }

// SlowFirst holds the first request d before answering.
func (s *Server) SlowFirst(d time.Duration) {
	s.mu.Lock()
	s.slowFirst = d
	s.mu.Unlock()
}

// Set replaces the events.
func (s *Server) Set(events ...Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = slices.Clone(events)
	s.raw = nil
	s.incarnation++
}

// Add adds or replaces an event by its id.
func (s *Server) Add(e Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = slices.DeleteFunc(s.events, func(o Event) bool { return o.EventID == e.EventID })
	s.events = append(s.events, e)
	s.incarnation++
}

// Remove takes an event away silently, as Azure does once it is over or
// cancelled.
func (s *Server) Remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = slices.DeleteFunc(s.events, func(o Event) bool { return o.EventID == id })
	s.incarnation++
}

// StartEvent moves an event to Started, its NotBefore blank.
func (s *Server) StartEvent(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.startLocked(id)
}

func (s *Server) startLocked(id string) {
	for i := range s.events {
		if s.events[i].EventID == id {
			s.events[i].EventStatus, s.events[i].NotBefore = "Started", ""
			s.incarnation++
		}
	}
}

// SetRaw serves body as the document until the next Set.
func (s *Server) SetRaw(body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.raw = &body
}

// FailNext answers the next requests with these status codes.
func (s *Server) FailNext(codes ...int) {
	s.mu.Lock()
	s.fail = append(s.fail, codes...)
	s.mu.Unlock()
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Acknowledged = slices.Clone(s.stats.Acknowledged)
	return st
}

// ServeHTTP implements the protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/metadata/scheduledevents" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	s.mu.Lock()
	s.stats.Requests++
	now := time.Now()
	s.recent = append(slices.DeleteFunc(s.recent, func(t time.Time) bool { return now.Sub(t) >= time.Second }), now)
	throttled := len(s.recent) > RateLimit
	slow := time.Duration(0)
	if !s.answered {
		slow = s.slowFirst
	}
	s.mu.Unlock()
	switch {
	case r.Header.Get("Metadata") != "true":
		s.count(func(st *Stats) { st.WithoutHeader++ })
		badRequest(w, "Required metadata header not specified")
		return
	case r.Header.Get("X-Forwarded-For") != "":
		badRequest(w, "Bad request. X-Forwarded-For header is not allowed")
		return
	case r.URL.Query().Get("api-version") == "":
		badRequest(w, "Bad request. api-version was not specified in the request")
		return
	case throttled:
		s.count(func(st *Stats) { st.Throttled++ })
		http.Error(w, `{"error":"Too many requests"}`, http.StatusTooManyRequests)
		return
	}
	if slow > 0 {
		select {
		case <-time.After(slow):
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
	switch r.Method {
	case http.MethodGet:
		s.get(w)
	case http.MethodPost:
		s.acknowledge(w, r)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

func badRequest(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func (s *Server) get(w http.ResponseWriter) {
	s.mu.Lock()
	s.answered = true
	if len(s.fail) > 0 {
		code := s.fail[0]
		s.fail = s.fail[1:]
		s.mu.Unlock()
		http.Error(w, http.StatusText(code), code)
		return
	}
	var body []byte
	if s.raw != nil {
		body = []byte(*s.raw)
	} else {
		body, _ = json.Marshal(map[string]any{"DocumentIncarnation": s.incarnation, "Events": append([]Event{}, s.events...)})
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(body)
}

func (s *Server) acknowledge(w http.ResponseWriter, r *http.Request) {
	var req struct {
		StartRequests []struct {
			EventID string `json:"EventId"`
		} `json:"StartRequests"`
	}
	b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err := json.Unmarshal(b, &req); err != nil || len(req.StartRequests) == 0 {
		badRequest(w, "Bad request. StartRequests expected")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sr := range req.StartRequests {
		s.stats.Acknowledged = append(s.stats.Acknowledged, sr.EventID)
		s.startLocked(sr.EventID)
	}
	w.WriteHeader(http.StatusOK)
}
