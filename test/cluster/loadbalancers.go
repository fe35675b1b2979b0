package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"termgate.dev/termgate/test/proc"
)

// LoadBalancerOptions configure the cloud behind the upstream service
// controller (bin/service-controller, test/servicecontroller): its load
// balancers run on this machine and behave like GCE's (hosts programmed by
// each call, health checks, connection draining on removal).
type LoadBalancerOptions struct {
	// OperationTime is how long each EnsureLoadBalancer and
	// UpdateLoadBalancer call takes, like the GCE operations of a target
	// pool; defaults to 2s.
	OperationTime time.Duration
	// The health check; zero fields take GCE's 8s interval, 1s timeout,
	// unhealthy after 3 failures, healthy after 1 success.
	HealthCheckInterval time.Duration
	HealthCheckTimeout  time.Duration
	UnhealthyThreshold  int
	HealthyThreshold    int
	// ConcurrentServiceSyncs is the controller's --concurrent-service-syncs
	// (default 1, as on GKE).
	ConcurrentServiceSyncs int
}

func (c *Cluster) startServiceController(ctx context.Context) error {
	o := *c.opts.LoadBalancers
	if o.OperationTime == 0 {
		o.OperationTime = 2 * time.Second
	}
	if o.ConcurrentServiceSyncs == 0 {
		o.ConcurrentServiceSyncs = 1
	}
	ports, err := proc.FreePorts(1)
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--control-address=" + addr,
		"--operation-time=" + o.OperationTime.String(),
		"--concurrent-service-syncs=" + strconv.Itoa(o.ConcurrentServiceSyncs),
		"--v=" + strconv.Itoa(max(c.opts.Verbosity, 2)),
	}
	for flag, v := range map[string]time.Duration{"health-check-interval": o.HealthCheckInterval, "health-check-timeout": o.HealthCheckTimeout} {
		if v > 0 {
			args = append(args, "--"+flag+"="+v.String())
		}
	}
	for flag, v := range map[string]int{"unhealthy-threshold": o.UnhealthyThreshold, "healthy-threshold": o.HealthyThreshold} {
		if v > 0 {
			args = append(args, "--"+flag+"="+strconv.Itoa(v))
		}
	}
	if err := c.start("service-controller", args...); err != nil {
		return err
	}
	c.lbs = &LoadBalancers{base: "http://" + addr, hc: &http.Client{Timeout: 5 * time.Second}}
	// The controller syncs its caches within a second or two.
	const budget = 30 * time.Second
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, budget, true, func(ctx context.Context) (bool, error) {
		if err := c.Healthy(); err != nil {
			return false, err
		}
		return c.lbs.do(ctx, http.MethodGet, "/healthz", nil, nil) == nil, nil
	})
	if err != nil {
		return fmt.Errorf("service controller not ready (log: %s): %w", c.LogPath("service-controller"), err)
	}
	return nil
}

// LoadBalancers returns the handle on the cluster's cloud load balancers, or
// nil when the cluster was started without Options.LoadBalancers.
func (c *Cluster) LoadBalancers() *LoadBalancers { return c.lbs }

// LoadBalancers drives the local cloud through its control API.
type LoadBalancers struct {
	base string
	hc   *http.Client
}

// LBChange is one change of a load balancer: its host set programmed
// (Kind "hosts", Hosts the whole set) or a host's health turning (Kind
// "healthy" or "unhealthy", Hosts that host).
type LBChange struct {
	At    time.Time `json:"at"`
	Kind  string    `json:"kind"`
	Hosts []string  `json:"hosts"`
}

// LBStatus is one load balancer.
type LBStatus struct {
	Address string            `json:"address"`
	Ports   []int             `json:"ports"`
	Hosts   []string          `json:"hosts"`
	Healthy []string          `json:"healthy"`
	History []LBChange        `json:"history"`
	Served  map[string]int    `json:"served"`
	Refused int               `json:"refused"`
	Errors  map[string]string `json:"errors"`
}

