package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// savedSysctlsFile keeps the kernel settings found before a real node
// started, for as long as it runs. A test binary killed outright (a go test
// timeout) never runs Stop; the next real node finds the file and puts the
// settings back before anything else.
const savedSysctlsFile = "/run/termgate-realnode-sysctls"

// reclaimLeftovers removes what a real node killed before its Stop left on
// the machine. It runs under the machine-wide lock, so nothing it finds
// can belong to a live real node: bridges named tgbr*, cgroups named
// termgate-realnode-*, shims serving a realnode/containerd.sock, mounts
// under a cluster's realnode/ directory, and the kernel settings of
// savedSysctlsFile.
func reclaimLeftovers() error {
	var errs []error
	if b, err := os.ReadFile(savedSysctlsFile); err == nil {
		vals := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				vals[k] = v
			}
		}
		errs = append(errs, writeSysctls(vals))
		_ = os.Remove(savedSysctlsFile)
	}
	if out, err := exec.Command("ip", "-o", "link", "show", "type", "bridge").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && strings.HasPrefix(f[1], "tgbr") {
				name := strings.TrimSuffix(f[1], ":")
				if out, err := exec.Command("ip", "link", "del", name).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("delete stale bridge %s: %w: %s", name, err, out))
				}
			}
		}
	}
	killProcs(func(args []string) bool {
		return strings.HasSuffix(args[0], "containerd-shim-runc-v2") && strings.Contains(strings.Join(args, " "), "/realnode/containerd.sock")
	})
	var stale []string
	for _, m := range cgroupMounts() {
		dirs, _ := filepath.Glob(filepath.Join(m, "termgate-realnode-*"))
		stale = append(stale, dirs...)
	}
	for _, d := range stale {
		n := &RealNode{cgroupDir: filepath.Base(d)}
		errs = append(errs, n.killCgroupProcs(), n.removeCgroups())
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		roots := map[string]bool{}
		for _, line := range strings.Split(string(mounts), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && (strings.Contains(f[4], "/realnode/containerd/") || strings.Contains(f[4], "/realnode/kubelet")) {
				if i := strings.Index(f[4], "/realnode/"); i >= 0 {
					roots[f[4][:i+len("/realnode")]] = true
				}
			}
		}
		for r := range roots {
			errs = append(errs, unmountUnder(r))
		}
	}
	reclaimSharedDirs()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reclaim a killed real node's leftovers: %w", err)
	}
	return nil
}

// reclaimSharedDirs empties what a killed real node left in the
// machine-wide directories (see sharedDirs) and removes them when empty:
// log links into a real node's pod-logs, libcni results
// of a termgate network, shim sockets nobody listens on.
func reclaimSharedDirs() {
	links, _ := filepath.Glob("/var/log/containers/*")
	for _, l := range links {
		target, err := os.Readlink(l)
		if err == nil && strings.Contains(target, "/realnode/pod-logs/") {
			_ = os.Remove(l) // no real node runs: the link is a dead one's
		}
	}
	results, _ := filepath.Glob("/var/lib/cni/results/termgate-*")
	for _, r := range results {
		_ = os.Remove(r)
	}
	sockets, _ := filepath.Glob("/run/containerd/s/*")
	for _, sock := range sockets {
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			_ = os.Remove(sock) // a dead shim's
			continue
		}
		conn.Close()
	}
	for _, d := range sharedDirs {
		_ = os.Remove(d) // only when empty
	}
}

func saveSysctls(vals map[string]string) error {
	var b strings.Builder
	for k, v := range vals {
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	if err := os.WriteFile(savedSysctlsFile, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("save kernel settings: %w", err)
	}
	return nil
}

// killProcs sends SIGKILL to every process whose command line matches.
func killProcs(match func(args []string) bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmd) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// WhileNoRealNodeRuns runs f holding the machine-wide real-node lock, so no
// real node (of this or another test package) runs meanwhile. Tests use it
// to read the machine's own state (kernel settings, shared directories)
// before and after theirs.
func WhileNoRealNodeRuns(ctx context.Context, f func()) error {
	l, err := lockRealNode(ctx)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := reclaimLeftovers(); err != nil {
		return err
	}
	f()
	return nil
}
