package localrun

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/manifest"
	"termgate.dev/termgate/test/proc"
)

// The notifier's objects as the shipped component names them.
const (
	NotifierNamespace      = "termgate"
	NotifierServiceAccount = "termgate-notifier"
	NotifierSinksSecret    = "termgate-notifier-sinks"
	NotifierRecord         = "termgate-notifier-record"
	NotifierLease          = "termgate-notifier"
)

// NotifierComponent is the repository's manifests/components/notifier.
func NotifierComponent() (string, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "manifests", "components", "notifier"), nil
}

// NewNotifierIdentity applies the shipped component's RBAC (and the
// namespace) as they are and writes a kubeconfig with a one-hour token of
// the notifier's service account: a notifier run with it is refused
// whatever a replica in the cluster would be refused.
func NewNotifierIdentity(ctx context.Context, s IdentitySpec) (kubeconfig string, err error) {
	base, err := manifestsOr(s.Manifests)
	if err != nil {
		return "", err
	}
	component, err := NotifierComponent()
	if err != nil {
		return "", err
	}
	for _, f := range []string{filepath.Join(base, "namespace.yaml"), filepath.Join(component, "notifier-rbac.yaml")} {
		if err := manifest.ApplyFile(ctx, s.AdminConfig, f); err != nil {
			return "", err
		}
	}
	tr, err := s.Admin.CoreV1().ServiceAccounts(NotifierNamespace).CreateToken(ctx, NotifierServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request a token of %s: %w", NotifierServiceAccount, err)
	}
	cfg := rest.AnonymousClientConfig(s.AdminConfig)
	cfg.BearerToken = tr.Status.Token
	path := filepath.Join(s.Dir, "notifier.kubeconfig")
	if err := writeTokenKubeconfig(path, cfg); err != nil {
		return "", err
	}
	return path, nil
}

// PutSinksSecret creates or replaces the sinks Secret, as a user does with
// kubectl create secret.
func PutSinksSecret(ctx context.Context, admin kubernetes.Interface, data map[string]string) error {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: NotifierSinksSecret, Namespace: NotifierNamespace}, StringData: data}
	secrets := admin.CoreV1().Secrets(NotifierNamespace)
	_, err := secrets.Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *corev1.Secret
		if cur, err = secrets.Get(ctx, sec.Name, metav1.GetOptions{}); err == nil {
			cur.Data, cur.StringData = nil, data
			_, err = secrets.Update(ctx, cur, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("sinks Secret: %w", err)
	}
	return nil
}

// NotifierSpec says how to start a notifier.
type NotifierSpec struct {
	Binary     string
	Dir        string // log and configuration directory
	Kubeconfig string
	// Name names the replica (POD_NAME, its Lease identity) and its log;
	// LogName, when set, names the log instead (a restarted container
	// keeps its pod's name).
	Name, LogName string
	// Config is the sinks configuration file's content.
	Config string
	Flags  []string
	// NoWait returns once the process runs.
	NoWait bool
}

// Notifier is one running `termgate notifier` process.
type Notifier struct {
	Name        string
	HealthAddr  string
	MetricsAddr string
	proc        *proc.Process
}

// StartNotifier writes the configuration, starts the notifier and waits
// until it reports ready.
func StartNotifier(ctx context.Context, s NotifierSpec) (*Notifier, error) {
	if s.Name == "" {
		s.Name = "notifier"
	}
	if s.LogName == "" {
		s.LogName = s.Name
	}
	config := filepath.Join(s.Dir, s.LogName+"-config.yaml")
	if err := os.WriteFile(config, []byte(s.Config), 0o600); err != nil {
		return nil, fmt.Errorf("notifier config: %w", err)
	}
	return proc.RetryOnTakenPort(func() (*Notifier, error) { return startNotifierOnce(ctx, s, config) })
}

func startNotifierOnce(ctx context.Context, s NotifierSpec, config string) (*Notifier, error) {
	ports, err := proc.FreePorts(2)
	if err != nil {
		return nil, err
	}
	n := &Notifier{Name: s.Name, HealthAddr: "127.0.0.1:" + strconv.Itoa(ports[0]), MetricsAddr: "127.0.0.1:" + strconv.Itoa(ports[1])}
	args := append([]string{"notifier",
		"--kubeconfig=" + s.Kubeconfig,
		"--config=" + config,
		"--health-probe-bind-address=" + n.HealthAddr,
		"--metrics-bind-address=" + n.MetricsAddr,
		"--log-format=text",
	}, s.Flags...)
	env := []string{"POD_NAMESPACE=" + NotifierNamespace, "POD_NAME=" + s.Name}
	if n.proc, err = proc.Start(s.Dir, s.LogName, env, s.Binary, args...); err != nil {
		return nil, err
	}
	if s.NoWait {
		return n, nil
	}
	if err := n.waitReady(ctx); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

// waitReady polls /readyz. Ten seconds covers reading the Secret many
// times over.
func (n *Notifier) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: time.Second}
	last := ""
	for {
		if gone, err := n.proc.Exited(); gone {
			return err
		}
		resp, err := hc.Get("http://" + n.HealthAddr + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = string(bytes.TrimSpace(b))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("notifier %s not ready (%s; log: %s): %w", n.Name, last, n.proc.LogPath(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Metrics returns the notifier's /metrics text.
func (n *Notifier) Metrics() (string, error) {
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + n.MetricsAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Stop ends the notifier gracefully (SIGTERM; SIGKILL after 20s, its
// Deployment's grace period).
func (n *Notifier) Stop() { n.proc.Stop(20 * time.Second) }

// Kill ends it with SIGKILL, as an OOM kill or a node crash would.
func (n *Notifier) Kill() { n.proc.Kill() }

// Terminate sends SIGTERM and returns at once.
func (n *Notifier) Terminate() error { return n.proc.Signal(syscall.SIGTERM) }

// Done is closed when the process has exited.
func (n *Notifier) Done() <-chan struct{} { return n.proc.Done() }

// Exited returns an error if the process has ended.
func (n *Notifier) Exited() error {
	if gone, err := n.proc.Exited(); gone {
		return err
	}
	return nil
}

// LogPath is the notifier's log file.
func (n *Notifier) LogPath() string { return n.proc.LogPath() }

// Log returns the notifier's output so far.
func (n *Notifier) Log() string {
	b, _ := os.ReadFile(n.proc.LogPath())
	return string(b)
}
