package agent

import "termgate.dev/termgate/nodemark"

// event records an event on the agent's Node; reasons are nodemark.Event*.
func (a *Agent) event(kind, reason, format string, args ...any) {
	if a.events == nil {
		return
	}
	a.events.Eventf(nodemark.NodeEventRef(a.cfg.NodeName), kind, reason, format, args...)
}
