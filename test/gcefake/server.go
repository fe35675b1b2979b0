package gcefake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"k8s.io/utils/clock"
)

// Request is what the fake saw of one request.
type Request struct {
	// Path is the part of the URL path after /computeMetadata/v1/ (the
	// whole path for any other URL).
	Path string
	// RawQuery is the query string, as sent.
	RawQuery string
	// Fault is the fault that hit the request, FaultNone if none.
	Fault FaultKind
	// Status is the status sent: 0 while the request hangs, or when it was
	// dropped or cut short by Close.
	Status int
}

// Server is the metadata server of one fake instance, listening on its own
// 127.0.0.1 port.
type Server struct {
	spec  Instance
	clock clock.Clock
	ln    net.Listener
	http  *http.Server
	done  chan struct{} // closed by Close: releases every hanging request

	served    chan struct{} // closed when the serve loop has returned
	closeOnce sync.Once
	handlers  sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	store    *store
	faults   faults
	watch    map[string]chan struct{} // path -> closed on its next change
	waiting  map[string]int           // path -> requests hanging on it
	requests []Request
	garbage  uint64 // counts garbage replies, for their fresh ETags
}

type requestIndexKey struct{}

func newServer(spec Instance, clk clock.Clock, salt uint64) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &Server{
		spec:    spec,
		clock:   clk,
		ln:      ln,
		done:    make(chan struct{}),
		served:  make(chan struct{}),
		store:   newStore(salt),
		watch:   make(map[string]chan struct{}),
		waiting: make(map[string]int),
	}
	for _, kv := range spec.keys() {
		if _, err := s.store.set(kv[0], kv[1]); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("initial metadata: %w", err)
		}
	}
	s.http = &http.Server{Handler: s.routes()}
	go func() {
		defer close(s.served)
		_ = s.http.Serve(ln) // always ErrServerClosed once Close ran
	}()
	return s, nil
}

func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(s.track, s.record, flavor)
	r.Get("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/text")
		_, _ = w.Write([]byte("computeMetadata/\n"))
	})
	r.Route("/computeMetadata/v1", func(r chi.Router) {
		r.Use(requireFlavor)
		r.Get("/*", s.serveMetadata)
	})
	return r
}

// track counts running handlers so that Close can wait for them, and
// refuses work once Close has begun.
func (s *Server) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			drop(w)
			return
		}
		s.handlers.Add(1)
		s.mu.Unlock()
		defer s.handlers.Done()
		next.ServeHTTP(w, r)
	})
}

// record notes each request on arrival, so a test sees retries at once,
// and its status once answered.
func (s *Server) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		if rest, ok := strings.CutPrefix(path, metadataPrefix); ok {
			path = rest
		}
		s.mu.Lock()
		i := len(s.requests)
		s.requests = append(s.requests, Request{Path: path, RawQuery: r.URL.RawQuery})
		s.mu.Unlock()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r.WithContext(context.WithValue(r.Context(), requestIndexKey{}, i)))
		s.mu.Lock()
		s.requests[i].Status = ww.Status()
		s.mu.Unlock()
	})
}

func (s *Server) noteFault(r *http.Request, k FaultKind) {
	i, ok := r.Context().Value(requestIndexKey{}).(int)
	if !ok {
		return
	}
	s.mu.Lock()
	s.requests[i].Fault = k
	s.mu.Unlock()
}

// flavor marks every reply as coming from a metadata server.
func flavor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		next.ServeHTTP(w, r)
	})
}

// requireFlavor refuses requests without Metadata-Flavor: Google, which the
// real server demands so that a page cannot make a browser read metadata.
func requireFlavor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "metadata requests must carry the header Metadata-Flavor: Google", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Host is the server's "127.0.0.1:PORT", the value for GCE_METADATA_HOST.
func (s *Server) Host() string { return s.ln.Addr().String() }

// Instance is the instance the server plays, with defaults filled in.
func (s *Server) Instance() Instance { return s.spec }

