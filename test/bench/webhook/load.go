package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"termgate.dev/termgate/certs"
	"termgate.dev/termgate/certs/selfmanaged"
)

// result is what bin/bench/webhook.json holds.
type result struct {
	BindRPS      float64 `json:"bind_rps"`
	BindP50Ms    float64 `json:"bind_p50_ms"`
	BindP99Ms    float64 `json:"bind_p99_ms"`
	BindMaxMs    float64 `json:"bind_max_ms"`
	Requests     int     `json:"requests"`
	Errors       int     `json:"errors"`
	Denied       int     `json:"denied"`
	Clients      int     `json:"clients"`
	Nodes        int     `json:"nodes"`
	DurationSec  float64 `json:"duration_s"`
	WebhookRSSMB float64 `json:"webhook_rss_mb"`
	// The same load on a bare handler of the same reviews, in the same run
	// (serveFloor): the absolute rate moves threefold between machines of
	// one kind, the ratio much less.
	FloorRPS            float64 `json:"floor_rps"`
	BindRPSToFloorRatio float64 `json:"bind_rps_to_floor_ratio"`
	// Set with -cluster: the API server's Binding round trip, median,
	// without termgate's webhook and with `termgate webhook` as deployed,
	// onto an on-demand node and onto a Spot node; the ratios are to the
	// round trip without.
	APIServerBindRatio       float64 `json:"apiserver_bind_latency_ratio,omitempty"`
	APIServerBindRatioSpot   float64 `json:"apiserver_bind_latency_ratio_spot,omitempty"`
	APIServerBindP50MsNoHook float64 `json:"apiserver_bind_p50_ms_without_webhook,omitempty"`
	APIServerBindP50MsWith   float64 `json:"apiserver_bind_p50_ms_with_webhook,omitempty"`
	APIServerBindP50MsSpot   float64 `json:"apiserver_bind_p50_ms_with_webhook_spot,omitempty"`
}

func drive(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "webhookbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pems, err := selfmanaged.Issue([]string{"127.0.0.1"}, time.Now(), 24*time.Hour)
	if err != nil {
		return err
	}
	if err := certs.WriteFiles(dir, pems.Cert, pems.Key); err != nil {
		return err
	}
	c, err := startChild(ctx, o, "server", dir)
	if err != nil {
		return err
	}
	defer c.stop()

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pems.CA)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: o.clients,
		MaxConnsPerHost:     o.clients,
		ForceAttemptHTTP2:   false,
	}}
	defer client.CloseIdleConnections()
	bodies := make([][]byte, o.nodes)
	for i := range bodies {
		bodies[i] = bindingReview(i, nodeName(i))
	}
	url := "https://" + c.addr + "/validate-binding"
	load(ctx, client, url, bodies, o.clients, o.warmup)
	began := time.Now()
	lat, errs, denied := load(ctx, client, url, bodies, o.clients, o.duration)
	elapsed := time.Since(began)
	rss, err := rssMB(c.cmd.Process.Pid)
	if err != nil {
		return fmt.Errorf("read webhook memory: %w", err)
	}
	c.stop()
	r := summarize(lat, errs, denied, elapsed, rss, o)
	floor, err := floorRPS(ctx, o, dir, client, bodies)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	r.FloorRPS = floor
	if floor > 0 {
		r.BindRPSToFloorRatio = r.BindRPS / floor
	}
	if o.cluster {
		bl, err := measureAPIServer(ctx)
		if err != nil {
			return fmt.Errorf("API server bind latency: %w", err)
		}
		r.APIServerBindP50MsNoHook, r.APIServerBindP50MsWith, r.APIServerBindP50MsSpot = bl.WithoutP50Ms, bl.OnDemandP50Ms, bl.SpotP50Ms
		if bl.WithoutP50Ms > 0 {
			r.APIServerBindRatio, r.APIServerBindRatioSpot = bl.OnDemandP50Ms/bl.WithoutP50Ms, bl.SpotP50Ms/bl.WithoutP50Ms
		}
	}
	printTable(os.Stdout, r)
	if o.out == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(r, "", "  ")
	return os.WriteFile(o.out, append(data, '\n'), 0o644)
}

// floorRPS drives the floor child with the same clients, reviews and
// times as the webhook.
func floorRPS(ctx context.Context, o options, certDir string, client *http.Client, bodies [][]byte) (float64, error) {
	f, err := startChild(ctx, o, "floor", certDir)
	if err != nil {
		return 0, err
	}
	defer f.stop()
	client.CloseIdleConnections()
	url := "https://" + f.addr + "/validate-binding"
	load(ctx, client, url, bodies, o.clients, o.warmup)
	began := time.Now()
	lat, errs, _ := load(ctx, client, url, bodies, o.clients, o.duration)
	if errs > 0 {
		return 0, fmt.Errorf("%d of %d floor calls failed", errs, len(lat))
	}
	return float64(len(lat)) / time.Since(began).Seconds(), nil
}

