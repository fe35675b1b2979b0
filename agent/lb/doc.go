// Package lb tells the drain which load balancers front the pods of the
// agent's node and when the node has left them, from what the Kubernetes API
// shows: Services (a cluster-wide watch, trimmed to the fields read here) and,
// for the length of a drain, the events the service controller records on
// them.
//
// # Classes
//
// Each Service whose selector matches a pod of the node falls in one class:
//
//	| Service                                                   | Class   | What the drain does                       |
//	|-----------------------------------------------------------|---------|-------------------------------------------|
//	| matches --lb-ignore-selector                              | none    | as without load balancers                 |
//	| matches --lb-wait-selector                                | node    | its backends wait for the evidence        |
//	| matches --lb-evict-first-selector                         | neg     | its backends are evicted first            |
//	| type LoadBalancer, no loadBalancerClass                   | node    | (the cloud's service controller owns it)  |
//	| cloud.google.com/neg annotation (ingress or exposed_ports) | neg     |                                           |
//	| anything else                                             | none    |                                           |
//
// A pod that backs a node-level Service is held; otherwise a pod that backs a
// NEG Service goes first.
//
// # Evidence
//
// The service controller (k8s.io/cloud-provider, run by GKE's cloud
// controller manager) re-syncs every load balancer when a node's exclusion
// label flips. For each Service it lists the nodes, calls the cloud with that
// host set and, once the call returns, records UpdatedLoadBalancer (node sync)
// or EnsuredLoadBalancer (service sync, announced by EnsuringLoadBalancer).
// That event is the only in-cluster sign that a load balancer's host set
// changed; the cloud's own view needs compute permissions the agent does not
// have, and EndpointSlices describe pods, not load-balancer membership.
//
// An event newer than the mark is not enough on its own: a call already under
// way when the node was labelled ends after the mark with the old host set.
// An occurrence is therefore trusted only when its call began after the mark:
//
//   - EnsuredLoadBalancer after an EnsuringLoadBalancer seen after the mark;
//   - UpdatedLoadBalancer (or UnAvailableLoadBalancer) when the controller was
//     idle at the mark (no host-update event and no other node leaving the
//     load balancers in the quiet window before it), or when a node-sync event
//     of any Service was seen after the mark before it (the controller's node
//     sync makes one call at a time by default, so the next call began after
//     that one ended), or when the same Service had a node-sync event after
//     the mark before (its calls are sequential).
//
// A call that was under way leaves the Service's last synced hosts holding
// this node, so the controller's next pass updates it again and the trusted
// occurrence follows. UpdateLoadBalancerFailed and SyncLoadBalancerFailed are
// kept as the reason a Service is still pending.
package lb
