// Package ec2fake is a stand-in for one EC2 instance's metadata service
// (IMDSv2) for what AWS's own simulator, amazon-ec2-metadata-mock, does not
// cover: notices that come and go while the agent runs, session tokens
// that expire, are revoked or are refused, the three notice paths' exact
// formats and garbage in them, and faults. It speaks the real protocol, so
// the agent's real client (the AWS SDK's feature/ec2/imds) drives it:
//
//   - PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds
//     (1..21600) returns a token and the TTL granted; a PUT without a valid
//     TTL gets 400, one carrying X-Forwarded-For 403, as IMDS refuses
//     requests that went through a proxy.
//   - GET /latest/meta-data/... needs X-aws-ec2-metadata-token with a live
//     token: 401 without one, or once it expired (IMDSv2 only: no v1).
//   - spot/instance-action and events/recommendations/rebalance answer 404
//     until a notice is set; events/maintenance/scheduled answers a JSON
//     array ("[]" when empty), times as IMDS writes them.
package ec2fake

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names of the IMDSv2 session protocol.
const (
	HeaderTTL   = "X-aws-ec2-metadata-token-ttl-seconds"
	HeaderToken = "X-aws-ec2-metadata-token"
)

// Paths under /latest/meta-data/ the fake serves notices on.
const (
	PathInstanceAction = "spot/instance-action"
	PathRebalance      = "events/recommendations/rebalance"
	PathScheduled      = "events/maintenance/scheduled"
)

// TimeLayout is how IMDS writes a scheduled event's NotBefore and NotAfter.
const TimeLayout = "2 Jan 2006 15:04:05 GMT"

// ScheduledEvent is one entry of events/maintenance/scheduled.
type ScheduledEvent struct {
	Code        string `json:"Code"`
	Description string `json:"Description"`
	EventID     string `json:"EventId"`
	NotBefore   string `json:"NotBefore"`
	NotAfter    string `json:"NotAfter,omitempty"`
	State       string `json:"State"`
}

// Event returns an active scheduled event with IMDS's time format.
func Event(id, code string, notBefore, notAfter time.Time) ScheduledEvent {
	e := ScheduledEvent{Code: code, Description: "The instance is scheduled for " + code, EventID: id,
		NotBefore: notBefore.UTC().Format(TimeLayout), State: "active"}
	if !notAfter.IsZero() {
		e.NotAfter = notAfter.UTC().Format(TimeLayout)
	}
	return e
}

// Stats counts what the fake saw.
type Stats struct {
	TokenPUTs, TokensRefused int
	// Unauthorized counts GETs answered 401 (no token, unknown or
	// expired); WithoutToken those that carried no token at all, which an
	// IMDSv1 fallback would send.
	Unauthorized, WithoutToken int
	// Reads counts GETs of each notice path answered (200 or 404).
	Reads map[string]int
}

// Server is one instance's metadata service on its own 127.0.0.1 port.
type Server struct {
	ln   net.Listener
	http *http.Server

	mu       sync.Mutex
	tokens   map[string]time.Time // token -> expiry
	grantTTL time.Duration        // 0: what was asked
	refuse   int                  // token PUTs answered 403 while > 0 (-1: all)
	values   map[string]string    // path -> body; absent = 404
	fail     map[string][]int     // path -> status codes for the next GETs
	stats    Stats
}

// Start listens on a free loopback port.
func Start() (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &Server{ln: ln, tokens: map[string]time.Time{}, values: map[string]string{}, fail: map[string][]int{},
		stats: Stats{Reads: map[string]int{}}}
	s.http = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.http.Serve(ln) }()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error { return s.http.Close() }

// Endpoint is the value for the SDK's endpoint
// (AWS_EC2_METADATA_SERVICE_ENDPOINT): http://127.0.0.1:PORT.
func (s *Server) Endpoint() string { return "http://" + s.ln.Addr().String() }

