package webhook

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"termgate.dev/termgate/webhook/review"
)

// Limits bound what one replica accepts, so that slow or large calls from
// anything that can reach the port cannot push it past its memory limit or
// keep the API server's calls waiting. The API server sends small reviews
// (a Binding or an Eviction is about 1 KiB, a Pod a few KiB) quickly, over
// a few long-lived HTTP/2 connections; every limit sits far above that.
type Limits struct {
	// ReadHeaderTimeout bounds the TLS handshake and the request headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included (per
	// stream on HTTP/2).
	ReadTimeout time.Duration
	// WriteTimeout bounds writing the answer.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections left unused this long.
	IdleTimeout time.Duration
	// MaxBodyBytes bounds one review body; larger calls get 413.
	MaxBodyBytes int64
	// MaxInFlight bounds the calls being answered at once; more get 429.
	MaxInFlight int
	// MaxInFlightBodyBytes bounds the bodies held at once, counted by
	// their declared length (MaxBodyBytes when undeclared); calls beyond
	// it get 429. This, not MaxInFlight, is what bounds memory: a few
	// large calls are refused while small ones keep flowing.
	MaxInFlightBodyBytes int64
	// MaxConnections bounds open connections; further connections wait in
	// the listen backlog until one closes.
	MaxConnections int
	// MaxConcurrentStreams bounds the HTTP/2 streams of one connection.
	MaxConcurrentStreams int
	// MaxReadingPerPeer bounds the calls of one remote address outside
	// the expected ranges (Server.ExpectedPeers) whose body is still being
	// read; its further calls get 429. The bodies those calls declare may
	// also hold at most a quarter of MaxInFlightBodyBytes (and always one
	// largest body). A peer past the NetworkPolicy trickling bodies cannot
	// take the replica's call slots or body budget alone. The control
	// plane is never bounded this way: under a storm many of its calls are
	// in their (microseconds long) read at once, and a refusal there would
	// be a gate failing open. Without expected ranges nobody is bounded.
	MaxReadingPerPeer int
}

// DefaultLimits are sized for a replica with a 256 MiB memory limit:
// 32 MiB of declared bodies, 512 connections of about 50 KiB of TLS and
// HTTP buffers each (25 MiB), and the caches leave the rest to the
// runtime. A body costs about four times its size while it is decoded
// and answered: under TestAFloodOfSlowAndLargeCallsDoesNotTakeTheWebhookDown
// a 64 MiB budget peaked at 234 to 250 MiB resident (one run 261 MiB, past
// the limit), 32 MiB at 184 to 190 MiB. 32 MiB is still five of the
// largest reviews at once, or thousands of a pod's usual few KiB.
//
// The read timeout sits just above the API server's own call timeout (the
// registrations' timeoutSeconds: 2): the API server has given up on a
// call whose body is still arriving after that, so only a slow or hostile
// caller is cut. The stream cap keeps one HTTP/2 connection to an eighth
// of the calls a replica answers at once; the API server opens another
// connection when it needs more streams.
func DefaultLimits() Limits {
	return Limits{
		ReadHeaderTimeout:    5 * time.Second,
		ReadTimeout:          3 * time.Second,
		WriteTimeout:         10 * time.Second,
		IdleTimeout:          90 * time.Second,
		MaxBodyBytes:         review.MaxBodyBytes,
		MaxInFlight:          256,
		MaxInFlightBodyBytes: 32 << 20,
		MaxConnections:       512,
		MaxConcurrentStreams: 32,
		MaxReadingPerPeer:    16,
	}
}

