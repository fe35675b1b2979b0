// Command webhookbench measures the bind gate as the API server uses it:
// HTTPS with keep-alive, N concurrent callers, AdmissionReviews for Binding
// objects. It starts the webhook server in a child process (so the memory
// figure is the webhook's alone) with 1,000 nodes in its cache, every tenth
// marked terminating, drives it for a fixed time, prints a table and writes
// the figures as JSON (bin/bench/webhook.json for `make bench-webhook`).
//
// Only loopback is used: the child listens on 127.0.0.1:0.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "webhookbench:", err)
		os.Exit(1)
	}
}

type options struct {
	role     string
	nodes    int
	marked   int
	clients  int
	duration time.Duration
	warmup   time.Duration
	out      string
	certDir  string
	cluster  bool
}

func run(ctx context.Context, args []string) error {
	o := options{}
	fs := flag.NewFlagSet("webhookbench", flag.ContinueOnError)
	fs.StringVar(&o.role, "role", "load", "load drives a webhook child and a floor child; server is the webhook child, floor a bare handler of the same reviews")
	fs.IntVar(&o.nodes, "nodes", 1000, "nodes in the webhook's cache")
	fs.IntVar(&o.marked, "marked-every", 10, "every n-th node is marked terminating (0: none)")
	fs.IntVar(&o.clients, "clients", 4, "concurrent callers, each on its own keep-alive connection (the API server keeps a few per webhook)")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "measured load time")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load time before")
	fs.StringVar(&o.out, "out", "bin/bench/webhook.json", "where to write the JSON figures (empty: do not write)")
	fs.StringVar(&o.certDir, "cert-dir", "", "server role: directory with tls.crt and tls.key")
	fs.BoolVar(&o.cluster, "cluster", false, "also start a local cluster (bin/controlplane, bin/kwok) and compare the API server's bind latency without and with the webhook")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.nodes <= 0 || o.clients <= 0 || o.duration <= 0 {
		return errors.New("-nodes, -clients and -duration must be positive")
	}
	switch o.role {
	case "server":
		return serve(ctx, o)
	case "floor":
		return serveFloor(ctx, o)
	}
	return drive(ctx, o)
}

// child is the webhook server process.
type child struct {
	cmd     *exec.Cmd
	addr    string
	stopped bool
}

// startChild re-executes this binary as the server and waits for its
// address on stdout.
func startChild(ctx context.Context, o options, role, certDir string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, self, "-role="+role, "-cert-dir="+certDir,
		fmt.Sprintf("-nodes=%d", o.nodes), fmt.Sprintf("-marked-every=%d", o.marked))
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start webhook child: %w", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("webhook child did not report its address: %w", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("webhook child said %q", line)
	}
	return &child{cmd: cmd, addr: addr}, nil
}

// stop ends the child once; the floor is measured with the webhook child
// gone, so that the two never share the cores.
func (c *child) stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	_ = c.cmd.Wait()
}

// rssMB reads the resident set size of pid from /proc.
func rssMB(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%f kB", &kb); err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}