// load runs clients callers for d and returns every latency, errors and
// denials. Each caller cycles through the nodes from its own offset.
func load(ctx context.Context, client *http.Client, url string, bodies [][]byte, clients int, d time.Duration) ([]time.Duration, int, int) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var all []time.Duration
	errs, denied := 0, 0
	var wg sync.WaitGroup
	for w := range clients {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<16)
			e, dn := 0, 0
			buf := make([]byte, 0, 512)
			for i := w * 37; ctx.Err() == nil; i++ {
				body := bodies[i%len(bodies)]
				start := time.Now()
				ok, deny := call(client, url, body, &buf)
				lat = append(lat, time.Since(start))
				if !ok {
					e++
				} else if deny {
					dn++
				}
			}
			mu.Lock()
			all = append(all, lat...)
			errs, denied = errs+e, denied+dn
			mu.Unlock()
		})
	}
	wg.Wait()
	return all, errs, denied
}

var allowedTrue = []byte(`"allowed":true`)

func call(client *http.Client, url string, body []byte, buf *[]byte) (ok, denied bool) {
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return false, false
	}
	defer resp.Body.Close()
	b := bytes.NewBuffer((*buf)[:0])
	if _, err := io.Copy(b, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		return false, false
	}
	*buf = b.Bytes()
	return true, !bytes.Contains(*buf, allowedTrue)
}

func summarize(lat []time.Duration, errs, denied int, elapsed time.Duration, rss float64, o options) result {
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	return result{
		BindRPS: float64(len(lat)) / elapsed.Seconds(), BindP50Ms: pct(0.50), BindP99Ms: pct(0.99), BindMaxMs: pct(1),
		Requests: len(lat), Errors: errs, Denied: denied, Clients: o.clients, Nodes: o.nodes,
		DurationSec: elapsed.Seconds(), WebhookRSSMB: rss,
	}
}

func printTable(w io.Writer, r result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tvalue")
	fmt.Fprintf(tw, "requests\t%d (%d errors, %d denied)\n", r.Requests, r.Errors, r.Denied)
	fmt.Fprintf(tw, "clients\t%d\n", r.Clients)
	fmt.Fprintf(tw, "nodes in cache\t%d\n", r.Nodes)
	fmt.Fprintf(tw, "bind rps\t%.0f\n", r.BindRPS)
	fmt.Fprintf(tw, "bind p50\t%.3f ms\n", r.BindP50Ms)
	fmt.Fprintf(tw, "bind p99\t%.3f ms\n", r.BindP99Ms)
	fmt.Fprintf(tw, "bind max\t%.3f ms\n", r.BindMaxMs)
	fmt.Fprintf(tw, "webhook rss\t%.1f MB\n", r.WebhookRSSMB)
	fmt.Fprintf(tw, "floor rps (bare handler, same reviews)\t%.0f\n", r.FloorRPS)
	fmt.Fprintf(tw, "bind rps to floor ratio\t%.2f\n", r.BindRPSToFloorRatio)
	if r.APIServerBindRatio > 0 {
		fmt.Fprintf(tw, "apiserver bind p50 without webhook\t%.3f ms\n", r.APIServerBindP50MsNoHook)
		fmt.Fprintf(tw, "apiserver bind p50 with termgate webhook, on-demand node\t%.3f ms\n", r.APIServerBindP50MsWith)
		fmt.Fprintf(tw, "apiserver bind p50 with termgate webhook, Spot node (node re-read)\t%.3f ms\n", r.APIServerBindP50MsSpot)
		fmt.Fprintf(tw, "apiserver bind latency ratio, on-demand (target <= 1.3)\t%.2f\n", r.APIServerBindRatio)
		fmt.Fprintf(tw, "apiserver bind latency ratio, Spot\t%.2f\n", r.APIServerBindRatioSpot)
	}
	tw.Flush()
}

// bindingReview is the review the API server sends for a scheduler bind.
func bindingReview(i int, node string) []byte {
	pod := fmt.Sprintf("web-%d", i)
	return []byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"` + fmt.Sprintf("0f9a1c7e-5b7e-4a55-9a55-%012d", i) +
		`","kind":{"group":"","version":"v1","kind":"Binding"},"resource":{"group":"","version":"v1","resource":"pods"},"subResource":"binding","requestKind":{"group":"","version":"v1","kind":"Binding"},"requestResource":{"group":"","version":"v1","resource":"pods"},"requestSubResource":"binding","name":"` + pod +
		`","namespace":"default","operation":"CREATE","userInfo":{"username":"system:kube-scheduler","groups":["system:authenticated"]},"object":{"kind":"Binding","apiVersion":"v1","metadata":{"name":"` + pod +
		`","namespace":"default","uid":"9b0e2c0a-3f1e-4a8e-8f51-7d2f0e6c4b11","creationTimestamp":null},"target":{"kind":"Node","name":"` + node +
		`"}},"oldObject":null,"dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}`)
}
