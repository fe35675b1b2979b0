package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// duration is a time.Duration written as a Go duration string in JSON.
type duration time.Duration

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("duration %q: want a Go duration of at least 0", s)
	}
	*d = duration(v)
	return nil
}

// controlHandler is the test's handle on the cloud: what the load balancers
// did, how slow the cloud is, which calls fail, which VMs are stopped and
// where the stand-ins of kwok pods listen.
//
//	GET  /healthz                     ready once the caches are synced
//	GET  /state                       load balancers (hosts, health, history) and calls
//	PUT  /config                      {"operationTime": "5s"}
//	PUT  /services/{ns}/{name}/fault  {"operationTime": "20s", "fail": 2, "message": "quota"}
//	PUT  /standins/{ip}               {"addr": "127.0.0.1:40123"}; DELETE removes it
//	PUT  /nodes/{name}/stopped        {"stopped": true}
func controlHandler(c *localCloud, ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "caches not synced", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, c.snapshot()) })
	mux.HandleFunc("PUT /config", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			OperationTime *duration `json:"operationTime"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		if body.OperationTime != nil {
			c.mu.Lock()
			c.opTime = time.Duration(*body.OperationTime)
			c.mu.Unlock()
		}
	})
	mux.HandleFunc("PUT /services/{ns}/{name}/fault", func(w http.ResponseWriter, r *http.Request) {
		var f fault
		if !readJSON(w, r, &f) {
			return
		}
		c.mu.Lock()
		c.faults[serviceKey(r.PathValue("ns"), r.PathValue("name"))] = &f
		c.mu.Unlock()
	})
	mux.HandleFunc("DELETE /services/{ns}/{name}/fault", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		delete(c.faults, serviceKey(r.PathValue("ns"), r.PathValue("name")))
		c.mu.Unlock()
	})
	mux.HandleFunc("PUT /standins/{ip}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Addr string `json:"addr"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		c.p.setStandIn(r.PathValue("ip"), body.Addr)
	})
	mux.HandleFunc("DELETE /standins/{ip}", func(w http.ResponseWriter, r *http.Request) { c.p.setStandIn(r.PathValue("ip"), "") })
	mux.HandleFunc("PUT /nodes/{name}/stopped", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Stopped bool `json:"stopped"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		if err := c.p.setStopped(r.PathValue("name"), body.Stopped); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
		}
	})
	return mux
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		http.Error(w, "bad request body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
