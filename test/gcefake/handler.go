package gcefake

import (
	"cmp"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// serveMetadata answers a read under /computeMetadata/v1/.
func (s *Server) serveMetadata(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, metadataPrefix)
	t, err := parsePath(path)
	if err != nil {
		s.write(w, notFound())
		return
	}
	q, err := parseQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	f, faulty := s.faults.take(path, false)
	s.mu.Unlock()
	if faulty && !s.applyFault(w, r, f) {
		return
	}
	if q.wait {
		s.serveWait(w, r, path, t, q)
		return
	}
	s.write(w, s.read(t, q))
}

func (s *Server) read(t target, q query) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store.read(t, q)
}

// serveWait answers a hanging GET: at once if the value is missing or its
// ETag differs from last_etag, else on the next change, on timeout_sec, or
// with a fault injected meanwhile.
func (s *Server) serveWait(w http.ResponseWriter, r *http.Request, path string, t target, q query) {
	s.mu.Lock()
	rep := s.store.read(t, q)
	want := cmp.Or(q.lastETag, rep.etag)
	if rep.status != http.StatusOK || rep.etag != want {
		s.mu.Unlock()
		s.write(w, rep)
		return
	}
	changed := s.watchLocked(path)
	s.waiting[path]++
	s.mu.Unlock()

	rep, fault, answer := s.hang(r, path, t, q, want, changed)
	s.mu.Lock()
	s.waiting[path]-- // before replying, so that Waiting never counts a watcher already answered
	s.mu.Unlock()
	switch {
	case fault != nil:
		s.applyFault(w, r, *fault)
	case answer:
		s.write(w, rep)
	default:
		drop(w) // returning would send an empty 200
	}
}

// hang waits on changed, a channel closed by the change itself, so that it
// wakes within microseconds. It returns the reply to send, or a fault to
// apply, or answer false when the request was abandoned or the server closed.
func (s *Server) hang(r *http.Request, path string, t target, q query, want string, changed <-chan struct{}) (rep reply, fault *Fault, answer bool) {
	var timeout <-chan time.Time
	if q.timeout > 0 {
		timer := s.clock.NewTimer(q.timeout)
		defer timer.Stop()
		timeout = timer.C()
	}
	for {
		select {
		case <-changed:
		case <-timeout:
			return s.read(t, q), nil, true
		case <-r.Context().Done():
			return reply{}, nil, false
		case <-s.done:
			return reply{}, nil, false
		}
		s.mu.Lock()
		f, faulty := s.faults.take(path, true)
		rep = s.store.read(t, q)
		changed = s.watchLocked(path) // in the same critical section as the read: no change is missed
		s.mu.Unlock()
		if faulty {
			return reply{}, &f, true
		}
		if rep.status != http.StatusOK || rep.etag != want {
			return rep, nil, true
		}
	}
}

// applyFault misbehaves as f says. It reports whether the request should
// still be served normally (after a delay).
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, f Fault) bool {
	s.noteFault(r, f.Kind)
	switch f.Kind {
	case Fault503:
		http.Error(w, "injected fault: metadata server unavailable", http.StatusServiceUnavailable)
	case Fault429:
		http.Error(w, "injected fault: too many requests", http.StatusTooManyRequests)
	case FaultGarbage:
		s.mu.Lock()
		s.garbage++
		etag := fmt.Sprintf("garbage-%d", s.garbage)
		s.mu.Unlock()
		s.write(w, reply{status: http.StatusOK, etag: etag, contentType: "application/text", body: []byte(GarbageBody)})
	case FaultDrop:
		drop(w)
	case FaultDelay:
		timer := s.clock.NewTimer(f.Delay)
		defer timer.Stop()
		select {
		case <-timer.C():
			return true
		case <-r.Context().Done():
		case <-s.done:
		}
		drop(w) // returning would send an empty 200
	}
	return false
}

// drop closes the connection under the request without a reply.
func drop(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil { // cannot happen: the server speaks only HTTP/1
		http.Error(w, "injected fault: cannot drop the connection: "+err.Error(), http.StatusInternalServerError)
		return
	}
	_ = conn.Close()
}

func (s *Server) write(w http.ResponseWriter, rep reply) {
	h := w.Header()
	h.Set("Content-Type", rep.contentType)
	if rep.etag != "" {
		h.Set("ETag", rep.etag)
	}
	w.WriteHeader(rep.status)
	_, _ = w.Write(rep.body)
}
