package ec2fake

import (
	"io"
	"net/http"
	"testing"
	"time"
)

func do(t *testing.T, method, url string, header map[string]string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// The fake holds to IMDSv2's rules.
func TestTheFakeKeepsIMDSv2Rules(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tokenURL := s.Endpoint() + "/latest/api/token"
	spot := s.Endpoint() + "/latest/meta-data/" + PathInstanceAction
	for ttl, want := range map[string]int{"": 400, "0": 400, "21601": 400, "x": 400, "60": 200} {
		if code, _, _ := do(t, http.MethodPut, tokenURL, map[string]string{HeaderTTL: ttl}); code != want {
			t.Errorf("token PUT with TTL %q: %d, want %d", ttl, code, want)
		}
	}
	if code, _, _ := do(t, http.MethodPut, tokenURL, map[string]string{HeaderTTL: "60", "X-Forwarded-For": "10.0.0.1"}); code != http.StatusForbidden {
		t.Errorf("token PUT through a proxy: %d, want 403", code)
	}
	if code, _, _ := do(t, http.MethodGet, spot, nil); code != http.StatusUnauthorized {
		t.Errorf("GET without a token (IMDSv1): %d, want 401", code)
	}
	s.GrantTTL(time.Second)
	_, tok, h := do(t, http.MethodPut, tokenURL, map[string]string{HeaderTTL: "300"})
	if h.Get(HeaderTTL) != "1" {
		t.Errorf("granted TTL %q, want 1", h.Get(HeaderTTL))
	}
	auth := map[string]string{HeaderToken: tok}
	if code, _, _ := do(t, http.MethodGet, spot, auth); code != http.StatusNotFound {
		t.Errorf("no interruption: %d, want 404", code)
	}
	if code, body, _ := do(t, http.MethodGet, s.Endpoint()+"/latest/meta-data/"+PathScheduled, auth); code != http.StatusOK || body != "[]" {
		t.Errorf("no scheduled events: %d %q, want 200 []", code, body)
	}
	s.SetInstanceAction("terminate", time.Date(2026, 12, 1, 10, 2, 0, 0, time.UTC))
	if code, body, _ := do(t, http.MethodGet, spot, auth); code != http.StatusOK || body != `{"action":"terminate","time":"2026-12-01T10:02:00Z"}` {
		t.Errorf("interruption: %d %q", code, body)
	}
	time.Sleep(1100 * time.Millisecond)
	if code, _, _ := do(t, http.MethodGet, spot, auth); code != http.StatusUnauthorized {
		t.Errorf("GET with an expired token: %d, want 401", code)
	}
}
