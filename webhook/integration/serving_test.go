package integration

import (
	"net/http"
	"strings"
	"testing"

	"termgate.dev/termgate/test/localrun"
)

// The webhook's metrics are served to Prometheus, and to nobody else. The
// user relies on a scrape without a token, or with a token not allowed get
// on /metrics, being refused, and on a token bound to the shipped
// termgate-metrics-reader role getting the metrics; the webhook checks
// them with its own service account, under the shipped RBAC.
func TestWebhookMetricsNeedATokenAllowedToReadThem(t *testing.T) {
	wh.restoreRegistrationsAtEnd(t)
	proc, err := localrun.StartWebhookWithOwnIdentity(ctx(t), env, localrun.WebhookSpec{Binary: termgateBinary(t), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proc.Stop)
	reader, err := localrun.NewMetricsReader(ctx(t), localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: env.Dir})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := localrun.ScraperToken(ctx(t), env.Client, "not-prometheus")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		who, token string
		want       int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"a token the API server does not know", "made-up", http.StatusUnauthorized},
		{"a service account without the reader role", stranger, http.StatusForbidden},
	} {
		code, body, err := localrun.ScrapeWith(ctx(t), proc.MetricsAddr, tc.token)
		if err != nil {
			t.Fatalf("%s: %v", tc.who, err)
		}
		if code != tc.want || strings.Contains(body, "termgate_") {
			t.Errorf("%s: HTTP %d (%.80q), want %d and no metrics", tc.who, code, body, tc.want)
		}
	}
	body, err := reader.Scrape(ctx(t), proc.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"termgate_webhook_followed_nodes", "certwatcher_read_certificate_total", "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(body, want) {
			t.Errorf("the reader's scrape has no %s", want)
		}
	}
}