// SetInstanceAction announces a Spot interruption ("terminate", "stop" or
// "hibernate") at t; an empty action removes it (404 again).
func (s *Server) SetInstanceAction(action string, t time.Time) {
	s.setJSON(PathInstanceAction, action != "", map[string]string{"action": action, "time": t.UTC().Format(time.RFC3339)})
}

// SetRebalance issues a rebalance recommendation at t; zero removes it.
func (s *Server) SetRebalance(t time.Time) {
	s.setJSON(PathRebalance, !t.IsZero(), map[string]string{"noticeTime": t.UTC().Format(time.RFC3339)})
}

// SetScheduled replaces the scheduled events.
func (s *Server) SetScheduled(events ...ScheduledEvent) {
	b, _ := json.Marshal(append([]ScheduledEvent{}, events...))
	s.SetRaw(PathScheduled, string(b), false)
}

// SetRaw serves body on path as is (garbage, a format IMDS never used);
// an empty body with remove set makes it 404.
func (s *Server) SetRaw(path, body string, remove bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if remove {
		delete(s.values, path)
		return
	}
	s.values[path] = body
}

func (s *Server) setJSON(path string, present bool, v any) {
	b, _ := json.Marshal(v)
	s.SetRaw(path, string(b), !present)
}

// FailNext answers the next GETs of path with these status codes, one
// each, before serving normally again.
func (s *Server) FailNext(path string, codes ...int) {
	s.mu.Lock()
	s.fail[path] = append(s.fail[path], codes...)
	s.mu.Unlock()
}

// RevokeTokens invalidates every token issued so far, as an expiry the
// client did not foresee would: the next GETs get 401.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	clear(s.tokens)
	s.mu.Unlock()
}

// GrantTTL makes token PUTs grant ttl whatever was asked (0 restores
// asking), so a client must renew its token while it polls.
func (s *Server) GrantTTL(ttl time.Duration) {
	s.mu.Lock()
	s.grantTTL = ttl
	s.mu.Unlock()
}

// RefuseTokens answers the next n token PUTs with 403, as an instance with
// IMDS turned off does; -1 refuses all until RefuseTokens(0).
func (s *Server) RefuseTokens(n int) {
	s.mu.Lock()
	s.refuse = n
	s.mu.Unlock()
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Reads = map[string]int{}
	for k, v := range s.stats.Reads {
		st.Reads[k] = v
	}
	return st
}

// ServeHTTP implements the IMDSv2 protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/latest/api/token":
		s.token(w, r)
	case strings.HasPrefix(r.URL.Path, "/latest/meta-data/") && r.Method == http.MethodGet:
		s.get(w, r, strings.TrimPrefix(r.URL.Path, "/latest/meta-data/"))
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.TokenPUTs++
	if r.Method != http.MethodPut {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" || s.refuse != 0 {
		if s.refuse > 0 {
			s.refuse--
		}
		s.stats.TokensRefused++
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	secs, err := strconv.Atoi(r.Header.Get(HeaderTTL))
	if err != nil || secs < 1 || secs > 21600 {
		http.Error(w, "bad request: "+HeaderTTL+" must be 1..21600", http.StatusBadRequest)
		return
	}
	ttl := time.Duration(secs) * time.Second
	if s.grantTTL > 0 {
		ttl = s.grantTTL
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	tok := hex.EncodeToString(b)
	s.tokens[tok] = time.Now().Add(ttl)
	w.Header().Set(HeaderTTL, strconv.Itoa(max(int(ttl/time.Second), 1)))
	_, _ = w.Write([]byte(tok))
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok := r.Header.Get(HeaderToken)
	if tok == "" {
		s.stats.WithoutToken++
	}
	if exp, ok := s.tokens[tok]; !ok || time.Now().After(exp) {
		s.stats.Unauthorized++
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if codes := s.fail[path]; len(codes) > 0 {
		s.fail[path] = codes[1:]
		http.Error(w, http.StatusText(codes[0]), codes[0])
		return
	}
	s.stats.Reads[path]++
	body, ok := s.values[path]
	if !ok && path == PathScheduled {
		body, ok = "[]", true
	}
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(body))
}
