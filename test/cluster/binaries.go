package cluster

import (
	"fmt"
	"os"
	"path/filepath"
)

// binaries locates the cached control-plane binaries.
type binaries struct {
	controlplane, kwok, kwokStages string
	// certManager is set only when the cluster runs cert-manager, and
	// serviceController only when it runs the cloud's load balancers.
	certManager, serviceController string
}

// command returns how to run a component: the control-plane components are
// subcommands of the one controlplane binary.
func (b binaries) command(name string, args []string) (string, []string) {
	switch name {
	case "kwok":
		return b.kwok, args
	case "cert-manager":
		return b.certManager, args
	case "service-controller":
		return b.serviceController, args
	}
	return b.controlplane, append([]string{name}, args...)
}

func findBinaries(dir string, certManager, loadBalancers bool) (binaries, error) {
	if dir == "" {
		dir = os.Getenv("TERMGATE_BIN")
	}
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return binaries{}, err
		}
		dir = filepath.Join(root, "bin")
	}
	b := binaries{
		controlplane: filepath.Join(dir, "controlplane"),
		kwok:         filepath.Join(dir, "kwok"),
		kwokStages:   filepath.Join(dir, "kwok-stages"),
	}
	need := []string{b.controlplane, b.kwok, b.kwokStages}
	if certManager {
		b.certManager = filepath.Join(dir, "cert-manager")
		need = append(need, b.certManager)
	}
	if loadBalancers {
		b.serviceController = filepath.Join(dir, "service-controller")
		need = append(need, b.serviceController)
	}
	for _, f := range need {
		if _, err := os.Stat(f); err != nil {
			return binaries{}, fmt.Errorf("local cluster: %s missing (run `make binaries` first): %w", f, err)
		}
	}
	return b, nil
}

// RepoRoot walks up from the working directory to the termgate module root.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "test", "controlplane", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find repository root: no test/controlplane/go.mod above the working directory")
		}
		dir = parent
	}
}
