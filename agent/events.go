package agent

import (
	"maps"

	"termgate.dev/termgate/nodemark"
)

// event records an event on the agent's Node; reasons are nodemark.Event*.
func (a *Agent) event(kind, reason, format string, args ...any) {
	if a.events == nil {
		return
	}
	a.events.Eventf(nodemark.NodeEventRef(a.cfg.NodeName), kind, reason, format, args...)
}

// markEvent records an event about mark m on the agent's Node. It carries
// m's annotations and extra, so that readers tell which notice it is about
// without the Node (see nodemark's events).
func (a *Agent) markEvent(m nodemark.Mark, extra map[string]string, kind, reason, format string, args ...any) {
	if a.events == nil {
		return
	}
	at := m.Annotations()
	maps.Copy(at, extra)
	a.events.AnnotatedEventf(nodemark.NodeEventRef(a.cfg.NodeName), at, kind, reason, format, args...)
}
