package ec2fake

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/proc"
)

// SimulatorVersion is the amazon-ec2-metadata-mock release `make binaries`
// builds into bin/ec2-metadata-mock from its Go module.
const SimulatorVersion = "v1.13.0"

// Simulator is AWS's own IMDS simulator, amazon-ec2-metadata-mock, running
// as a process with IMDSv2 required, for the cases it covers: a Spot
// interruption (its time two minutes after each request), a rebalance
// recommendation and one scheduled event, each appearing after a delay
// from its start. It cannot withdraw a notice, expire tokens on demand or
// serve garbage: Server covers those.
type Simulator struct {
	proc     *proc.Process
	endpoint string
}

// StartSimulator runs the simulator with args (a subcommand and its flags,
// e.g. "spot", "-a", "stop"; global flags such as --mock-delay-sec first)
// on a free loopback port, logging to dir, and waits until it listens.
func StartSimulator(dir string, args ...string) (*Simulator, error) {
	bin, err := simulatorBinary()
	if err != nil {
		return nil, err
	}
	ports, err := proc.FreePorts(1)
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	all := append([]string{"--imdsv2", "--hostname", "127.0.0.1", "--port", strconv.Itoa(ports[0])}, args...)
	p, err := proc.Start(dir, "ec2-metadata-mock-"+strconv.Itoa(ports[0]), nil, bin, all...)
	if err != nil {
		return nil, err
	}
	s := &Simulator{proc: p, endpoint: "http://" + addr}
	// It starts in milliseconds; ten seconds means it will not.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if gone, err := p.Exited(); gone {
			return nil, err
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("ec2-metadata-mock not listening on %s (log: %s)", addr, p.LogPath())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Endpoint is the value for AWS_EC2_METADATA_SERVICE_ENDPOINT.
func (s *Simulator) Endpoint() string { return s.endpoint }

// LogPath is the simulator's log.
func (s *Simulator) LogPath() string { return s.proc.LogPath() }

// Stop ends the simulator.
func (s *Simulator) Stop() { s.proc.Stop(2 * time.Second) }

func simulatorBinary() (string, error) {
	dir := os.Getenv("TERMGATE_BIN")
	if dir == "" {
		root, err := cluster.RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "bin")
	}
	bin := filepath.Join(dir, "ec2-metadata-mock")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("AWS's IMDS simulator: %s missing (run `make binaries`): %w", bin, err)
	}
	return bin, nil
}
