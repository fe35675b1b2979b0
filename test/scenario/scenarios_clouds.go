package scenario

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/azurefake"
)

// The other clouds' notices as their services give them.
const (
	// ec2SpotNotice: EC2 posts the interruption two minutes ahead.
	ec2SpotNotice = 2 * time.Minute
	// azurePreemptNotice: Scheduled Events' minimum for a Spot eviction.
	azurePreemptNotice = 30 * time.Second
)

// playEC2Spot: EC2 interrupts a Spot instance with "stop" two minutes
// ahead; the agent, polling IMDSv2, must mark at once with EC2's own time
// as the deadline and drain; the instance then comes back under the same
// name with a new boot ID, and the node must be restored.
func playEC2Spot(r *run) error {
	if err := r.expectUnmarkedAtStart(); err != nil {
		return err
	}
	at := time.Now().Add(ec2SpotNotice).UTC().Truncate(time.Second)
	r.announce(fmt.Sprintf("EC2 spot/instance-action = {stop, %s} on %s (IMDSv2, polled every second)", at.Format(time.TimeOnly), r.node),
		func() { r.ec2.SetInstanceAction("stop", at) })
	if !r.expectMarkedAt(nodemark.ReasonPreempted, "aws", "spot/instance-action", at) {
		return nil
	}
	r.awaitDrain()
	r.settle()
	return r.comeBack("the instance is back after the stop: new boot ID, IMDS lists no interruption",
		func() { r.ec2.SetInstanceAction("", time.Time{}) })
}

// playAzurePreempt: Scheduled Events posts a Preempt for this VM (and a
// Reboot for a neighbour in the same document, which must change nothing
// here) 30 s ahead; the agent must mark with the event's NotBefore as the
// deadline and drain; the event then ends (it leaves the document) and the
// deallocated VM comes back: the node must be restored.
func playAzurePreempt(r *run) error {
	if err := r.expectUnmarkedAtStart(); err != nil {
		return err
	}
	vm := AzureVMName(r.spec)
	id := "preempt-" + rand.String(6)
	notBefore := time.Now().Add(azurePreemptNotice).UTC().Truncate(time.Second)
	r.announce(fmt.Sprintf("Azure Scheduled Events: Preempt %s for %s, NotBefore %s (and a Reboot for another VM)", id, vm, notBefore.Format(time.TimeOnly)),
		func() {
			r.az.Set(azurefake.Scheduled(id, "Preempt", notBefore, vm),
				azurefake.Scheduled("reboot-"+rand.String(6), "Reboot", notBefore.Add(time.Hour), "another-vm_7"))
		})
	if !r.expectMarkedAt(nodemark.ReasonPreempted, "azure", id, notBefore) {
		return nil
	}
	r.awaitDrain()
	r.settle()
	return r.comeBack("the Preempt is over (gone from the document) and the VM is back with a new boot ID", func() { r.az.Set() })
}

// expectMarkedAt waits for the mark and checks that it names the notice
// and takes the cloud's own time as the deadline.
func (r *run) expectMarkedAt(reason nodemark.Reason, source, noticeID string, deadline time.Time) bool {
	ok := r.waitFor("marking", markWithin, func(c counts) bool { return c.marked })
	c := r.w.snapshot()
	what := fmt.Sprintf("node marked within %s (a poll interval and the mark)", markWithin)
	if !ok {
		r.check(what, false, "no taint and mark after %s", markWithin)
		return false
	}
	r.check(what, true, "marked at +%s", fmtDur(c.markedAt))
	m := c.mark
	r.res.Deadline = m.Deadline.Sub(r.tl.Notice())
	r.cutoff = r.res.Deadline
	r.check(fmt.Sprintf("mark says %s from %s notice %s, deadline the cloud's own %s", reason, source, noticeID, deadline.Format(time.TimeOnly)),
		m.Reason == reason && m.Source == source && m.NoticeID == noticeID && m.Deadline.Equal(deadline),
		"reason %s, source %s, notice %s, deadline %s", m.Reason, m.Source, m.NoticeID, m.Deadline.UTC().Format(time.TimeOnly))
	return true
}

// comeBack plays the VM's return: the notice goes and the node reports a
// new boot ID, as a VM that stopped and started again does. The node must
// be restored.
func (r *run) comeBack(detail string, withdraw func()) error {
	r.tl.Add(KindCancelled, r.node, detail)
	at := r.tl.Since()
	patch := fmt.Sprintf(`{"status":{"nodeInfo":{"bootID":%q}}}`, "boot-"+rand.String(10))
	if _, err := r.env.Client.CoreV1().Nodes().Patch(r.ctx, r.node, "application/strategic-merge-patch+json", []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("new boot ID for %s: %w", r.node, err)
	}
	withdraw()
	ok := r.waitFor("restoring", restoreWithin, func(c counts) bool { return c.restored })
	c := r.w.snapshot()
	what := fmt.Sprintf("node restored within %s of the VM's return", restoreWithin)
	if !ok {
		r.check(what, false, "still marked %s after", restoreWithin)
		return nil
	}
	r.check(what, true, "restored %s after", fmtDur(c.restoredAt-at))
	return nil
}
