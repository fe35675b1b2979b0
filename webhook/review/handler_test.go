package review

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionv1 "k8s.io/api/admission/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// scriptedGate answers with a fixed response and records what it saw.
type scriptedGate struct {
	resp Response
	seen *Request
}

func (g *scriptedGate) Name() string { return "scripted" }

func (g *scriptedGate) Admit(_ context.Context, req *Request) Response {
	cp := *req
	cp.Object = append([]byte(nil), req.Object...)
	g.seen = &cp
	return g.resp
}

const validReview = `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Binding"},"resource":{"group":"","version":"v1","resource":"pods"},"subResource":"binding","name":"p","namespace":"ns","operation":"CREATE","userInfo":{"username":"system:kube-scheduler"},"object":{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}}}`

func post(t *testing.T, h http.Handler, contentType, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/x", strings.NewReader(body))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func newTestHandler(t *testing.T, g Gate) (*Handler, *Metrics) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return NewHandler(g, logr.Discard(), clocktesting.NewFakePassiveClock(time.Unix(0, 0)), m), m
}

func TestMalformedCallsGetAClientError(t *testing.T) {
	tests := map[string]struct {
		method, contentType, body string
		want                      int
		wantText                  string
	}{
		"A body that is not JSON is a bad request.": {
			method: http.MethodPost, contentType: "application/json", body: "garbage{", want: 400, wantText: "decode AdmissionReview",
		},
		"An empty body is a bad request.": {
			method: http.MethodPost, contentType: "application/json", body: "", want: 400, wantText: "empty body",
		},
		"A review without a request is a bad request.": {
			method: http.MethodPost, contentType: "application/json", body: `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, want: 400, wantText: "no request",
		},
		"A review whose request is null is a bad request.": {
			method: http.MethodPost, contentType: "application/json", body: `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}`, want: 400, wantText: "no request",
		},
		"Field names are matched case-sensitively, as the API server does.": {
			method: http.MethodPost, contentType: "application/json", body: `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","Request":{"uid":"u"}}`, want: 400, wantText: "no request",
		},
		"A request without uid is a bad request.": {
			method: http.MethodPost, contentType: "application/json", body: `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}`, want: 400, wantText: "no uid",
		},
		"A v1beta1 review is a bad request.": {
			method: http.MethodPost, contentType: "application/json", body: strings.Replace(validReview, "admission.k8s.io/v1", "admission.k8s.io/v1beta1", 1), want: 400, wantText: "want apiVersion",
		},
		"Trailing data after the review is a bad request.": {
			method: http.MethodPost, contentType: "application/json", body: validReview + "{}", want: 400, wantText: "decode",
		},
		"A YAML content type is unsupported.": {
			method: http.MethodPost, contentType: "application/yaml", body: validReview, want: 415, wantText: "want application/json",
		},
		"A missing content type is unsupported.": {
			method: http.MethodPost, body: validReview, want: 415, wantText: "want application/json",
		},
		"A GET is not allowed.": {
			method: http.MethodGet, contentType: "application/json", want: 405, wantText: "POST",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			g := &scriptedGate{resp: Allow("ok")}
			h, m := newTestHandler(t, g)
			r := httptest.NewRequest(tc.method, "/x", strings.NewReader(tc.body))
			if tc.contentType != "" {
				r.Header.Set("Content-Type", tc.contentType)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.want || !strings.Contains(w.Body.String(), tc.wantText) {
				t.Fatalf("got %d %q, want %d containing %q", w.Code, w.Body.String(), tc.want, tc.wantText)
			}
			if g.seen != nil {
				t.Fatal("the gate was called for a malformed review")
			}
			if got := counterValue(t, m.decisions.WithLabelValues("scripted", "rejected")); got != 1 {
				t.Fatalf("rejected count %v, want 1", got)
			}
		})
	}
}

