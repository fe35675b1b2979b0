package agent

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the agent's probes and metrics:
//
//	/healthz  the notice source is alive (the cloud keeps answering)
//	/readyz   caches synced, metadata read, last reconcile fine, API reachable
//	/metrics  Prometheus
func (a *Agent) Handler(gatherer prometheus.Gatherer) http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.Get("/healthz", probe(func(context.Context) error { return a.alive() }))
	r.Get("/readyz", probe(func(ctx context.Context) error {
		if err := a.Ready(); err != nil {
			return err
		}
		return a.apiReachable(ctx)
	}))
	r.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return r
}

func probe(check func(context.Context) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := check(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// apiReachable asks the API server's own readiness endpoint: cheap, and it
// proves both the network path and the agent's credentials.
func (a *Agent) apiReachable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
		return fmt.Errorf("API server not reachable: %w", err)
	}
	return nil
}
