// Package receiver is an HTTP receiver of the notifier's requests for
// termgate's tests and demo: a real server on a loopback port that records
// what arrives and answers as told (accept, fail with a status for a while,
// or hang), the way a team's webhook endpoint or Slack would.
package receiver

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Request is one request that arrived.
type Request struct {
	// At is when it arrived; Answered is the status it got (0 while it
	// hangs or when the receiver closed first).
	At       time.Time
	Answered int
	// Ended is when the receiver was done with it: answered, or, for a
	// request it held, when the client gave up.
	Ended  time.Time
	Header http.Header
	Body   []byte
	// Event is the body read as a CloudEvent (zero if it is not one).
	Event Event
	// SignatureOK is set when the receiver has a key and the body's
	// signature matches it.
	SignatureOK bool
}

// Event is a CloudEvent in structured mode, with termgate's data.
type Event struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Subject     string          `json:"subject"`
	Time        time.Time       `json:"time"`
	Data        json.RawMessage `json:"data"`
}

// Behaviour decides each answer; nil accepts everything with 200.
type Behaviour func(r *http.Request, n int) (status int, header http.Header, hang bool)

// Receiver is a running receiver.
type Receiver struct {
	// URL is where it listens.
	URL string

	srv       *http.Server
	ln        net.Listener
	hmacKey   []byte
	sigHeader string

	mu        sync.Mutex
	behave    Behaviour
	requests  []*Request
	changed   chan struct{}
	hangs     chan struct{} // closed by Close: releases hanging requests
	closeOnce sync.Once
}

// Options configure Start.
type Options struct {
	// HMACKey, with SignatureHeader, checks each request's signature.
	HMACKey         []byte
	SignatureHeader string
	Behaviour       Behaviour
}

// Start listens on a free loopback port.
func Start(o Options) (*Receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
	}
	// The path holds a token, as Slack's do: tests check it never leaks.
	token := make([]byte, 12)
	_, _ = rand.Read(token)
	r := &Receiver{
		URL: "http://" + ln.Addr().String() + "/hooks/" + hex.EncodeToString(token), ln: ln, hmacKey: o.HMACKey, sigHeader: o.SignatureHeader,
		behave: o.Behaviour, changed: make(chan struct{}), hangs: make(chan struct{}),
	}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// SetBehaviour changes how the receiver answers from now on.
func (r *Receiver) SetBehaviour(b Behaviour) {
	r.mu.Lock()
	r.behave = b
	r.mu.Unlock()
}

func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	rec := &Request{At: time.Now(), Header: req.Header.Clone(), Body: body}
	_ = json.Unmarshal(body, &rec.Event)
	if r.hmacKey != nil {
		mac := hmac.New(sha256.New, r.hmacKey)
		mac.Write(body)
		rec.SignatureOK = hmac.Equal([]byte(req.Header.Get(r.sigHeader)), []byte("sha256="+hex.EncodeToString(mac.Sum(nil))))
	}
	r.mu.Lock()
	r.requests = append(r.requests, rec)
	n := len(r.requests)
	behave := r.behave
	r.notifyLocked()
	r.mu.Unlock()
	status, header, hang := http.StatusOK, http.Header(nil), false
	if behave != nil {
		status, header, hang = behave(req, n)
	}
	if hang {
		select {
		case <-req.Context().Done(): // the client gave up
		case <-r.hangs:
		}
		r.mu.Lock()
		rec.Ended = time.Now()
		r.notifyLocked()
		r.mu.Unlock()
		return
	}
	for k, v := range header {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	r.mu.Lock()
	rec.Answered, rec.Ended = status, time.Now()
	r.notifyLocked()
	r.mu.Unlock()
}

func (r *Receiver) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Requests returns every request so far, in order of arrival.
func (r *Receiver) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Request, len(r.requests))
	for i, q := range r.requests {
		out[i] = *q
	}
	return out
}

// Accepted returns the requests answered with a 2xx, in order.
func (r *Receiver) Accepted() []Request {
	var out []Request
	for _, q := range r.Requests() {
		if q.Answered >= 200 && q.Answered < 300 {
			out = append(out, q)
		}
	}
	return out
}

// WaitFor waits until cond holds over the requests, or ctx ends; it
// returns the requests it last saw.
func (r *Receiver) WaitFor(ctx context.Context, cond func([]Request) bool) ([]Request, error) {
	for {
		r.mu.Lock()
		changed := r.changed
		r.mu.Unlock()
		reqs := r.Requests()
		if cond(reqs) {
			return reqs, nil
		}
		select {
		case <-ctx.Done():
			return reqs, ctx.Err()
		case <-changed:
		}
	}
}

// Close releases hanging requests and stops the server.
func (r *Receiver) Close() {
	r.closeOnce.Do(func() {
		close(r.hangs)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = r.srv.Shutdown(ctx)
	})
}
