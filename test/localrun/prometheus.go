package localrun

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/proc"
)

// ScrapeJob is one job of the Prometheus the tests run: HTTPS targets
// scraped with the reader's token, as the chart's monitors scrape them.
type ScrapeJob struct {
	// Name is the job label, e.g. termgate/termgate-agent as the chart's
	// PodMonitor names its job.
	Name    string
	Targets []string // host:port
	// Path is the metrics path; empty: /metrics.
	Path string
}

// PrometheusSpec says how to start Prometheus.
type PrometheusSpec struct {
	Dir       string // config, data and log live under Dir/prometheus
	Token     string // the scraper's bearer token (MetricsReader.Token)
	Jobs      []ScrapeJob
	RuleFiles []string
	// Interval is the scrape and rule-evaluation interval; zero: 1s.
	Interval time.Duration
}

// Prometheus is a running Prometheus server (bin/prometheus, built from
// its Go module by the Makefile) on loopback.
type Prometheus struct {
	Addr     string
	Interval time.Duration
	API      promv1.API
	proc     *proc.Process
}

// StartPrometheus writes the configuration and starts Prometheus; it
// returns once Prometheus reports ready.
func StartPrometheus(ctx context.Context, s PrometheusSpec) (*Prometheus, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "bin", "prometheus")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%s missing: run `make binaries` (make test does): %w", bin, err)
	}
	if s.Interval == 0 {
		s.Interval = time.Second
	}
	dir := filepath.Join(s.Dir, "prometheus")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg, err := prometheusConfig(dir, s)
	if err != nil {
		return nil, err
	}
	return proc.RetryOnTakenPort(func() (*Prometheus, error) {
		ports, err := proc.FreePorts(1)
		if err != nil {
			return nil, err
		}
		addr := "127.0.0.1:" + strconv.Itoa(ports[0])
		p, err := proc.Start(s.Dir, "prometheus", nil, bin,
			"--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr, "--storage.tsdb.retention.time=1h", "--log.level=warn")
		if err != nil {
			return nil, err
		}
		client, err := promapi.NewClient(promapi.Config{Address: "http://" + addr})
		if err != nil {
			p.Kill()
			return nil, err
		}
		prom := &Prometheus{Addr: addr, Interval: s.Interval, API: promv1.NewAPI(client), proc: p}
		if err := prom.waitReady(ctx); err != nil {
			p.Stop(5 * time.Second)
			return nil, err
		}
		return prom, nil
	})
}

// prometheusConfig writes prometheus.yml and the token file into dir.
func prometheusConfig(dir string, s PrometheusSpec) (string, error) {
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(s.Token), 0o600); err != nil {
		return "", err
	}
	interval := s.Interval.String()
	var jobs []map[string]any
	for _, j := range s.Jobs {
		path := j.Path
		if path == "" {
			path = "/metrics"
		}
		jobs = append(jobs, map[string]any{
			"job_name": j.Name, "scheme": "https", "metrics_path": path,
			"scrape_interval": interval, "scrape_timeout": interval,
			"authorization":  map[string]any{"type": "Bearer", "credentials_file": tokenFile},
			"tls_config":     map[string]any{"insecure_skip_verify": true},
			"static_configs": []map[string]any{{"targets": j.Targets}},
		})
	}
	b, err := yaml.Marshal(map[string]any{
		"global":         map[string]any{"scrape_interval": interval, "evaluation_interval": interval},
		"rule_files":     s.RuleFiles,
		"scrape_configs": jobs,
	})
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "prometheus.yml")
	return path, os.WriteFile(path, b, 0o644)
}

// waitReady polls /-/ready; Prometheus answers 503 while it replays its
// (empty) storage and loads the rules. A process that exits fails at once.
func (p *Prometheus) waitReady(ctx context.Context) error {
	return kit.Poll(ctx, 60*time.Second, func(ctx context.Context) (bool, string, error) {
		if exited, err := p.proc.Exited(); exited {
			return false, "", fmt.Errorf("prometheus exited: %w", err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+"/-/ready", nil)
		if err != nil {
			return false, "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error(), nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
}

// Stop stops Prometheus and waits for it.
func (p *Prometheus) Stop() { p.proc.Stop(10 * time.Second) }

// MetricNames parses expr with Prometheus' own parser (/api/v1/parse_query)
// and returns the metric names its selectors name.
func (p *Prometheus) MetricNames(ctx context.Context, expr string) ([]string, error) {
	u := "http://" + p.Addr + "/api/v1/parse_query?query=" + url.QueryEscape(expr)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", expr, err)
	}
	defer resp.Body.Close()
	var out struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("parse %q: decode the answer: %w", expr, err)
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("parse %q: %s", expr, out.Error)
	}
	var tree any
	if err := json.Unmarshal(out.Data, &tree); err != nil {
		return nil, err
	}
	var names []string
	collectSelectorNames(tree, &names)
	return names, nil
}

// collectSelectorNames walks parse_query's tree for vector and range
// selectors (parse_query folds a range's vector selector into its node).
func collectSelectorNames(n any, names *[]string) {
	switch n := n.(type) {
	case map[string]any:
		if t := n["type"]; t == "vectorSelector" || t == "matrixSelector" {
			if name, _ := n["name"].(string); name != "" {
				*names = append(*names, name)
			}
		}
		for _, v := range n {
			collectSelectorNames(v, names)
		}
	case []any:
		for _, v := range n {
			collectSelectorNames(v, names)
		}
	}
}

// HasSeries reports whether Prometheus holds any series of metric name
// (for a histogram, its _count).
func (p *Prometheus) HasSeries(ctx context.Context, name string) (bool, error) {
	match := fmt.Sprintf(`{__name__=~%q}`, regexp.QuoteMeta(name)+"(_count)?")
	sets, _, _, err := p.API.Series(ctx, []string{match}, time.Now().Add(-time.Hour), time.Now())
	if err != nil {
		return false, fmt.Errorf("series of %s: %w", name, err)
	}
	return len(sets) > 0, nil
}
