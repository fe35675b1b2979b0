package review

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	strictjson "sigs.k8s.io/json"
)

// MaxBodyBytes is the default bound of a review body: 6.25 MiB, just above
// the largest review the API server sends. The API server refuses request
// bodies above 3 MiB (its MaxRequestBodyBytes: twice etcd's 1.5 MiB
// request limit, since JSON is larger than the protobuf stored), and a
// review carries at most two objects of that size: object and oldObject on
// an UPDATE, or on a CREATE the object plus the managedFields the server
// adds, which list the object's field paths and can match its size. 256 KiB
// more covers the envelope, userInfo and options. A larger call is
// answered 413 and the API server applies the webhook's failurePolicy.
const MaxBodyBytes = 2*(3<<20) + 256<<10

const (
	apiVersion = "admission.k8s.io/v1"
	kind       = "AdmissionReview"
)

// envelope is the AdmissionReview wrapper. Unknown fields are tolerated so a
// newer API server that adds fields keeps working; what must be there is
// checked in decode.
type envelope struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Request    *Request `json:"request"`
}

// scratch is the per-request state reused through a pool: the body buffer
// and the output. The request itself is decoded fresh each time: reusing it
// would need a second pass over the body to tell an absent request from a
// present one, which costs more than the allocation it saves.
type scratch struct {
	body []byte
	env  envelope
	req  *Request
	out  []byte
}

// APICaller is implemented by a gate that can tell whether it may wait on
// the API server. Only such a wait needs the deadline the handler derives
// from the call's timeout, so a gate that answers from the review alone
// (the drain-order stamp) returns false and is spared a timer and a context
// on every call. A gate that does not implement it is taken to call the
// API: a new gate gets the deadline unless it says otherwise.
type APICaller interface {
	CallsAPI() bool
}

// Handler serves one gate over HTTP.
type Handler struct {
	gate    Gate
	log     logr.Logger
	clock   clock.PassiveClock
	metrics *GateMetrics
	maxBody int64
	// callsAPI says whether the gate gets a deadline before the API
	// server's (see APICaller).
	callsAPI bool
	pool     sync.Pool
}

// NewHandler wraps gate. metrics may be nil (no metrics recorded).
func NewHandler(gate Gate, log logr.Logger, clk clock.PassiveClock, metrics *Metrics) *Handler {
	h := &Handler{gate: gate, log: log.WithValues("gate", gate.Name()), clock: clk, metrics: metrics.ForGate(gate.Name()), maxBody: MaxBodyBytes, callsAPI: true}
	if c, ok := gate.(APICaller); ok {
		h.callsAPI = c.CallsAPI()
	}
	h.pool.New = func() any { return new(scratch) }
	return h
}

// WithMaxBodyBytes sets the largest body accepted (413 beyond); n <= 0
// keeps MaxBodyBytes.
func (h *Handler) WithMaxBodyBytes(n int64) *Handler {
	if n > 0 {
		h.maxBody = n
	}
	return h
}

// ServeHTTP decodes the review, asks the gate and writes its answer. A call
// that is not a well-formed AdmissionReview gets 400 with the reason; the API
// server then applies the webhook's failurePolicy.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.clock.Now()
	s := h.pool.Get().(*scratch)
	defer h.release(s)

	if status, err := s.decode(r, h.maxBody); err != nil {
		h.metrics.observeRejected()
		h.log.V(1).Info("Refusing malformed admission call", "status", status, "err", err.Error())
		http.Error(w, err.Error(), status)
		return
	}
	ctx := r.Context()
	if h.callsAPI {
		if d, ok := answerWithin(timeoutParam(r.URL.RawQuery)); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
	}
	resp := h.gate.Admit(ctx, s.req)
	s.out = appendReview(s.out[:0], s.req.UID, &resp)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(s.out)
	h.metrics.observe(resp.Verdict, resp.Allowed, h.clock.Since(start))
	h.logDecision(s.req, &resp)
}

// release returns s to the pool unless one huge review grew its buffer:
// that memory should go back to the heap, not stay parked in the pool.
func (h *Handler) release(s *scratch) {
	s.req, s.env = nil, envelope{} // the request points into the body
	if cap(s.body) > pooledBodyMax {
		return
	}
	h.pool.Put(s)
}

// maxCallTimeout is the longest timeoutSeconds a webhook registration may
// have.
const maxCallTimeout = 30 * time.Second

// answerWithin reads the timeout the API server sends with each call (the
// query parameter "timeout", the registration's timeoutSeconds rounded up to
// the second) and returns how long a gate may take: four fifths of it, so
// a gate whose API read is slow or throttled answers with its own
// fail-open or fail-closed choice before the API server gives up on the
// call and applies the registration's failurePolicy instead.
func answerWithin(timeout string) (time.Duration, bool) {
	if timeout == "" || len(timeout) > 32 {
		return 0, false
	}
	d, err := time.ParseDuration(timeout)
	if err != nil || d <= 0 {
		return 0, false
	}
	d = min(d, maxCallTimeout)
	return d - d/5, true
}

