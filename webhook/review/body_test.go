package review

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// deadlineGate records the deadline the handler gave it.
type deadlineGate struct {
	left time.Duration
	has  bool
}

func (g *deadlineGate) Name() string { return "deadline" }

func (g *deadlineGate) Admit(ctx context.Context, _ *Request) Response {
	var dl time.Time
	dl, g.has = ctx.Deadline()
	g.left = time.Until(dl)
	return Allow("ok")
}

// localGate is a deadlineGate that says it never calls the API.
type localGate struct{ deadlineGate }

func (g *localGate) CallsAPI() bool { return false }

// bigReview is a valid review whose object carries an annotation of n bytes.
func bigReview(n int) string {
	return `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","name":"p","namespace":"ns","operation":"CREATE",` +
		`"object":{"metadata":{"name":"p","annotations":{"big":"` + strings.Repeat("x", n) + `"}},"spec":{}}}}`
}

func TestBodyLimits(t *testing.T) {
	tests := map[string]struct {
		body       string
		undeclared bool // sent without a length, as chunked encoding does
		limit      int64
		want       int
	}{
		"A declared length over the limit is refused before reading.": {
			body: bigReview(2048), limit: 1024, want: http.StatusRequestEntityTooLarge,
		},
		"An undeclared length is refused once the body passes the limit.": {
			body: bigReview(2048), undeclared: true, limit: 1024, want: http.StatusRequestEntityTooLarge,
		},
		"A body within the limit with an undeclared length is served.": {
			body: bigReview(100_000), undeclared: true, limit: 1 << 20, want: http.StatusOK,
		},
		"A body exactly at the limit is served.": {
			body: validReview, limit: int64(len(validReview)), want: http.StatusOK,
		},
		"The default limit admits the largest review the API server sends.": {
			body: bigReview(2 * 3 << 20), want: http.StatusOK,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h, _ := newTestHandler(t, &scriptedGate{resp: Allow("ok")})
			h.WithMaxBodyBytes(tc.limit)
			var body io.Reader = strings.NewReader(tc.body)
			if tc.undeclared {
				body = io.MultiReader(body) // hides the length from NewRequest
			}
			r := httptest.NewRequest(http.MethodPost, "/x", body)
			r.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.want {
				t.Fatalf("got %d (%s), want %d", w.Code, strings.TrimSpace(w.Body.String()), tc.want)
			}
		})
	}
}

// A review of several MiB is held once: the objects point into the body
// instead of being copied out of it.
func TestALargeReviewIsNotCopied(t *testing.T) {
	const size = 4 << 20
	body := bigReview(size)
	h, _ := newTestHandler(t, &deadlineGate{})
	serve := func() {
		r := httptest.NewRequest(http.MethodPost, "/x", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			t.Fatalf("got %d: %s", w.Code, w.Body.String())
		}
	}
	serve() // warm up pools and lazily built tables
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	serve()
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	// One body buffer plus small change; a copy of the object would add
	// another 4 MiB.
	if allocated > size*5/4 {
		t.Fatalf("serving a %d-byte review allocated %d bytes: the body is copied", len(body), allocated)
	}
}

func TestTheGateAnswersBeforeTheAPIServerGivesUp(t *testing.T) {
	tests := map[string]struct {
		query    string
		local    bool // the gate says it never calls the API
		wantHas  bool
		wantLeft time.Duration
	}{
		"The API server's 2s timeout leaves the gate 1.6s.":    {query: "?timeout=2s", wantHas: true, wantLeft: 1600 * time.Millisecond},
		"A timeout above the API's maximum is bounded to 30s.": {query: "?timeout=1h", wantHas: true, wantLeft: 24 * time.Second},
		"The timeout is found among other parameters.":         {query: "?dryRun=All&timeout=2s&x=1", wantHas: true, wantLeft: 1600 * time.Millisecond},
		"Without a timeout the gate has no deadline of ours.":  {query: ""},
		"Only the parameter named timeout counts.":             {query: "?xtimeout=2s&timeouts=2s"},
		"A malformed timeout is ignored.":                      {query: "?timeout=soon"},
		"A negative timeout is ignored.":                       {query: "?timeout=-2s"},
		"A gate that never calls the API gets no deadline.":    {query: "?timeout=2s", local: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var g *deadlineGate
			var h *Handler
			if tc.local {
				lg := &localGate{}
				g = &lg.deadlineGate
				h, _ = newTestHandler(t, lg)
			} else {
				g = &deadlineGate{}
				h, _ = newTestHandler(t, g)
			}
			r := httptest.NewRequest(http.MethodPost, "/x"+tc.query, strings.NewReader(validReview))
			r.Header.Set("Content-Type", "application/json")
			h.ServeHTTP(httptest.NewRecorder(), r)
			if g.has != tc.wantHas {
				t.Fatalf("deadline set %v, want %v", g.has, tc.wantHas)
			}
			if tc.wantHas && (g.left > tc.wantLeft || g.left < tc.wantLeft-time.Second) {
				t.Fatalf("gate had %v left, want about %v", g.left, tc.wantLeft)
			}
		})
	}
}

// FuzzAnswerWithin: any timeout parameter gives no deadline or a positive
// one below the API server's and never above 24s.
func FuzzAnswerWithin(f *testing.F) {
	for _, s := range []string{"2s", "1s", "30s", "0s", "-1s", "9999999h", "1e9", "", "1.5s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		d, ok := answerWithin(raw)
		if !ok {
			return
		}
		if d <= 0 || d > 24*time.Second {
			t.Fatalf("timeout %q gives %v", raw, d)
		}
		if full, err := time.ParseDuration(raw); err != nil || d >= full {
			t.Fatalf("timeout %q gives %v, not less than it", raw, d)
		}
	})
}

// FuzzReadBody: any declared length and body, declared truthfully or not,
// end in an answer below 500 and never in a panic.
func FuzzReadBody(f *testing.F) {
	f.Add(validReview, int64(len(validReview)), int64(1<<20))
	f.Add(validReview, int64(-1), int64(10))
	f.Add("", int64(0), int64(1))
	f.Fuzz(func(t *testing.T, body string, declared, limit int64) {
		if limit <= 0 || limit > 1<<20 {
			limit = 1 << 20
		}
		h, _ := newTestHandler(t, &scriptedGate{resp: Allow("ok")})
		h.WithMaxBodyBytes(limit)
		r := httptest.NewRequest(http.MethodPost, "/x", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		// A lying length: the server's body reader stops at the declared
		// length, as net/http's does.
		sent := int64(len(body))
		if declared >= 0 && declared < sent {
			r.Body = io.NopCloser(io.LimitReader(strings.NewReader(body), declared))
			sent = declared
		}
		r.ContentLength = max(declared, -1)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("status %d", w.Code)
		}
		if w.Code == http.StatusOK && (sent > limit || declared > limit) {
			t.Fatalf("served a body over the limit (sent %d, declared %d, limit %d)", sent, declared, limit)
		}
	})
}
