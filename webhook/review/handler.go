package review

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	strictjson "sigs.k8s.io/json"
)

// MaxBodyBytes bounds a review body. The API server caps objects at a few
// MiB; a Pod review with its old object fits comfortably.
const MaxBodyBytes = 7 << 20

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
	body bytes.Buffer
	env  envelope
	req  *Request
	out  []byte
}

// Handler serves one gate over HTTP.
type Handler struct {
	gate    Gate
	log     logr.Logger
	clock   clock.PassiveClock
	metrics *GateMetrics
	pool    sync.Pool
}

// NewHandler wraps gate. metrics may be nil (no metrics recorded).
func NewHandler(gate Gate, log logr.Logger, clk clock.PassiveClock, metrics *Metrics) *Handler {
	h := &Handler{gate: gate, log: log.WithValues("gate", gate.Name()), clock: clk, metrics: metrics.ForGate(gate.Name())}
	h.pool.New = func() any { return new(scratch) }
	return h
}

// ServeHTTP decodes the review, asks the gate and writes its answer. A call
// that is not a well-formed AdmissionReview gets 400 with the reason; the API
// server then applies the webhook's failurePolicy.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.clock.Now()
	s := h.pool.Get().(*scratch)
	defer h.release(s)

	if status, err := s.decode(r); err != nil {
		h.metrics.observeRejected()
		h.log.V(1).Info("Refusing malformed admission call", "status", status, "err", err.Error())
		http.Error(w, err.Error(), status)
		return
	}
	resp := h.gate.Admit(r.Context(), s.req)
	s.out = appendReview(s.out[:0], s.req.UID, &resp)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(s.out)
	h.metrics.observe(resp.Verdict, resp.Allowed, h.clock.Since(start))
	h.logDecision(s.req, &resp)
	s.req, s.env = nil, envelope{} // do not keep the request alive in the pool
}

// release returns s to the pool unless one huge review grew its buffer:
// that memory should go back to the heap, not stay parked in the pool.
func (h *Handler) release(s *scratch) {
	if s.body.Cap() > pooledBodyMax {
		return
	}
	h.pool.Put(s)
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
func (s *scratch) decode(r *http.Request) (int, error) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: admission reviews are POSTed", r.Method)
	}
	if ct := r.Header.Get("Content-Type"); !isJSON(ct) {
		return http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: want application/json", ct)
	}
	s.body.Reset()
	n, err := s.body.ReadFrom(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return http.StatusBadRequest, fmt.Errorf("read body: %w", err)
	}
	if n > MaxBodyBytes {
		return http.StatusRequestEntityTooLarge, fmt.Errorf("body larger than %d bytes", MaxBodyBytes)
	}
	return s.parse(s.body.Bytes())
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