// Validate checks the limits once at start-up.
func (l Limits) Validate() error {
	var errs []error
	if l.ReadHeaderTimeout <= 0 || l.ReadTimeout <= 0 || l.WriteTimeout <= 0 || l.IdleTimeout <= 0 {
		errs = append(errs, errors.New("server timeouts must be positive"))
	}
	if l.MaxBodyBytes <= 0 || l.MaxInFlight <= 0 || l.MaxConnections <= 0 || l.MaxConcurrentStreams <= 0 || l.MaxReadingPerPeer <= 0 {
		errs = append(errs, errors.New("request, connection and stream limits must be positive"))
	}
	if l.MaxInFlightBodyBytes < l.MaxBodyBytes {
		errs = append(errs, fmt.Errorf("in-flight body budget %d is smaller than one largest body (%d): such a call could never be served", l.MaxInFlightBodyBytes, l.MaxBodyBytes))
	}
	return errors.Join(errs...)
}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	fill := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	fill(&l.ReadHeaderTimeout, d.ReadHeaderTimeout)
	fill(&l.ReadTimeout, d.ReadTimeout)
	fill(&l.WriteTimeout, d.WriteTimeout)
	fill(&l.IdleTimeout, d.IdleTimeout)
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = d.MaxBodyBytes
	}
	if l.MaxInFlight <= 0 {
		l.MaxInFlight = d.MaxInFlight
	}
	if l.MaxInFlightBodyBytes <= 0 {
		l.MaxInFlightBodyBytes = max(d.MaxInFlightBodyBytes, l.MaxBodyBytes)
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.MaxConcurrentStreams <= 0 {
		l.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	if l.MaxReadingPerPeer <= 0 {
		l.MaxReadingPerPeer = d.MaxReadingPerPeer
	}
	return l
}

// peerBodyShare is how many declared body bytes one bounded peer's calls
// may hold while their bodies are read.
func (l Limits) peerBodyShare() int64 {
	return max(l.MaxInFlightBodyBytes/4, l.MaxBodyBytes)
}

// minCallWeight is what a call with a tiny body still costs: goroutine,
// decoded request, answer.
const minCallWeight = 4 << 10

// Reasons a call is refused before a gate sees it (metric label values).
const (
	RefusedTooMany  = "too-many-requests"
	RefusedTooLarge = "body-too-large"
	RefusedPeerBusy = "peer-busy"
)

// limitCalls admits a call only while the in-flight count and body budget
// allow it, and while its peer's calls still being read stay within the
// peer's share; others are answered at once, without reading their body:
// 413 when the declared body is over the cap, 429 when the replica or the
// peer is full. The API server treats either as a failed call and applies
// the registration's failurePolicy; a 429 costs the caller microseconds
// instead of the webhook's memory.
type limitCalls struct {
	next     http.Handler
	limits   Limits
	metrics  *review.Metrics
	expected []netip.Prefix

	inFlight atomic.Int64
	bytes    atomic.Int64
	reading  peerCounts
}

func newLimitCalls(next http.Handler, l Limits, m *review.Metrics, expected []netip.Prefix) *limitCalls {
	return &limitCalls{next: next, limits: l, metrics: m, expected: expected, reading: peerCounts{peers: map[netip.Addr]peerCount{}}}
}

func (c *limitCalls) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	peer, bounded := c.classify(r.RemoteAddr)
	if r.ContentLength > c.limits.MaxBodyBytes {
		c.metrics.Refused(RefusedTooLarge)
		http.Error(w, "body larger than "+strconv.FormatInt(c.limits.MaxBodyBytes, 10)+" bytes", http.StatusRequestEntityTooLarge)
		return
	}
	weight := r.ContentLength
	if weight < 0 {
		weight = c.limits.MaxBodyBytes
	}
	weight = max(weight, minCallWeight)
	if bounded && r.ContentLength != 0 {
		if !c.reading.enter(peer, weight, c.limits.MaxReadingPerPeer, c.limits.peerBodyShare()) {
			// An HTTP/1 connection is closed rather than kept for the
			// rest of a body nobody will read. (On HTTP/2 the header
			// would close every stream of the connection.)
			if r.ProtoMajor == 1 {
				w.Header().Set("Connection", "close")
			}
			c.refuse(w, RefusedPeerBusy, "too many calls from "+peer.String()+" still being read")
			return
		}
		var once sync.Once
		read := func() { once.Do(func() { c.reading.leave(peer, weight) }) }
		defer read()
		r.Body = &readingBody{ReadCloser: r.Body, left: r.ContentLength, read: read}
	}
	if c.inFlight.Add(1) > int64(c.limits.MaxInFlight) {
		c.inFlight.Add(-1)
		c.refuse(w, RefusedTooMany, "too many calls in flight")
		return
	}
	defer c.inFlight.Add(-1)
	if c.bytes.Add(weight) > c.limits.MaxInFlightBodyBytes {
		c.bytes.Add(-weight)
		c.refuse(w, RefusedTooMany, "too many request bytes in flight")
		return
	}
	defer c.bytes.Add(-weight)
	// A declared length was checked above, and the server stops reading
	// the body there; only an undeclared one is enforced while reading.
	if r.ContentLength < 0 {
		r.Body = http.MaxBytesReader(w, r.Body, c.limits.MaxBodyBytes)
	}
	c.next.ServeHTTP(w, r)
}

// classify reads the caller's address, counts a call from outside the
// expected ranges, and says whether the caller is bounded per peer: only
// such a caller is, and nobody when no range is set.
func (c *limitCalls) classify(remote string) (netip.Addr, bool) {
	if len(c.expected) == 0 {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	peer := ap.Addr().Unmap()
	for _, p := range c.expected {
		if p.Contains(peer) {
			return peer, false
		}
	}
	c.metrics.UnexpectedPeer()
	return peer, true
}

func (c *limitCalls) refuse(w http.ResponseWriter, reason, why string) {
	c.metrics.Refused(reason)
	w.Header().Set("Retry-After", "1")
	http.Error(w, why, http.StatusTooManyRequests)
}

// peerCounts holds, per peer, its calls whose body is being read and the
// bytes they declared.
type peerCounts struct {
	mu    sync.Mutex
	peers map[netip.Addr]peerCount
}

type peerCount struct {
	calls int
	bytes int64
}

func (p *peerCounts) enter(peer netip.Addr, weight int64, maxCalls int, maxBytes int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.peers[peer]
	if n.calls >= maxCalls || n.bytes+weight > maxBytes {
		return false
	}
	p.peers[peer] = peerCount{calls: n.calls + 1, bytes: n.bytes + weight}
	return true
}

func (p *peerCounts) leave(peer netip.Addr, weight int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.peers[peer]
	if n.calls <= 1 {
		delete(p.peers, peer)
		return
	}
	p.peers[peer] = peerCount{calls: n.calls - 1, bytes: n.bytes - weight}
}

// readingBody calls read once the declared length has been read, or at
// the end or failure of an undeclared one: from then on the call no longer
// counts against its peer.
type readingBody struct {
	io.ReadCloser
	left int64 // bytes still expected; negative when undeclared
	read func()
}

func (b *readingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.left >= 0 {
		if b.left -= int64(n); b.left <= 0 {
			b.read()
		}
	}
	if err != nil {
		b.read()
	}
	return n, err
}
