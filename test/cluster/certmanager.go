package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// certManagerModule is the module bin/cert-manager is built from; its
// deploy/crds are the CRDs the binary expects.
const certManagerModule = "github.com/cert-manager/cert-manager"

// CertManagerCRDs returns the directory of cert-manager's CRDs in the module
// cache, at the version test/certmanager pins (downloading it if needed).
func CertManagerCRDs(ctx context.Context) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", certManagerModule)
	cmd.Dir = filepath.Join(root, "test", "certmanager")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locate %s in the module cache: %w", certManagerModule, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return "", fmt.Errorf("locate %s: parse go mod download output: %w", certManagerModule, err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return "", fmt.Errorf("locate %s: %s", certManagerModule, mod.Error)
	}
	dir := filepath.Join(mod.Dir, "deploy", "crds")
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("cert-manager CRDs: %w", err)
	}
	return dir, nil
}

// startCertManager installs the CRDs, waits until the API server serves
// them, and starts bin/cert-manager with the admin kubeconfig. There is no
// leader election in that binary: one process per cluster.
func (c *Cluster) startCertManager(ctx context.Context) error {
	crds, err := CertManagerCRDs(ctx)
	if err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "apply", "--server-side", "--field-manager=termgate-cluster", "-f", crds); err != nil {
		return fmt.Errorf("install cert-manager CRDs: %w", err)
	}
	// Established takes well under a second; 30 s means the API server is
	// broken.
	if _, err := c.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=30s", "-f", crds); err != nil {
		return fmt.Errorf("cert-manager CRDs not established: %w", err)
	}
	// cert-manager logs issuance and injection at level 2.
	v := max(c.opts.Verbosity, 2)
	return c.start("cert-manager", "--kubeconfig="+c.Kubeconfig, "--v="+strconv.Itoa(v))
}

// Kubectl runs the cached kubectl against the cluster (`kubectl kustomize`
// too) and returns its standard output; a failure's error holds its
// standard error. A minute bounds it: every use is a single quick request.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	bin, args := c.bins.command("kubectl", append([]string{"--kubeconfig=" + c.Kubeconfig}, args...))
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kubectl %v: %w\n%s", args[1:], err, stderr.Bytes())
	}
	return out, nil
}
