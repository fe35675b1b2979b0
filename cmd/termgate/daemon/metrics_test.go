package daemon

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestServingOptionsAreValidated(t *testing.T) {
	valid := ServingOptions{ProbeAddress: "127.0.0.1:9808", Metrics: MetricsOptions{BindAddress: ":9809", Secure: true}}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	if err := (ServingOptions{ProbeAddress: "0", Metrics: MetricsOptions{BindAddress: "0"}}).Validate(); err != nil {
		t.Fatalf("both servers off refused: %v", err)
	}
	tests := map[string]struct {
		change func(*ServingOptions)
		want   string
	}{
		"A probe address without a port is refused.":      {func(o *ServingOptions) { o.ProbeAddress = "127.0.0.1" }, "--health-probe-bind-address"},
		"A metrics port out of range is refused.":         {func(o *ServingOptions) { o.Metrics.BindAddress = ":70000" }, "--metrics-bind-address"},
		"Probes and metrics on one address are refused.":  {func(o *ServingOptions) { o.Metrics.BindAddress = o.ProbeAddress }, "cannot share"},
		"A certificate for plain HTTP is refused.":        {func(o *ServingOptions) { o.Metrics.Secure, o.Metrics.CertDir = false, "/certs" }, "--metrics-cert-dir"},
		"A metrics address that is not a port is refused": {func(o *ServingOptions) { o.Metrics.BindAddress = ":http-alt" }, "not a number"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := valid
			tc.change(&o)
			if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %s", err, tc.want)
			}
		})
	}
}

// Two components' registries in one process, each served beside the
// libraries' global one: nothing is registered twice.
func TestTheRegistryPolicyLetsSeveralComponentsShareAProcess(t *testing.T) {
	for range 2 {
		reg, err := NewRegistry()
		if err != nil {
			t.Fatal(err)
		}
		families, err := Gatherer(reg).Gather()
		if err != nil {
			t.Fatalf("gather: %v", err)
		}
		var names []string
		for _, f := range families {
			names = append(names, f.GetName())
		}
		if !strings.Contains(strings.Join(names, " "), "go_goroutines") || !strings.Contains(strings.Join(names, " "), "process_resident_memory_bytes") {
			t.Fatalf("no runtime metrics in %v", names)
		}
	}
}

func TestMetricsAuthenticationHasABudgetOfItsOwn(t *testing.T) {
	base := &rest.Config{Host: "https://127.0.0.1:6443", QPS: 100, Burst: 200, UserAgent: "termgate-agent/n1"}
	c := metricsAuthConfig(base)
	if c.RateLimiter == nil || c.QPS != metricsAuthQPS || c.Burst != metricsAuthBurst {
		t.Fatalf("auth config %+v has no limiter of its own", c)
	}
	if base.RateLimiter != nil || base.QPS != 100 {
		t.Fatal("the process's own configuration was changed")
	}
}

// fakeReviews stands in for the API server's TokenReview endpoint: it
// authenticates nobody and counts the calls.
type fakeReviews struct {
	mu     sync.Mutex
	calls  int
	agents []string
}

func (f *fakeReviews) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls++
	f.agents = append(f.agents, r.UserAgent())
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","status":{"authenticated":false}}`)
}

func (f *fakeReviews) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func startMetrics(t *testing.T, o MetricsOptions, cfg *rest.Config) (string, *prometheus.Registry) {
	t.Helper()
	reg, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	o.BindAddress = "127.0.0.1:0"
	m, err := NewMetricsServer(context.Background(), o, cfg, reg, reg, clock.RealClock{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})
	return m.Addr().String(), reg
}

func scrape(t *testing.T, url, token string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // self-signed
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// A scrape without a token is refused with no API call at all, and its
// connection closed; an unknown token costs one review, then is answered
// from the cache.
func TestScrapesWithoutAValidTokenAreRefused(t *testing.T) {
	api := &fakeReviews{}
	apiServer := httptest.NewServer(api)
	defer apiServer.Close()
	addr, reg := startMetrics(t, MetricsOptions{Secure: true}, &rest.Config{Host: apiServer.URL, UserAgent: "termgate-test"})
	url := "https://" + addr + "/metrics"

	resp := scrape(t, url, "")
	if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
		t.Fatalf("no token: %d (closed %v), want 401 and the connection closed", resp.StatusCode, resp.Close)
	}
	if api.count() != 0 {
		t.Fatalf("a scrape without a token made %d API calls", api.count())
	}
	for range 3 {
		if resp := scrape(t, url, "made-up"); resp.StatusCode != http.StatusUnauthorized || !resp.Close {
			t.Fatalf("an unknown token: %d (closed %v), want 401 and the connection closed", resp.StatusCode, resp.Close)
		}
	}
	if api.count() != 1 {
		t.Fatalf("three scrapes with one unknown token made %d token reviews, want 1 (cached)", api.count())
	}
	if !strings.HasSuffix(api.agents[0], " metrics-auth") {
		t.Fatalf("the review came from %q, not the metrics-auth client", api.agents[0])
	}
	if got := testutil.ToFloat64(refusedCounter(t, reg, "401")); got != 4 {
		t.Fatalf("counted %v refusals, want 4", got)
	}
	if resp := scrape(t, "https://"+addr+"/other", ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("another path: %d, want 404", resp.StatusCode)
	}
}

