// Package localrun runs termgate's own binary on the local cluster the way
// the manifests run it on a real one: one agent process per node, each with
// its own NODE_NAME and GCE_METADATA_HOST, and the same flags.
package localrun

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/proc"
)

// Build compiles cmd/termgate into dir and returns the binary's path.
func Build(ctx context.Context, dir string) (string, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "termgate")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/termgate")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build termgate: %w\n%s", err, b)
	}
	return out, nil
}

// Agent is one running `termgate agent` process.
type Agent struct {
	Node string
	// Addr is the host:port of its /healthz and /readyz.
	Addr string
	// MetricsAddr serves /metrics over HTTPS to authorized scrapers
	// (MetricsReader).
	MetricsAddr string
	proc        *proc.Process
}

// AgentSpec says how to start an agent.
type AgentSpec struct {
	Binary       string
	Dir          string // log directory
	Kubeconfig   string
	Node         string
	MetadataHost string   // the fake GCE metadata server of this node; other clouds' endpoints go in Env or Flags
	Flags        []string // extra flags, e.g. --preemption-notice=10s
	// Env is added to the process's environment, e.g. MEMORY_LIMIT as the
	// DaemonSet sets it from the container's limit.
	Env []string
	// Pod is the agent's own pod (POD_NAME and POD_NAMESPACE), whose grace
	// period bounds a drain after SIGTERM; see NewAgentIdentity.
	Pod *corev1.Pod
	// Unshipped starts the agent with the binary's defaults alone, without
	// the DaemonSet's arguments and environment: only for a test about the
	// defaults themselves.
	Unshipped bool
	// NoWait returns once the process runs, without waiting for /readyz
	// (for agents that cannot become ready, such as a metadata server
	// that fails).
	NoWait bool
}

// StartAgent starts an agent as the DaemonSet runs it (its arguments, then
// s.Flags, which win; its environment, then s.Env) and waits until it reports
// ready, or until the agent's own start-up budget passes.
func StartAgent(ctx context.Context, s AgentSpec) (*Agent, error) {
	var shipped Container
	if !s.Unshipped {
		var err error
		if shipped, err = ShippedAgent(); err != nil {
			return nil, err
		}
	}
	return proc.RetryOnTakenPort(func() (*Agent, error) { return startAgentOnce(ctx, s, shipped) })
}

func startAgentOnce(ctx context.Context, s AgentSpec, shipped Container) (*Agent, error) {
	ports, err := proc.FreePorts(2)
	if err != nil {
		return nil, err
	}
	addr, metricsAddr := "127.0.0.1:"+strconv.Itoa(ports[0]), "127.0.0.1:"+strconv.Itoa(ports[1])
	args := append(append([]string{"agent"}, shipped.Args...), "--kubeconfig="+s.Kubeconfig,
		"--health-probe-bind-address="+addr, "--metrics-bind-address="+metricsAddr, "--log-format=text")
	args = append(args, s.Flags...)
	env := append(shipped.Environ(), "NODE_NAME="+s.Node)
	if s.MetadataHost != "" {
		env = append(env, "GCE_METADATA_HOST="+s.MetadataHost)
	}
	if s.Pod != nil {
		env = append(env, "POD_NAME="+s.Pod.Name, "POD_NAMESPACE="+s.Pod.Namespace)
	}
	env = append(env, s.Env...)
	p, err := proc.Start(s.Dir, "agent-"+s.Node, env, s.Binary, args...)
	if err != nil {
		return nil, err
	}
	a := &Agent{Node: s.Node, Addr: addr, MetricsAddr: metricsAddr, proc: p}
	if s.NoWait {
		return a, nil
	}
	if err := a.waitReady(ctx); err != nil {
		a.Stop()
		return nil, err
	}
	return a, nil
}

// waitReady polls /readyz. Ten seconds covers the agent's cache sync and
// first metadata reads many times over; more means it is broken.
func (a *Agent) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: time.Second}
	for {
		if gone, err := a.proc.Exited(); gone {
			return err
		}
		if resp, err := hc.Get("http://" + a.Addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent on %s not ready (log: %s): %w", a.Node, a.proc.LogPath(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop ends the agent gracefully.
func (a *Agent) Stop() { a.proc.Stop(5 * time.Second) }

// Terminate sends SIGTERM, as the kubelet does when the agent's pod is
// deleted or the node shuts down, and returns at once.
func (a *Agent) Terminate() error { return a.proc.Signal(syscall.SIGTERM) }

// Done is closed when the agent process has exited.
func (a *Agent) Done() <-chan struct{} { return a.proc.Done() }

// Kill ends the agent with SIGKILL, as an OOM kill or node crash would.
func (a *Agent) Kill() { a.proc.Kill() }

// LogPath is the agent's log file.
func (a *Agent) LogPath() string { return a.proc.LogPath() }

// Log returns the agent's output so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.proc.LogPath())
	return string(b)
}

// PID is the agent's process ID.
func (a *Agent) PID() int { return a.proc.PID() }
