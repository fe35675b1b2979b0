package scenario

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/realnodeinstall"
)

// AppOnRealNode is the part of the workload that runs real containers on
// the real node: the termrecord image, which writes when SIGTERM arrived
// and takes RealNodeExitDelay to finish its work before it exits.
const AppOnRealNode = "cart"

// The real-node workload's shape: a web server that needs a couple of
// seconds to finish its requests after SIGTERM, inside a grace that fits in
// the 30 s a preempted Spot VM has.
const (
	realNodeReplicas  = 3
	RealNodeExitDelay = 2 * time.Second
	RealNodeGrace     = 10 * time.Second
)

// RealNodeInstall is termgate as installed on the real node.
type RealNodeInstall struct {
	Node *cluster.RealNode
	// RecordDir holds one termrecord file per AppOnRealNode pod (a hostPath
	// on the real node).
	RecordDir string
	// Installed is the time from the image import to every termgate pod
	// Ready.
	Installed time.Duration
}

// ContainerRecord is what one real container wrote: when it started, when
// SIGTERM arrived (zero if never) and when it exited (zero if it was
// killed first or still runs).
type ContainerRecord struct {
	Pod string
	cluster.TermRecord
}

// startOnRealNode installs termgate on the real node the way users do (the
// image `make image` built, imported into the node's containerd, and
// `kubectl apply -k` of test/e2e/realnode/overlay on top of the shipped
// self-managed overlay), deploys the workload on the kwok nodes and
// AppOnRealNode on the real node, and puts the real node first among
// e.Nodes as the Spot node the scenarios play on.
func (e *Env) startOnRealNode(ctx context.Context, o EnvOptions) error {
	node, err := o.Cluster.RealNode()
	if err != nil {
		return err
	}
	began := time.Now()
	overlay, _, err := realnodeinstall.Prepare(ctx, node, e.Fleet, o.Cluster.Dir, "realnode")
	if err != nil {
		return err
	}
	if err := realnodeinstall.Apply(ctx, o.Cluster, overlay); err != nil {
		return err
	}
	// The image is present and the webhook makes its own certificates:
	// seconds here; 90 s means something is broken (the kubelet log says).
	if err := realnodeinstall.WaitInstalled(ctx, o.Cluster, node, 90*time.Second); err != nil {
		return err
	}
	e.ownNamespaces = realnodeinstall.Namespaces
	// The agent is the DaemonSet's pod, with the shipped manifests' flags;
	// no agent process runs.
	e.AgentFlags = nil
	install := &RealNodeInstall{Node: node, RecordDir: filepath.Join(o.Cluster.Dir, "termrecord"), Installed: time.Since(began)}
	o.Say("termgate installed on the real node %s as users install it: image imported into its containerd, "+
		"kubectl apply -k of the self-managed overlay; agent = the DaemonSet's pod with its projected token, "+
		"webhook = the Deployment's pods behind their Service with certificates made in the cluster (%s)", node.Name, since(began))

	began = time.Now()
	if e.Workload, err = DeployWorkload(ctx, e.Client, o.Namespace, e.Nodes); err != nil {
		return err
	}
	o.Say("workload Ready on the kwok nodes: %s (%s)", e.Workload.Summary, since(began))
	began = time.Now()
	if err := os.MkdirAll(install.RecordDir, 0o755); err != nil {
		return fmt.Errorf("termrecord directory: %w", err)
	}
	if err := deployOnRealNode(ctx, e.Client, o.Namespace, node.Name, install.RecordDir); err != nil {
		return err
	}
	o.Say("%d %s pods Running on the real node: real containers that record SIGTERM and need %s to finish, grace %s (%s)",
		realNodeReplicas, AppOnRealNode, RealNodeExitDelay, RealNodeGrace, since(began))
	e.RealNode = install
	e.Nodes = append([]cluster.NodeSpec{{Name: node.Name, Zone: "us-central1-a", MachineType: "e2-standard-4", Spot: true}}, e.Nodes...)
	return nil
}

// deployOnRealNode creates AppOnRealNode while the kwok nodes are cordoned,
// so every replica lands on the real node, and uncordons them once the
// replicas run: the kwok nodes take the replacements during the drain.
func deployOnRealNode(ctx context.Context, c kubernetes.Interface, ns, nodeName, recordDir string) (err error) {
	if err := cordonAllBut(ctx, c, nodeName, true); err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, cordonAllBut(context.WithoutCancel(ctx), c, nodeName, false))
	}()
	d := kit.Deployment(ns, AppOnRealNode, realNodeReplicas,
		cluster.RunsTermRecord(recordDir, RealNodeExitDelay, int64(RealNodeGrace/time.Second)))
	if err := createDeployment(ctx, c, d); err != nil {
		return fmt.Errorf("deploy %s: %w", AppOnRealNode, err)
	}
	// The image is in the node's containerd: sandbox and container start
	// take seconds.
	return kit.Poll(ctx, 60*time.Second, func(ctx context.Context) (bool, string, error) {
		n, err := readyOn(ctx, c, d, nodeName)
		return n == realNodeReplicas, fmt.Sprintf("%d of %d %s pods Ready on %s", n, realNodeReplicas, AppOnRealNode, nodeName), err
	})
}

func readyOn(ctx context.Context, c kubernetes.Interface, d *appsv1.Deployment, nodeName string) (int, error) {
	pods, err := c.CoreV1().Pods(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(d.Spec.Selector)})
	if err != nil {
		return 0, fmt.Errorf("list %s pods: %w", d.Name, err)
	}
	n := 0
	for i := range pods.Items {
		if p := &pods.Items[i]; p.Spec.NodeName == nodeName && ready(p) {
			n++
		}
	}
	return n, nil
}

// cordonAllBut sets spec.unschedulable on every node but one.
func cordonAllBut(ctx context.Context, c kubernetes.Interface, keep string, cordon bool) error {
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	patch := fmt.Appendf(nil, `{"spec":{"unschedulable":%v}}`, cordon)
	for _, n := range nodes.Items {
		if n.Name == keep {
			continue
		}
		if _, err := c.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("cordon %s=%v: %w", n.Name, cordon, err)
		}
	}
	return nil
}

// RealContainerRecords reads what every real container of AppOnRealNode
// wrote, in pod-name order.
func (i *RealNodeInstall) RealContainerRecords() ([]ContainerRecord, error) {
	entries, err := os.ReadDir(i.RecordDir)
	if err != nil {
		return nil, fmt.Errorf("read termrecord directory: %w", err)
	}
	var out []ContainerRecord
	for _, ent := range entries {
		r, err := cluster.ReadTermRecord(i.RecordDir, ent.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, ContainerRecord{Pod: ent.Name(), TermRecord: r})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Pod < out[b].Pod })
	return out, nil
}
