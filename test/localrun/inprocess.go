package localrun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"termgate.dev/termgate/cmd/termgate/app"
	"termgate.dev/termgate/cmd/termgate/daemon"
)

// InProcessAgentSpec says which agent to run inside the test's process.
type InProcessAgentSpec struct {
	// Identity is the node's agent identity (AgentIdentityOn): the token
	// bound to its stand-in pod, the pod's name and namespace.
	Identity *AgentIdentity
	// Node is the agent's node.
	Node string
	// MetadataHost is the node's fake metadata server (host:port).
	MetadataHost string
	// Dir receives the agent's log, agent-<node>.log.
	Dir string
	// Flags follow the shipped DaemonSet's arguments.
	Flags []string
}

// InProcessAgent is an agent built by app.NewAgent, the constructor the
// binary's own start-up uses, from the shipped DaemonSet's arguments, and
// run in this process: for tests and benchmarks with more agents than two
// cores run processes. Each has what a process has of its own: its
// pod-bound token, its own connection to the API server (a dialer of its
// own, so client-go does not share one transport among them), its own
// connection to its node's metadata server, and its own metrics registry.
// What it does not have of its own is a memory limit and a CPU share.
type InProcessAgent struct {
	Node  string
	agent *app.Agent
	stop  context.CancelFunc
	done  chan error
	log   *os.File
}

// StartInProcessAgent builds and starts the agent and waits until it is
// ready, within the budget the process's /readyz gets (StartAgent).
func StartInProcessAgent(ctx context.Context, s InProcessAgentSpec) (*InProcessAgent, error) {
	shipped, err := ShippedAgent()
	if err != nil {
		return nil, err
	}
	args := append([]string{}, shipped.Args...)
	args = append(args, "--node-name="+s.Node, "--pod-name="+s.Identity.Pod.Name, "--pod-namespace="+s.Identity.Pod.Namespace)
	args = append(args, s.Flags...)

	cfg := rest.CopyConfig(s.Identity.Config)
	cfg.Dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	f, err := os.Create(filepath.Join(s.Dir, "agent-"+s.Node+".log"))
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", s.Node, err)
	}
	logger := daemon.LogOptions{Format: "text"}.Logger(f)
	runCtx, stop := context.WithCancel(log.IntoContext(context.WithoutCancel(ctx), logger))
	a, err := app.NewAgent(runCtx, args, app.AgentEnv{REST: cfg, MetadataTransport: toHost(s.MetadataHost)})
	if err != nil {
		stop()
		f.Close()
		return nil, fmt.Errorf("agent %s: %w", s.Node, err)
	}
	ia := &InProcessAgent{Node: s.Node, agent: a, stop: stop, done: make(chan error, 1), log: f}
	go func() { ia.done <- a.Run(runCtx) }()
	if err := ia.waitReady(ctx); err != nil {
		ia.Stop()
		return nil, err
	}
	return ia, nil
}

func (a *InProcessAgent) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := a.agent.Ready()
		if err == nil {
			return nil
		}
		select {
		case runErr := <-a.done:
			a.done <- runErr
			return fmt.Errorf("agent %s ended before it was ready: %w", a.Node, runErr)
		case <-ctx.Done():
			return fmt.Errorf("agent %s not ready: %w", a.Node, errors.Join(err, ctx.Err()))
		case <-tick.C:
		}
	}
}

// Ready is the agent's readiness.
func (a *InProcessAgent) Ready() error { return a.agent.Ready() }

// Counter sums the agent's counter (or gauge) samples of the metric family
// name whose labels include want.
func (a *InProcessAgent) Counter(name string, want map[string]string) (float64, error) {
	families, err := a.agent.Registry().Gather()
	if err != nil {
		return 0, fmt.Errorf("agent %s metrics: %w", a.Node, err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	samples:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue samples
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum, nil
}

// Stop ends the agent as SIGTERM ends the process (a drain under way goes
// on until its own cut-offs) and waits for it.
func (a *InProcessAgent) Stop() {
	a.stop()
	<-a.done
	a.done <- nil
	a.log.Close()
}

// toHost sends every request to host over a transport of its own: the
// metadata client addresses the metadata server by its well-known
// address, and each in-process agent has a server of its own.
func toHost(host string) http.RoundTripper {
	return &hostRewriter{host: host, next: http.DefaultTransport.(*http.Transport).Clone()}
}

type hostRewriter struct {
	host string
	next http.RoundTripper
}

func (h *hostRewriter) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = "http", h.host, h.host
	return h.next.RoundTrip(r)
}
