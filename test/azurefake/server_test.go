package azurefake

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, s *Server, header map[string]string, query string) (*http.Response, Document) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.Endpoint()+"/metadata/scheduledevents"+query, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d Document
	_ = json.NewDecoder(resp.Body).Decode(&d)
	return resp, d
}

// Document is what the fake serves.
type Document struct {
	DocumentIncarnation int
	Events              []Event
}

// The fake holds to the rules the real service enforces.
func TestTheFakeKeepsScheduledEventsRules(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ok := map[string]string{"Metadata": "true"}
	q := "?api-version=2020-07-01"
	if resp, _ := get(t, s, nil, q); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("without Metadata: true: %d, want 400", resp.StatusCode)
	}
	if resp, _ := get(t, s, ok, ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("without api-version: %d, want 400", resp.StatusCode)
	}
	if resp, _ := get(t, s, map[string]string{"Metadata": "true", "X-Forwarded-For": "10.0.0.1"}, q); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("through a proxy: %d, want 400", resp.StatusCode)
	}
	time.Sleep(time.Second) // the requests above count against the rate
	_, before := get(t, s, ok, q)
	s.Set(Scheduled("e1", "Preempt", time.Date(2026, 9, 19, 18, 29, 47, 0, time.UTC), "vm_1", "vm_2"))
	_, after := get(t, s, ok, q)
	if after.DocumentIncarnation <= before.DocumentIncarnation || len(after.Events) != 1 || after.Events[0].NotBefore != "Sat, 19 Sep 2026 18:29:47 GMT" {
		t.Fatalf("after a change: %+v (before %+v)", after, before)
	}
	time.Sleep(time.Second)
	throttled := 0
	for range RateLimit + 2 {
		if resp, _ := get(t, s, ok, q); resp.StatusCode == http.StatusTooManyRequests {
			throttled++
		}
	}
	if throttled != 2 {
		t.Errorf("%d of %d requests within a second throttled, want 2", throttled, RateLimit+2)
	}
	time.Sleep(time.Second)
	req, _ := http.NewRequest(http.MethodPost, s.Endpoint()+"/metadata/scheduledevents"+q, strings.NewReader(`{"StartRequests":[{"EventId":"e1"}]}`))
	req.Header.Set("Metadata", "true")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("acknowledge: %v %v", resp, err)
	}
	resp.Body.Close()
	if _, d := get(t, s, ok, q); d.Events[0].EventStatus != "Started" || d.Events[0].NotBefore != "" {
		t.Fatalf("acknowledged event: %+v, want Started with a blank NotBefore", d.Events[0])
	}
}
