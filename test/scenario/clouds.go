package scenario

import (
	"fmt"

	"termgate.dev/termgate/agent/azure"
	"termgate.dev/termgate/test/azurefake"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/ec2fake"
	"termgate.dev/termgate/test/localrun"
)

// startStandIn starts the metadata stand-in of a node on EC2 or Azure.
func (e *Env) startStandIn(n cluster.NodeSpec) error {
	switch n.Cloud {
	case cluster.CloudAWS:
		s, err := ec2fake.Start()
		if err != nil {
			return fmt.Errorf("EC2 metadata stand-in for %s: %w", n.Name, err)
		}
		if e.ec2 == nil {
			e.ec2 = map[string]*ec2fake.Server{}
		}
		e.ec2[n.Name] = s
	case cluster.CloudAzure:
		s, err := azurefake.Start()
		if err != nil {
			return fmt.Errorf("azure Scheduled Events stand-in for %s: %w", n.Name, err)
		}
		if e.azure == nil {
			e.azure = map[string]*azurefake.Server{}
		}
		e.azure[n.Name] = s
	default:
		return fmt.Errorf("node %s: unknown cloud %q", n.Name, n.Cloud)
	}
	return nil
}

// metadataOf points an agent at its node's metadata service the way that
// cloud's client is pointed: GCE_METADATA_HOST for GCE's client, the SDK's
// AWS_EC2_METADATA_SERVICE_ENDPOINT for EC2, the agent's own flag for Azure.
// The agent tells the cloud from the node's provider ID (--cloud=auto).
func (e *Env) metadataOf(n cluster.NodeSpec, s localrun.AgentSpec) localrun.AgentSpec {
	switch {
	case e.ec2[n.Name] != nil:
		s.Env = append(s.Env, "AWS_EC2_METADATA_SERVICE_ENDPOINT="+e.ec2[n.Name].Endpoint())
	case e.azure[n.Name] != nil:
		s.Flags = append(append([]string{}, s.Flags...), "--azure-metadata-endpoint="+e.azure[n.Name].Endpoint())
	default:
		md, _ := e.Fleet.Get(n.Name)
		s.MetadataHost = md.Host()
	}
	return s
}

// EC2 returns the EC2 metadata stand-in of a node.
func (e *Env) EC2(node string) (*ec2fake.Server, error) {
	if s := e.ec2[node]; s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("node %s has no EC2 metadata stand-in", node)
}

// Azure returns the Scheduled Events stand-in of a node.
func (e *Env) Azure(node string) (*azurefake.Server, error) {
	if s := e.azure[node]; s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("node %s has no Scheduled Events stand-in", node)
}

// AzureVMName is the name Scheduled Events gives a node's VM.
func AzureVMName(n cluster.NodeSpec) string {
	name, _ := azure.VMName(n.ProviderID())
	return name
}

func (e *Env) closeStandIns() {
	for _, s := range e.ec2 {
		_ = s.Close()
	}
	for _, s := range e.azure {
		_ = s.Close()
	}
	e.ec2, e.azure = nil, nil
}
