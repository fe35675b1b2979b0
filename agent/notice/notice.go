// Package notice is the agent's cloud-neutral model of termination notices.
// A Source (GCE's metadata server, EC2's instance metadata, Azure's
// Scheduled Events) reports on every read the complete set of notices in
// force; a notice missing from a later read was withdrawn or has finished.
// The package decides nothing: the agent's decide does, from Readings alone,
// so every cloud gets the same mark, fence and drain.
package notice

import (
	"context"
	"slices"
	"time"

	"termgate.dev/termgate/nodemark"
)

// Impact is what a notice does to the VM, whatever the cloud calls it.
type Impact string

const (
	// ImpactTerminate: the VM goes away (Spot reclaim, scale-in, retirement).
	ImpactTerminate Impact = "terminate"
	// ImpactRestart: the VM stops and comes back under the same node name
	// with a new boot ID (EC2 stop and hibernate, reboots, Azure Redeploy).
	ImpactRestart Impact = "restart"
	// ImpactPause: the VM is frozen for seconds and resumes (Azure Freeze,
	// EC2 system-maintenance).
	ImpactPause Impact = "pause"
	// ImpactLiveMigrate: the VM moves to another host while running.
	ImpactLiveMigrate Impact = "live-migrate"
	// ImpactAdvisory: a warning of elevated risk, no disruption announced
	// (EC2 rebalance recommendation).
	ImpactAdvisory Impact = "advisory"
)

// Ends reports whether the pods on the VM stop: the node must drain.
func (i Impact) Ends() bool { return i == ImpactTerminate || i == ImpactRestart }

// Notice is one announcement in force.
type Notice struct {
	// ID is stable for the notice's life within its source: a metadata
	// key for single-valued signals, the cloud's event id otherwise.
	ID     string
	Reason nodemark.Reason
	Impact Impact
	// NotBefore is the cloud's own time for the disruption (EC2's
	// instance-action time or NotBefore, Azure's NotBefore, GCE's window
	// start); zero when the cloud gives none.
	NotBefore time.Time
	// WindowEnd is the end of the cloud's window (EC2 NotAfter); zero if
	// none.
	WindowEnd time.Time
	// Issued is when the cloud says it emitted the notice (EC2 rebalance
	// noticeTime); zero if it does not say.
	Issued time.Time
	// Started: the disruption has begun (Azure EventStatus Started).
	Started bool
	// Withdrawable: the cloud may cancel the notice (maintenance can be
	// cancelled; a Spot interruption cannot).
	Withdrawable bool
	// Reschedulable: the cloud may move NotBefore; the deadline follows.
	Reschedulable bool
	// FirstSeen is when this process first read the notice: its notice
	// time.
	FirstSeen time.Time
	// AtFirstRead: the notice was already there at the source's first read,
	// so it may be older than FirstSeen says (the late-start rule).
	AtFirstRead bool
	// Raw is the value as served, for logs and events.
	Raw string
}

// Unreadable is a value a source could not understand. It is ignored: the
// notices the source did understand still count.
type Unreadable struct {
	Channel string
	Value   string
	Err     string
	// Alarming: the value looks like a termination the agent does not
	// know how to read (an unknown TERMINATE_... maintenance event).
	Alarming bool
	// AsClear: the value counts as "nothing announced" on its channel
	// (GCE's upcoming-maintenance rule) rather than leaving the channel
	// at its last known value.
	AsClear bool
}

// Reading is everything a source knows at one instant.
type Reading struct {
	// Source is the source's name (gce, aws, azure).
	Source string
	// At is when the newest answer behind the reading arrived: for a
	// withdrawal, when the agent saw it.
	At time.Time
	// Notices are the notices in force.
	Notices []Notice
	// Unread names the channels (metadata keys, paths) not read yet: a
	// notice of theirs can be neither seen nor ruled out.
	Unread []string
	// Unreadable lists the values currently not understood.
	Unreadable []Unreadable
	// ChannelOf names the channel a mark's notice comes from, so that a
	// mark whose channel was read and no longer lists it is withdrawn
	// while other channels are still unread. Nil, or "", means unknown.
	ChannelOf func(nodemark.Mark) string
}

// Empty reports whether the source has read nothing at all yet.
func (r Reading) Empty() bool {
	return r.Source == "" || (len(r.Notices) == 0 && len(r.Unreadable) == 0 && r.At.IsZero())
}

// Complete reports whether every channel has been read.
func (r Reading) Complete() bool { return len(r.Unread) == 0 }

// Find returns the notice with this id.
func (r Reading) Find(id string) (Notice, bool) {
	for _, n := range r.Notices {
		if n.ID == id {
			return n, true
		}
	}
	return Notice{}, false
}

// MayHide reports whether a notice behind mark could still be in force
// unseen: its channel is unread, or unknown while some channel is.
func (r Reading) MayHide(m nodemark.Mark) bool {
	if r.Complete() {
		return false
	}
	if m.Source != "" && m.Source != r.Source {
		return true
	}
	ch := ""
	if r.ChannelOf != nil {
		ch = r.ChannelOf(m)
	}
	return ch == "" || slices.Contains(r.Unread, ch)
}

// Same reports whether two readings say the same thing (At aside): a
// source sends a reading only when it does not.
func Same(a, b Reading) bool {
	return a.Source == b.Source &&
		slices.EqualFunc(a.Notices, b.Notices, sameNotice) &&
		slices.Equal(a.Unread, b.Unread) &&
		slices.Equal(a.Unreadable, b.Unreadable)
}

func sameNotice(a, b Notice) bool {
	return a.ID == b.ID && a.Reason == b.Reason && a.Impact == b.Impact && a.NotBefore.Equal(b.NotBefore) &&
		a.WindowEnd.Equal(b.WindowEnd) && a.Issued.Equal(b.Issued) && a.Started == b.Started &&
		a.Withdrawable == b.Withdrawable && a.Reschedulable == b.Reschedulable &&
		a.FirstSeen.Equal(b.FirstSeen) && a.AtFirstRead == b.AtFirstRead && a.Raw == b.Raw
}

// Source follows one cloud's notices.
type Source interface {
	// Name is the value of the mark's source annotation: gce, aws, azure.
	Name() string
	// Run reads until ctx ends and sends a Reading on out whenever what
	// the source knows changes, the first time once any channel is read.
	Run(ctx context.Context, out chan<- Reading)
	// Alive returns an error when the source has stopped hearing from the
	// cloud for longer than its reads take (liveness).
	Alive() error
	// Ready returns an error until a first channel has been read.
	Ready() error
}

// Acknowledger is a Source that can tell the cloud a drain is done, so the
// event may start early (Azure StartRequests). done is false, with no
// error, when the source leaves this notice alone (acknowledgement off, or
// the event covers other VMs too).
type Acknowledger interface {
	Acknowledge(ctx context.Context, id string) (done bool, err error)
}

// Truncate keeps values from a cloud short in logs and events.
func Truncate(s string) string {
	const limit = 64
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}
