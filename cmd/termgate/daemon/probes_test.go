package daemon

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProbesListWhatIsMissing(t *testing.T) {
	ok := Check{Name: "node-cache", Fn: func() error { return nil }}
	bad := Check{Name: "serving-certificate", Fn: func() error { return errors.New("not loaded yet") }}
	dead := Check{Name: "metadata-watch", Fn: func() error { return errors.New("silent for 2m") }}
	tests := map[string]struct {
		live, ready []Check
		method      string
		path        string
		wantCode    int
		wantBody    string
	}{
		"Ready when every check holds.":                 {ready: []Check{ok}, path: "/readyz", wantCode: 200, wantBody: "ok"},
		"Not ready names the failing check and why.":    {ready: []Check{ok, bad}, path: "/readyz", wantCode: 503, wantBody: "[-]serving-certificate failed: not loaded yet"},
		"Verbose readiness lists every check.":          {ready: []Check{ok}, path: "/readyz?verbose", wantCode: 200, wantBody: "[+]node-cache ok"},
		"Liveness does not depend on readiness checks.": {ready: []Check{bad}, path: "/healthz", wantCode: 200, wantBody: "ok"},
		"Liveness fails with its own checks.":           {live: []Check{dead}, path: "/healthz", wantCode: 503, wantBody: "[-]metadata-watch failed: silent for 2m"},
		"Other paths are not served.":                   {path: "/metrics", wantCode: 404},
		"Probes answer GET only.":                       {method: http.MethodPost, path: "/readyz", wantCode: 405},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			w := httptest.NewRecorder()
			Probes(tc.live, tc.ready).ServeHTTP(w, httptest.NewRequest(method, tc.path, nil))
			if w.Code != tc.wantCode || !strings.Contains(w.Body.String(), tc.wantBody) {
				t.Fatalf("got %d %q", w.Code, w.Body.String())
			}
		})
	}
}