// Set stores value under key (a path after /computeMetadata/v1/, such as
// "instance/attributes/foo") and wakes requests waiting for it. Setting the
// value a key has already is a no-op.
func (s *Server) Set(key, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed, err := s.store.set(key, value)
	if err != nil {
		return fmt.Errorf("set %s on %s: %w", key, s.spec.Name, err)
	}
	if changed {
		s.notifyLocked(key)
	}
	return nil
}

// Delete removes key, so reads of it get 404 and waiters on it wake.
func (s *Server) Delete(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.store.remove(key) {
		s.notifyLocked(key)
	}
}

// SetPreempted sets instance/preempted to TRUE or FALSE.
func (s *Server) SetPreempted(preempted bool) { s.mustSet(KeyPreempted, boolValue(preempted)) }

// SetMaintenanceEvent sets instance/maintenance-event (NONE,
// MIGRATE_ON_HOST_MAINTENANCE, TERMINATE_ON_HOST_MAINTENANCE, ...).
func (s *Server) SetMaintenanceEvent(event string) { s.mustSet(KeyMaintenanceEvent, event) }

// SetUpcomingMaintenance publishes a maintenance window in
// instance/upcoming-maintenance; nil clears it (404, or {} when the
// instance has EmptyUpcomingMaintenance).
func (s *Server) SetUpcomingMaintenance(m *UpcomingMaintenance) {
	if m == nil {
		if s.spec.EmptyUpcomingMaintenance {
			s.mustSet(KeyUpcomingMaintenance, "{}")
			return
		}
		s.Delete(KeyUpcomingMaintenance)
		return
	}
	b, err := json.Marshal(m)
	if err != nil { // cannot happen: strings, bools and formatted times
		b = []byte("{}")
	}
	s.mustSet(KeyUpcomingMaintenance, string(b))
}

// mustSet sets one of the fake's own keys, whose shape is known to be valid.
func (s *Server) mustSet(key, value string) { _ = s.Set(key, value) }

// InjectFault arms a fault. It breaks requests already hanging on its key
// when it is of a kind that ends a request.
func (s *Server) InjectFault(f Fault) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("inject fault on %s: %w", s.spec.Name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.add(f)
	if f.Key == "" {
		for path := range s.watch {
			s.wakeLocked(path)
		}
	} else {
		s.wakeLocked(f.Key)
	}
	return nil
}

// ClearFaults disarms every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Requests returns what the server has seen, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// RequestCount counts the requests for path (as in Request.Path), whatever
// their query.
func (s *Server) RequestCount(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.requests {
		if r.Path == path {
			n++
		}
	}
	return n
}

// Waiting counts the requests hanging on path right now: a test polls it
// to know that a watcher is in place before it changes a value.
func (s *Server) Waiting(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting[path]
}

// Close stops the listener, ends every connection and hanging request, and
// waits for the server's goroutines. It is safe to call more than once.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.done)
		if cerr := s.http.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = fmt.Errorf("close metadata server of %s: %w", s.spec.Name, cerr)
		}
		s.handlers.Wait()
		<-s.served
	})
	return err
}

// notifyLocked wakes the requests waiting on key and on every directory
// above it, since a directory's content includes the key.
func (s *Server) notifyLocked(key string) {
	s.wakeLocked(key)
	for dir := key; ; {
		i := strings.LastIndex(dir, "/")
		if i < 0 {
			break
		}
		dir = dir[:i]
		s.wakeLocked(dir)
		s.wakeLocked(dir + "/")
	}
	s.wakeLocked("")
}

func (s *Server) wakeLocked(path string) {
	if ch, ok := s.watch[path]; ok {
		close(ch)
		delete(s.watch, path)
	}
}

// watchLocked returns a channel closed on the next change under path.
func (s *Server) watchLocked(path string) <-chan struct{} {
	ch, ok := s.watch[path]
	if !ok {
		ch = make(chan struct{})
		s.watch[path] = ch
	}
	return ch
}

func boolValue(b bool) string {
	if b {
		return "TRUE"
	}
	return "FALSE"
}