// LBCall is one call the service controller made to the cloud.
type LBCall struct {
	Op      string    `json:"op"`
	Service string    `json:"service"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	Hosts   []string  `json:"hosts"`
	Error   string    `json:"error"`
}

// LBState is the whole cloud: load balancers by Service namespace/name.
type LBState struct {
	OperationTime string              `json:"operationTime"`
	LoadBalancers map[string]LBStatus `json:"loadBalancers"`
	Calls         []LBCall            `json:"calls"`
	InFlight      []LBCall            `json:"inFlight"`
}

// LeftAt returns when host left the load balancer's host set for the first
// time after since (zero if it has not).
func (s LBStatus) LeftAt(host string, since time.Time) time.Time {
	in := false
	for _, ch := range s.History {
		if ch.Kind != "hosts" {
			continue
		}
		has := false
		for _, h := range ch.Hosts {
			has = has || h == host
		}
		if ch.At.After(since) && in && !has {
			return ch.At
		}
		in = has
	}
	return time.Time{}
}

// State reads every load balancer and call.
func (l *LoadBalancers) State(ctx context.Context) (LBState, error) {
	var s LBState
	err := l.do(ctx, http.MethodGet, "/state", nil, &s)
	return s, err
}

// Idle is a wait condition: no cloud call is under way and none ended
// within quiet, so that a drain starting now sees an idle service
// controller and takes the first update after its mark.
func (l *LoadBalancers) Idle(ctx context.Context, quiet time.Duration) (bool, string, error) {
	s, err := l.State(ctx)
	if err != nil {
		return false, "", err
	}
	var last time.Time
	for _, c := range s.Calls {
		if c.Ended.After(last) {
			last = c.Ended
		}
	}
	since := time.Since(last)
	return len(s.InFlight) == 0 && since > quiet, fmt.Sprintf("%d calls under way, last ended %s ago", len(s.InFlight), since.Round(time.Millisecond)), nil
}

// Of returns the load balancer of the Service namespace/name, if any.
func (l *LoadBalancers) Of(ctx context.Context, service string) (LBStatus, bool, error) {
	s, err := l.State(ctx)
	if err != nil {
		return LBStatus{}, false, err
	}
	st, ok := s.LoadBalancers[service]
	return st, ok, nil
}

// SetOperationTime makes every later call take d.
func (l *LoadBalancers) SetOperationTime(ctx context.Context, d time.Duration) error {
	return l.do(ctx, http.MethodPut, "/config", map[string]string{"operationTime": d.String()}, nil)
}

// LBFault makes one Service's calls slow or failing.
type LBFault struct {
	// OperationTime replaces the cloud's for this Service when positive.
	OperationTime time.Duration
	// Fail is how many calls fail next; -1 fails every call.
	Fail    int
	Message string
}

// SetFault applies f to the Service namespace/name.
func (l *LoadBalancers) SetFault(ctx context.Context, service string, f LBFault) error {
	body := map[string]any{"fail": f.Fail, "message": f.Message}
	if f.OperationTime > 0 {
		body["operationTime"] = f.OperationTime.String()
	}
	return l.do(ctx, http.MethodPut, "/services/"+service+"/fault", body, nil)
}

// ClearFault removes the Service's fault.
func (l *LoadBalancers) ClearFault(ctx context.Context, service string) error {
	return l.do(ctx, http.MethodDelete, "/services/"+service+"/fault", nil, nil)
}

// SetStandIn makes connections to the pod IP go to addr: kwok pods serve
// nothing, so a test serves for them.
func (l *LoadBalancers) SetStandIn(ctx context.Context, podIP, addr string) error {
	if addr == "" {
		return l.do(ctx, http.MethodDelete, "/standins/"+url.PathEscape(podIP), nil, nil)
	}
	return l.do(ctx, http.MethodPut, "/standins/"+url.PathEscape(podIP), map[string]string{"addr": addr}, nil)
}

// SetStopped stops (or starts again) a node's VM as the load balancers see
// it: its health checks are refused and its connections fail.
func (l *LoadBalancers) SetStopped(ctx context.Context, node string, stopped bool) error {
	return l.do(ctx, http.MethodPut, "/nodes/"+url.PathEscape(node)+"/stopped", map[string]bool{"stopped": stopped}, nil)
}

func (l *LoadBalancers) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, l.base+path, body)
	if err != nil {
		return err
	}
	resp, err := l.hc.Do(req)
	if err != nil {
		return fmt.Errorf("load-balancer control %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("load-balancer control %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(msg))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}
