package review

import (
	"context"

	"termgate.dev/termgate/webhook/nodecache"
)

// Verdicts of the node check that every gate placing a pod on a node makes
// first, the same label values for each gate.
const (
	VerdictNotTerminating = "allowed-not-terminating"
	VerdictUnconfirmed    = "allowed-unconfirmed"
	VerdictRefusedUnconf  = "denied-unconfirmed"
	VerdictUnknownNode    = "allowed-unknown-node"
)

// NodeCheck is the first step of a gate that places a pod on a node (a
// bind, a pinned pod): what the node cache says about the node, before
// the pod's tolerations are read.
type NodeCheck struct {
	Nodes nodecache.Lookup
	// RefuseUnconfirmed refuses a pod onto a node whose fresh read failed,
	// instead of allowing it on the cache's word.
	RefuseUnconfirmed bool
	Metrics           *GateMetrics
}

// Check looks node up. It returns decided=false only for a node marked
// terminating, where the pod's tolerations decide; otherwise resp is the
// answer. retry ends the refusal of an unconfirmed node, telling the
// caller what happens to the request next.
func (c NodeCheck) Check(ctx context.Context, node string, dryRun bool, retry string) (n nodecache.Node, resp Response, decided bool) {
	n, place := nodecache.Place(ctx, c.Nodes, node, dryRun)
	switch place {
	case nodecache.PlaceUnknown:
		// A node the cache has not seen yet (just created, or the cache is
		// behind): fail open, as the registrations' failurePolicy does.
		c.Metrics.CacheMiss()
		return n, Allow(VerdictUnknownNode), true
	case nodecache.PlaceUnconfirmed:
		// A Spot node whose fresh read failed: the cache says it is not
		// terminating, but may be behind.
		if c.RefuseUnconfirmed {
			return n, Deny(VerdictRefusedUnconf, "node "+node+" may be terminating and could not be checked now; "+retry), true
		}
		return n, Allow(VerdictUnconfirmed), true
	case nodecache.PlaceFree:
		return n, Allow(VerdictNotTerminating), true
	}
	return n, Response{}, false
}