func TestBodyOverTheLimitIsRefused(t *testing.T) {
	h, _ := newTestHandler(t, &scriptedGate{resp: Allow("ok")})
	w := post(t, h, "application/json", strings.Repeat(" ", MaxBodyBytes+1))
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("got %d, want 413", w.Code)
	}
}

func decodeReview(t *testing.T, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	var r admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v\n%s", err, body)
	}
	if r.APIVersion != "admission.k8s.io/v1" || r.Kind != "AdmissionReview" || r.Response == nil {
		t.Fatalf("unexpected review %s", body)
	}
	return r.Response
}

func TestAnswersAreWellFormedReviews(t *testing.T) {
	tests := map[string]struct {
		resp  Response
		check func(t *testing.T, r *admissionv1.AdmissionResponse)
	}{
		"An allowed request echoes the uid and carries no status.": {
			resp: Allow("ok"),
			check: func(t *testing.T, r *admissionv1.AdmissionResponse) {
				if !r.Allowed || r.UID != "u-1" || r.Result != nil {
					t.Fatalf("got %+v", r)
				}
			},
		},
		"A denial carries code 403 and the gate's message, escaped.": {
			resp: Deny("no", `node "n1" is <terminating> — ünïcode`),
			check: func(t *testing.T, r *admissionv1.AdmissionResponse) {
				if r.Allowed || r.Result == nil || r.Result.Code != 403 || r.Result.Message != `node "n1" is <terminating> — ünïcode` {
					t.Fatalf("got %+v", r)
				}
			},
		},
		"An invalid object is denied with code 400.": {
			resp: Invalid("bad", "bad value"),
			check: func(t *testing.T, r *admissionv1.AdmissionResponse) {
				if r.Allowed || r.Result.Code != 400 {
					t.Fatalf("got %+v", r)
				}
			},
		},
		"A patch is sent base64-encoded as a JSON patch.": {
			resp: Response{Allowed: true, Patch: []byte(`[{"op":"add","path":"/a","value":"b"}]`)},
			check: func(t *testing.T, r *admissionv1.AdmissionResponse) {
				if !r.Allowed || r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch || string(r.Patch) != `[{"op":"add","path":"/a","value":"b"}]` {
					t.Fatalf("got %+v", r)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			g := &scriptedGate{resp: tc.resp}
			h, _ := newTestHandler(t, g)
			w := post(t, h, "application/json; charset=utf-8", validReview)
			if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %s", w.Code, w.Header().Get("Content-Type"))
			}
			tc.check(t, decodeReview(t, w.Body.Bytes()))
		})
	}
}

func TestTheGateSeesTheDecodedRequest(t *testing.T) {
	g := &scriptedGate{resp: Allow("ok")}
	h, m := newTestHandler(t, g)
	if w := post(t, h, "application/json", validReview); w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	s := g.seen
	if s.UID != "u-1" || s.SubResource != "binding" || s.Name != "p" || s.Namespace != "ns" || s.Operation != OperationCreate || s.UserInfo.Username != "system:kube-scheduler" {
		t.Fatalf("decoded %+v", s)
	}
	if !strings.Contains(string(s.Object), `"target":{"kind":"Node","name":"n1"}`) {
		t.Fatalf("object %s", s.Object)
	}
	if got := counterValue(t, m.decisions.WithLabelValues("scripted", "ok")); got != 1 {
		t.Fatalf("decision count %v, want 1", got)
	}
}

func TestReusedBuffersDoNotLeakBetweenRequests(t *testing.T) {
	g := &scriptedGate{resp: Allow("ok")}
	h, _ := newTestHandler(t, g)
	post(t, h, "application/json", validReview)
	noObject := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-2","operation":"DELETE","userInfo":{"extra":{"k":["v"]}}}}`
	post(t, h, "application/json", noObject)
	if len(g.seen.Object) != 0 || g.seen.Name != "" || g.seen.UID != "u-2" {
		t.Fatalf("second request saw leftovers: %+v", g.seen)
	}
}
