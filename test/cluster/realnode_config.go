package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func (c *Cluster) nodeReadyAndSchedulable(ctx context.Context, name string) bool {
	n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	return err == nil && isReady(n) && !hasLifecycleTaint(n)
}

// writeConfigs writes the CNI, containerd and kubelet configurations. Every
// path the three would otherwise take from their machine-wide defaults
// (/var/lib/..., /run/..., /etc/cni, /var/log/pods) points into n.Dir.
func (n *RealNode) writeConfigs(c *Cluster, subnet *net.IPNet) error {
	// Both kubelet ports reserved together, so they cannot be the same.
	kubeletPorts, err := freePortsAny(2)
	if err != nil {
		return fmt.Errorf("kubelet ports: %w", err)
	}
	files := map[string]string{
		"net.d/10-termgate.conflist": fmt.Sprintf(cniConfig, n.id, n.bridge, subnet, n.IP, filepath.Join(n.Dir, "ipam")),
		"containerd.toml": fmt.Sprintf(containerdConfig,
			filepath.Join(n.Dir, "containerd/root"), filepath.Join(n.Dir, "containerd/state"), n.socket,
			PauseImage, n.bins.runc, filepath.Join(n.Dir, "containerd/state/runc"), n.bins.dir, filepath.Join(n.Dir, "net.d")),
		"kubelet.yaml": fmt.Sprintf(kubeletConfig,
			n.IP, kubeletPorts[0], kubeletPorts[1], "unix://"+n.socket, "/"+n.cgroupDir,
			filepath.Join(n.Dir, "pod-logs"), filepath.Join(n.Dir, "volume-plugins"),
			RealNodeTaint, "gce://local-project/us-central1-a/"+n.Name),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(n.Dir, name), []byte(body), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// freePortsAny reserves a port free on every address: the kubelet's server
// listens on the bridge address, its health endpoint on loopback.
func freePortsAny(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			return nil, fmt.Errorf("reserve a port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// The bridge plugin with host-local addresses on the node's own bridge. The
// default route goes to the bridge (the host), where the `kubernetes`
// Service address lives. No masquerading: pods only talk to this machine.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "termgate-%s",
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": "%s", "gateway": "%s"}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}
`

// containerd with private root, state and socket. restrict_oom_score_adj:
// this machine refuses negative oom_score_adj, which the kubelet asks for
// every sandbox. netns_mounts_under_state_dir keeps the pods' network
// namespaces out of /var/run/netns. NRI is off: its socket is machine-wide.
const containerdConfig = `version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = %q

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %q
        Root = %q
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
    use_internal_loopback = true
`

// The settings that ran a kubelet on this machine kind (cgroup v1, no swap
// accounting, no iptables, a disk the eviction manager cannot stat, images
// that cannot be pulled back once collected). Its server listens on the
// bridge address only, with anonymous access: the API server reaches it
// for logs and nothing else can.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
containerRuntimeEndpoint: %q
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: %q
podLogsDir: %q
volumePluginDir: %q
failSwapOn: false
makeIPTablesUtilChains: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%%"
  imagefs.available: "0%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
registerNode: true
registerWithTaints:
- key: %s
  effect: NoSchedule
providerID: %q
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
fileCheckFrequency: 1h
shutdownGracePeriod: 0s
`