// timeoutParam returns the first "timeout" value of a raw query without
// building the map r.URL.Query() would on every call. The value is not
// unescaped: the API server sends a plain duration ("10s"), and an escaped
// one fails to parse and is ignored like any malformed timeout.
func timeoutParam(rawQuery string) string {
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		if v, ok := strings.CutPrefix(pair, "timeout="); ok {
			return v
		}
	}
	return ""
}

// pooledBodyMax is the largest body buffer kept for reuse; Binding and
// typical Pod reviews are a few KiB.
const pooledBodyMax = 256 << 10

func (h *Handler) logDecision(req *Request, resp *Response) {
	if resp.Allowed {
		if l := h.log.V(2); l.Enabled() {
			l.Info("Allowed", "uid", req.UID, "namespace", req.Namespace, "name", req.Name, "verdict", resp.Verdict)
		}
		return
	}
	h.log.Info("Denied", "uid", req.UID, "namespace", req.Namespace, "name", req.Name,
		"operation", req.Operation, "verdict", resp.Verdict, "message", resp.Message)
}

var errNoRequest = errors.New("admission review has no request")

// decode reads and checks the review. It returns the HTTP status to answer
// with when the call is malformed.
func (s *scratch) decode(r *http.Request, limit int64) (int, error) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: admission reviews are POSTed", r.Method)
	}
	if ct := r.Header.Get("Content-Type"); !isJSON(ct) {
		return http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: want application/json", ct)
	}
	if status, err := s.readBody(r, limit); err != nil {
		return status, err
	}
	return s.parse(s.body)
}

// readBody reads the body into s.body with one allocation at most when the
// length is declared, as the API server always does; the body is then the
// only copy of the review in memory (objects point into it).
func (s *scratch) readBody(r *http.Request, limit int64) (int, error) {
	tooLarge := func() (int, error) {
		return http.StatusRequestEntityTooLarge, fmt.Errorf("body larger than %d bytes", limit)
	}
	if r.ContentLength > limit {
		return tooLarge()
	}
	if r.ContentLength >= 0 {
		n := int(r.ContentLength)
		if cap(s.body) < n {
			s.body = make([]byte, n)
		}
		s.body = s.body[:n]
		if _, err := io.ReadFull(r.Body, s.body); err != nil {
			return bodyError(err, tooLarge)
		}
		return 0, nil
	}
	// Length not declared (chunked): grow as the body arrives, up to limit.
	b := s.body[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		s.body = b
		if int64(len(b)) > limit {
			return tooLarge()
		}
		if errors.Is(err, io.EOF) {
			return 0, nil
		}
		if err != nil {
			return bodyError(err, tooLarge)
		}
	}
}

func bodyError(err error, tooLarge func() (int, error)) (int, error) {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return tooLarge()
	}
	return http.StatusBadRequest, fmt.Errorf("read body: %w", err)
}

// parse decodes body into s.req, reusing the buffers of the previous call.
func (s *scratch) parse(body []byte) (int, error) {
	s.env = envelope{}
	s.req = nil
	if len(bytes.TrimSpace(body)) == 0 {
		return http.StatusBadRequest, errors.New("empty body: want an AdmissionReview")
	}
	if err := strictjson.UnmarshalCaseSensitivePreserveInts(body, &s.env); err != nil {
		return http.StatusBadRequest, fmt.Errorf("decode AdmissionReview: %w", err)
	}
	if s.env.APIVersion != apiVersion || s.env.Kind != kind {
		return http.StatusBadRequest, fmt.Errorf("got %q %q: want apiVersion %s kind %s", s.env.APIVersion, s.env.Kind, apiVersion, kind)
	}
	if s.env.Request == nil {
		return http.StatusBadRequest, errNoRequest
	}
	s.req = s.env.Request
	if s.req.UID == "" {
		return http.StatusBadRequest, errors.New("admission request has no uid")
	}
	if isNull(s.req.Object) {
		s.req.Object = nil
	}
	if isNull(s.req.OldObject) {
		s.req.OldObject = nil
	}
	return 0, nil
}

func isNull(raw []byte) bool { return string(raw) == "null" }

func isJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/json")
}

// appendReview writes the response review by hand: it is the only encoding
// on the hot path and has a fixed shape.
func appendReview(b []byte, uid string, resp *Response) []byte {
	b = append(b, `{"apiVersion":"`+apiVersion+`","kind":"`+kind+`","response":{"uid":`...)
	b = appendString(b, uid)
	if resp.Allowed {
		b = append(b, `,"allowed":true`...)
	} else {
		b = append(b, `,"allowed":false`...)
	}
	if !resp.Allowed || resp.Message != "" {
		code := resp.Code
		if code == 0 {
			code = http.StatusForbidden
		}
		b = append(b, `,"status":{"code":`...)
		b = fmt.Appendf(b, "%d", code)
		b = append(b, `,"message":`...)
		b = appendString(b, resp.Message)
		b = append(b, '}')
	}
	if len(resp.Patch) > 0 {
		b = append(b, `,"patchType":"JSONPatch","patch":"`...)
		b = base64.StdEncoding.AppendEncode(b, resp.Patch)
		b = append(b, '"')
	}
	return append(b, "}}"...)
}

// appendString appends s as a JSON string. Plain printable ASCII, which is
// what UIDs and most messages are, is copied; anything else goes through
// encoding/json so escaping is exactly right.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
