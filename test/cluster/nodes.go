package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
)

// NodeSpec describes a fake node that looks like a GKE node on a GCE VM,
// or with Cloud set, an EKS node on EC2 or an AKS node on Azure.
type NodeSpec struct {
	Name        string
	Zone        string // e.g. us-central1-a
	MachineType string // e.g. e2-standard-4
	Spot        bool   // labelled cloud.google.com/gke-spot=true (or the cloud's own Spot label)
	Accelerator string // e.g. nvidia-l4; labelled cloud.google.com/gke-accelerator
	BootID      string // status.nodeInfo.bootID; random when empty
	// Cloud is CloudGCE (the default), CloudAWS or CloudAzure: it sets the
	// provider ID (which the agent's --cloud=auto goes by) and the labels.
	Cloud string
}

// Clouds of NodeSpec.Cloud.
const (
	CloudGCE   = "gce"
	CloudAWS   = "aws"
	CloudAzure = "azure"
	// CloudNone is a node without a provider ID yet, as before a cloud
	// controller sets it.
	CloudNone = "none"
)

// Spot labels of EKS (managed node groups; Karpenter's is alike) and AKS,
// which termgate's manifests select on beside GKE's.
const (
	LabelEKSCapacityType = "eks.amazonaws.com/capacityType"
	LabelAKSPriority     = "kubernetes.azure.com/scalesetpriority"
)

// CloudNodes returns one Spot node on EC2 and one on Azure (a scale-set
// instance, as AKS runs), for the scenarios of those clouds.
func CloudNodes() []NodeSpec {
	return []NodeSpec{
		{Name: "aws-spot-0", Zone: "us-east-1a", MachineType: "m6i.xlarge", Spot: true, Cloud: CloudAWS},
		{Name: "azure-spot-0", Zone: "eastus-1", MachineType: "Standard_D4s_v5", Spot: true, Cloud: CloudAzure},
	}
}

// region is the zone's region: us-central1 of us-central1-a, us-east-1 of
// us-east-1a, eastus of eastus-1.
func (s NodeSpec) region() string {
	switch s.Cloud {
	case CloudAWS:
		return s.Zone[:len(s.Zone)-1]
	case CloudAzure:
		region, _, _ := strings.Cut(s.Zone, "-")
		return region
	}
	return s.Zone[:len(s.Zone)-2]
}

// ProviderID is the node's spec.providerID, in its cloud's format.
func (s NodeSpec) ProviderID() string {
	switch s.Cloud {
	case CloudNone:
		return ""
	case CloudAWS:
		sum := sha256.Sum256([]byte(s.Name))
		return "aws:///" + s.Zone + "/i-" + hex.EncodeToString(sum[:])[:17]
	case CloudAzure:
		return "azure:///subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mc_local/providers/Microsoft.Compute/virtualMachineScaleSets/" +
			s.Name + "-vmss/virtualMachines/0"
	}
	return "gce://local-project/" + s.Zone + "/" + s.Name
}

// Labels GKE puts on nodes, which termgate's manifests select on.
const (
	LabelSpot        = "cloud.google.com/gke-spot"
	LabelPreemptible = "cloud.google.com/gke-preemptible"
	LabelAccelerator = "cloud.google.com/gke-accelerator"
)

// DefaultNodes returns n nodes: the first half Spot, one GPU node when n >= 4,
// the rest on-demand, spread over three zones.
func DefaultNodes(n int) []NodeSpec {
	zones := []string{"us-central1-a", "us-central1-b", "us-central1-c"}
	nodes := make([]NodeSpec, n)
	spot := (n + 1) / 2
	for i := range nodes {
		s := NodeSpec{Zone: zones[i%len(zones)], MachineType: "e2-standard-4"}
		switch {
		case i < spot:
			s.Name, s.Spot = fmt.Sprintf("spot-%d", i), true
		case i == spot && n >= 4:
			s.Name, s.MachineType, s.Accelerator = fmt.Sprintf("gpu-%d", i), "g2-standard-8", "nvidia-l4"
		default:
			s.Name = fmt.Sprintf("ondemand-%d", i)
		}
		nodes[i] = s
	}
	return nodes
}

// Node renders the spec as a Node object that kwok will manage.
func (s NodeSpec) Node() *corev1.Node {
	bootID := s.BootID
	if bootID == "" {
		bootID = rand.String(16)
	}
	labels := map[string]string{
		"kubernetes.io/hostname":           s.Name,
		"kubernetes.io/os":                 "linux",
		"kubernetes.io/arch":               "amd64",
		"topology.kubernetes.io/zone":      s.Zone,
		"topology.kubernetes.io/region":    s.region(),
		"node.kubernetes.io/instance-type": s.MachineType,
		"type":                             "kwok",
	}
	switch {
	case s.Spot && s.Cloud == CloudAWS:
		labels[LabelEKSCapacityType] = "SPOT"
	case s.Spot && s.Cloud == CloudAzure:
		labels[LabelAKSPriority] = "spot"
	case s.Spot:
		labels[LabelSpot] = "true"
	}
	if s.Accelerator != "" {
		labels[LabelAccelerator] = s.Accelerator
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        s.Name,
			Labels:      labels,
			Annotations: map[string]string{kwokNodeAnnotation: "fake"},
		},
		Spec: corev1.NodeSpec{ProviderID: s.ProviderID()},
		Status: corev1.NodeStatus{
			NodeInfo: corev1.NodeSystemInfo{BootID: bootID, Architecture: "amd64", OperatingSystem: "linux"},
		},
	}
}

// AddNodes creates the nodes and waits until kwok reports them all Ready.
func (c *Cluster) AddNodes(ctx context.Context, specs ...NodeSpec) error {
	for _, s := range specs {
		_, err := c.Client.CoreV1().Nodes().Create(ctx, s.Node(), metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", s.Name, err)
		}
	}
	for _, s := range specs {
		if err := c.WaitNodeReady(ctx, s.Name); err != nil {
			return err
		}
	}
	return nil
}

// WaitNodeReady waits until the node is Ready and schedulable: its Ready
// condition is True and the node lifecycle controller has lifted the
// not-ready and unreachable taints it puts on every new node. Before that the
// scheduler piles new pods onto whichever nodes cleared first.
func (c *Cluster) WaitNodeReady(ctx context.Context, name string) error {
	// kwok readies a node in well under a second; the controller-manager
	// lifts the taints within its node monitor period (1 s here).
	const budget = 30 * time.Second
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, budget, true, func(ctx context.Context) (bool, error) {
		if err := c.Healthy(); err != nil {
			return false, err
		}
		return c.nodeReadyAndSchedulable(ctx, name), nil
	})
	if err != nil {
		return fmt.Errorf("node %s not Ready and schedulable (kwok log: %s): %w", name, c.LogPath("kwok"), err)
	}
	return nil
}

func isReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func hasLifecycleTaint(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeNotReady || t.Key == corev1.TaintNodeUnreachable {
			return true
		}
	}
	return false
}
