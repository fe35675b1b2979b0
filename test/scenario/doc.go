// Package scenario plays termgate's end-to-end scenarios on a local
// cluster: a Spot node preempted, host maintenance on the GPU node under a
// PodDisruptionBudget, a maintenance event cancelled mid-drain, a pod
// pinned onto a marked node, a Spot node behind a load balancer preempted
// with and without the wait for load balancers, and on the other clouds'
// nodes (cluster.CloudNodes) an EC2 Spot interruption and an Azure Preempt,
// each announced by that cloud's stand-in metadata service and read by the
// agent's own client. The demo (test/cmd/demo) and the end-to-end tests
// (test/e2e) drive the same code, so what the demo shows is what the tests
// assert.
//
// Each scenario watches the cluster (a pod watch per node, a cluster-wide pod
// watch, node events and warning events) and builds a Timeline whose zero is
// the moment the fake metadata server announced the termination. The Result
// holds the figures and whether every expectation held.
//
// # Lost pods
//
// A pod is lost when its work stopped and nothing took it over:
//
//   - a pod of a controller (ReplicaSet, Job, StatefulSet...) that left the
//     draining node, or was still on it when the deadline passed (the VM
//     stops then), counts as lost unless a new pod of the same controller
//     became Ready on another node before the scenario ended;
//   - a pod without a controller that left counts as lost, always;
//   - DaemonSet pods do not count: they serve the node itself and go with it;
//   - finished pods, mirror pods and pods that tolerate the termination taint
//     are left on the node and do not count;
//   - for every PodDisruptionBudget of the workload, each Ready pod below the
//     budget's guarantee at the worst moment counts as lost too, even if it
//     was replaced later: a budget that was not held is a loss.
package scenario
