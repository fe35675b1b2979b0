package asdeployed

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
)

// AgentSpec says which agent to start.
type AgentSpec struct {
	Cluster      *cluster.Cluster
	Binary       string
	Node         string
	MetadataHost string
	// Identity is the agent's own (Identity); nil runs the agent with the
	// cluster's admin credentials, for the comparison figure.
	Identity *localrun.AgentIdentity
	// Extra flags come after the DaemonSet's, so they win.
	Extra []string
	// Env is added after the shipped environment (another cloud's
	// metadata endpoint, e.g. AWS_EC2_METADATA_SERVICE_ENDPOINT).
	Env []string
}

// Identity installs the shipped agent RBAC and Node policy and returns a
// token bound to a stand-in agent pod on node.
func Identity(ctx context.Context, c *cluster.Cluster, node string) (*localrun.AgentIdentity, error) {
	id, err := localrun.NewAgentIdentity(ctx, localrun.IdentitySpec{Admin: c.Client, AdminConfig: c.Config, Dir: c.Dir, Node: node})
	if err != nil {
		return nil, fmt.Errorf("agent identity for %s: %w", node, err)
	}
	return id, nil
}

// StartAgent starts the agent through the launcher, which gives it the
// DaemonSet's arguments and environment.
func StartAgent(ctx context.Context, s AgentSpec) (*localrun.Agent, error) {
	spec := localrun.AgentSpec{
		Binary: s.Binary, Dir: s.Cluster.Dir, Kubeconfig: s.Cluster.Kubeconfig, Node: s.Node, MetadataHost: s.MetadataHost,
		Flags: s.Extra, Env: s.Env,
	}
	if s.Identity != nil {
		spec.Kubeconfig, spec.Pod = s.Identity.Kubeconfig, s.Identity.Pod
	}
	return localrun.StartAgent(ctx, spec)
}

// StartWebhook starts the webhook as `make demo` does: the Deployment's
// arguments and environment (the launcher's default) and its own service
// account's token. Extra flags come after the Deployment's, so they win:
// a bench that passes any is not as deployed and must say so.
func StartWebhook(ctx context.Context, c *cluster.Cluster, binary string, extra ...string) (*localrun.Webhook, error) {
	return localrun.StartWebhookWithOwnIdentity(ctx, c, localrun.WebhookSpec{Binary: binary, Flags: extra})
}

// MetricsReader makes the scraper the benchmarks read metrics with: a
// service account bound to the shipped termgate-metrics-reader role.
func MetricsReader(ctx context.Context, c *cluster.Cluster) (*localrun.MetricsReader, error) {
	r, err := localrun.NewMetricsReader(ctx, localrun.IdentitySpec{Admin: c.Client, AdminConfig: c.Config, Dir: c.Dir})
	if err != nil {
		return nil, fmt.Errorf("metrics reader: %w", err)
	}
	return r, nil
}

// Counters scrapes a termgate metrics endpoint as r and returns the
// samples of the metrics named by prefixes, keyed by name and labels.
func Counters(ctx context.Context, r *localrun.MetricsReader, addr string, prefixes ...string) (map[string]float64, error) {
	body, err := r.Scrape(ctx, addr)
	if err != nil {
		return nil, err
	}
	return localrun.Samples(body, prefixes...), nil
}

// Memory is a process's resident memory in MiB: now, at its peak, and now
// split into anonymous memory (heap, stacks) and file pages (mostly the
// binary's own code).
type Memory struct{ RSS, Peak, Anon, File float64 }

// ReadMemory reads VmRSS, VmHWM, RssAnon and RssFile of pid.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	var m Memory
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		for key, into := range map[string]*float64{"VmRSS:": &m.RSS, "VmHWM:": &m.Peak, "RssAnon:": &m.Anon, "RssFile:": &m.File} {
			rest, ok := strings.CutPrefix(line, key)
			if !ok {
				continue
			}
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return Memory{}, fmt.Errorf("parse %s %q of pid %d: %w", key, rest, pid, err)
			}
			*into = kb / 1024
			found++
		}
	}
	if found != 4 {
		return Memory{}, fmt.Errorf("no VmRSS, VmHWM, RssAnon and RssFile for pid %d", pid)
	}
	return m, nil
}

// SampleMemory reads pid's memory every interval until the returned
// function is called, which returns the largest value of each field seen
// (Peak is the kernel's own high-water mark at the end). Calling it again
// returns the same.
func SampleMemory(pid int, every time.Duration) (stop func() Memory) {
	done, out := make(chan struct{}), make(chan Memory, 1)
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		var largest Memory
		for {
			if m, err := ReadMemory(pid); err == nil {
				largest = Memory{RSS: max(largest.RSS, m.RSS), Peak: m.Peak, Anon: max(largest.Anon, m.Anon), File: max(largest.File, m.File)}
			}
			select {
			case <-tick.C:
			case <-done:
				out <- largest
				return
			}
		}
	}()
	var once sync.Once
	var result Memory
	return func() Memory {
		once.Do(func() { close(done); result = <-out })
		return result
	}
}