func refusedCounter(t *testing.T, reg *prometheus.Registry, code string) prometheus.Collector {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "termgate_metrics_server_requests_refused_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == code {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("no refusal counted with code %s", code)
	return nil
}

func TestPlainMetricsNeedNoToken(t *testing.T) {
	addr, _ := startMetrics(t, MetricsOptions{Secure: false}, &rest.Config{Host: "http://127.0.0.1:1"})
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("plain scrape: %d %.200s", resp.StatusCode, body)
	}
}

// fakeAPI answers token and access reviews: tokens named "user-<name>" are
// accepted as <name>, and only the user "prometheus" may get /metrics.
type fakeAPI struct {
	mu    sync.Mutex
	calls map[string]int
	seen  []authorizationv1.SubjectAccessReviewSpec
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[r.URL.Path]++
	w.Header().Set("Content-Type", "application/json")
	switch {
	case strings.HasSuffix(r.URL.Path, "/tokenreviews"):
		var tr authenticationv1.TokenReview
		_ = json.NewDecoder(r.Body).Decode(&tr)
		name, ok := strings.CutPrefix(tr.Spec.Token, "user-")
		tr.Status = authenticationv1.TokenReviewStatus{Authenticated: ok, User: authenticationv1.UserInfo{
			Username: name, UID: "uid-" + name, Groups: []string{"system:authenticated"},
			Extra: map[string]authenticationv1.ExtraValue{"authentication.kubernetes.io/pod-name": {"p"}},
		}}
		_ = json.NewEncoder(w).Encode(&tr)
	case strings.HasSuffix(r.URL.Path, "/subjectaccessreviews"):
		var sar authorizationv1.SubjectAccessReview
		_ = json.NewDecoder(r.Body).Decode(&sar)
		f.seen = append(f.seen, sar.Spec)
		sar.Status.Allowed = sar.Spec.User == "prometheus" && sar.Spec.NonResourceAttributes != nil &&
			sar.Spec.NonResourceAttributes.Path == "/metrics" && sar.Spec.NonResourceAttributes.Verb == "get"
		_ = json.NewEncoder(w).Encode(&sar)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeAPI) count(suffix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for p, c := range f.calls {
		if strings.HasSuffix(p, suffix) {
			n += c
		}
	}
	return n
}

// A user allowed get on /metrics gets the metrics; another is refused
// with 403. Both decisions are cached: repeated scrapes make no new calls.
func TestOnlyUsersAllowedToGetMetricsAreServed(t *testing.T) {
	api := &fakeAPI{calls: map[string]int{}}
	apiServer := httptest.NewServer(api)
	defer apiServer.Close()
	// JSON, which the fake reads (the clientset sends protobuf by default).
	addr, _ := startMetrics(t, MetricsOptions{Secure: true}, &rest.Config{Host: apiServer.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}})
	url := "https://" + addr + "/metrics"
	for range 3 {
		if resp := scrape(t, url, "user-prometheus"); resp.StatusCode != http.StatusOK {
			t.Fatalf("the allowed user: %d, want 200", resp.StatusCode)
		}
		if resp := scrape(t, url, "user-tenant"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a user without the grant: %d, want 403", resp.StatusCode)
		}
	}
	if tr, sar := api.count("/tokenreviews"), api.count("/subjectaccessreviews"); tr != 2 || sar != 2 {
		t.Fatalf("six scrapes by two users made %d token and %d access reviews, want 2 and 2 (cached)", tr, sar)
	}
	got := api.seen[0]
	if got.UID == "" || len(got.Groups) == 0 || len(got.Extra) == 0 {
		t.Fatalf("the access review did not carry the whole user: %+v", got)
	}
}

// A flood of made-up tokens fills the caches; they stay bounded.
func TestTheReviewCachesStayBounded(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Now())
	m := map[int]time.Time{}
	for i := range 5 * maxCached {
		prune(m, clk.Now(), func(e time.Time) time.Time { return e })
		m[i] = clk.Now().Add(time.Minute)
	}
	if len(m) > maxCached {
		t.Fatalf("cache of %d entries, bound %d", len(m), maxCached)
	}
}
