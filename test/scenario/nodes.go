package scenario

import "termgate.dev/termgate/test/cluster"

// NodeKind is the kind of VM a scenario needs.
type NodeKind string

// Node kinds of the local cluster (cluster.DefaultNodes makes the first
// three, cluster.CloudNodes the others).
const (
	NodeSpot     NodeKind = "spot"
	NodeGPU      NodeKind = "gpu"
	NodeOnDemand NodeKind = "on-demand"
	// NodeAWSSpot and NodeAzureSpot are Spot VMs of the other clouds
	// (cluster.CloudNodes).
	NodeAWSSpot   NodeKind = "aws-spot"
	NodeAzureSpot NodeKind = "azure-spot"
)

func kindOf(n cluster.NodeSpec) NodeKind {
	switch {
	case n.Cloud == cluster.CloudAWS:
		return NodeAWSSpot
	case n.Cloud == cluster.CloudAzure:
		return NodeAzureSpot
	case n.Spot:
		return NodeSpot
	case n.Accelerator != "":
		return NodeGPU
	}
	return NodeOnDemand
}

// nthNode returns the name of the i-th node (from 0) of a kind, or "".
func nthNode(nodes []cluster.NodeSpec, kind NodeKind, i int) string {
	for _, n := range nodes {
		if kindOf(n) != kind {
			continue
		}
		if i == 0 {
			return n.Name
		}
		i--
	}
	return ""
}

func firstNode(nodes []cluster.NodeSpec, kind NodeKind) string { return nthNode(nodes, kind, 0) }
