package webhook

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
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
}

// DefaultLimits are sized for a replica with a 256 MiB memory limit:
// 64 MiB of bodies, 512 connections of about 50 KiB of TLS and HTTP
// buffers each (25 MiB), and the caches leave the rest to the runtime.
func DefaultLimits() Limits {
	return Limits{
		ReadHeaderTimeout:    5 * time.Second,
		ReadTimeout:          10 * time.Second,
		WriteTimeout:         10 * time.Second,
		IdleTimeout:          90 * time.Second,
		MaxBodyBytes:         review.MaxBodyBytes,
		MaxInFlight:          256,
		MaxInFlightBodyBytes: 64 << 20,
		MaxConnections:       512,
		MaxConcurrentStreams: 100,
	}
}

// Validate checks the limits once at start-up.
func (l Limits) Validate() error {
	var errs []error
	if l.ReadHeaderTimeout <= 0 || l.ReadTimeout <= 0 || l.WriteTimeout <= 0 || l.IdleTimeout <= 0 {
		errs = append(errs, errors.New("server timeouts must be positive"))
	}
	if l.MaxBodyBytes <= 0 || l.MaxInFlight <= 0 || l.MaxConnections <= 0 || l.MaxConcurrentStreams <= 0 {
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
	return l
}

// minCallWeight is what a call with a tiny body still costs: goroutine,
// decoded request, answer.
const minCallWeight = 4 << 10

// Reasons a call is refused before a gate sees it (metric label values).
const (
	RefusedTooMany  = "too-many-requests"
	RefusedTooLarge = "body-too-large"
)

// limitCalls admits a call only while the in-flight count and body budget
// allow it; others are answered at once, without reading their body: 413
// when the declared body is over the cap, 429 when the replica is full. The
// API server treats either as a failed call and applies the registration's
// failurePolicy; a 429 costs the caller microseconds instead of the
// webhook's memory.
type limitCalls struct {
	next    http.Handler
	limits  Limits
	metrics *review.Metrics

	inFlight atomic.Int64
	bytes    atomic.Int64
}

func newLimitCalls(next http.Handler, l Limits, m *review.Metrics) *limitCalls {
	return &limitCalls{next: next, limits: l, metrics: m}
}

func (c *limitCalls) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	if c.inFlight.Add(1) > int64(c.limits.MaxInFlight) {
		c.inFlight.Add(-1)
		c.refuse(w, "too many calls in flight")
		return
	}
	defer c.inFlight.Add(-1)
	if c.bytes.Add(weight) > c.limits.MaxInFlightBodyBytes {
		c.bytes.Add(-weight)
		c.refuse(w, "too many request bytes in flight")
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

func (c *limitCalls) refuse(w http.ResponseWriter, why string) {
	c.metrics.Refused(RefusedTooMany)
	w.Header().Set("Retry-After", "1")
	http.Error(w, why, http.StatusTooManyRequests)
}
