package localrun

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/manifest"
)

// The scraper's identity: a service account in a monitoring namespace of
// its own.
const (
	MonitoringNamespace   = "termgate-test-monitoring"
	ScraperServiceAccount = "prometheus"
	metricsReaderRole     = "termgate-metrics-reader"
)

// MetricsReader scrapes termgate's metrics as a user's Prometheus does:
// over HTTPS, not verifying the self-signed certificate, with the token of
// a service account bound to the shipped termgate-metrics-reader role.
type MetricsReader struct {
	// Token is the scraper's bearer token.
	Token string
}

// NewMetricsReader installs the shipped reader role (metrics-reader-rbac.yaml),
// binds it to a scraper account and returns a reader with its token.
func NewMetricsReader(ctx context.Context, s IdentitySpec) (*MetricsReader, error) {
	manifests, err := manifestsOr(s.Manifests)
	if err != nil {
		return nil, err
	}
	if err := manifest.ApplyFile(ctx, s.AdminConfig, filepath.Join(manifests, "metrics-reader-rbac.yaml")); err != nil {
		return nil, err
	}
	token, err := ScraperToken(ctx, s.Admin, ScraperServiceAccount)
	if err != nil {
		return nil, err
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "termgate-test-metrics-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: metricsReaderRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: ScraperServiceAccount, Namespace: MonitoringNamespace}},
	}
	if _, err := s.Admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("bind %s: %w", metricsReaderRole, err)
	}
	return &MetricsReader{Token: token}, nil
}

// ScraperToken returns a one-hour token of service account name in the
// monitoring namespace, creating both if missing; nothing is bound to it
// here (NewMetricsReader binds the reader role to ScraperServiceAccount).
func ScraperToken(ctx context.Context, admin kubernetes.Interface, name string) (string, error) {
	if err := kit.EnsureNamespace(ctx, admin, MonitoringNamespace); err != nil {
		return "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: MonitoringNamespace}}
	if _, err := admin.CoreV1().ServiceAccounts(MonitoringNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create service account %s: %w", name, err)
	}
	tr, err := admin.CoreV1().ServiceAccounts(MonitoringNamespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request a token of %s: %w", name, err)
	}
	return tr.Status.Token, nil
}

// Scrape reads https://addr/metrics with the reader's token.
func (r *MetricsReader) Scrape(ctx context.Context, addr string) (string, error) {
	code, body, err := ScrapeWith(ctx, addr, r.Token)
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("scrape %s: HTTP %d: %.200s", addr, code, body)
	}
	return body, nil
}

// ScrapeWith reads https://addr/metrics with token (none when empty) and
// returns the status and body, whatever the status.
func ScrapeWith(ctx context.Context, addr, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the servers' certificate is self-signed, as by default
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("scrape %s: %w", addr, err)
	}
	return resp.StatusCode, string(body), nil
}
