package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/receiver"
)

// notifyRun is the notifier the demo runs with --notify: one replica with
// its own service account under the shipped RBAC, sending every
// notification as a CloudEvent to one receiver and as a Slack message to
// another, both run by the demo.
type notifyRun struct {
	events, slack *receiver.Receiver
	notifier      *localrun.Notifier
	began         time.Time
}

const notifyConfig = `sinks:
- name: events
  format: cloudevents
- name: chat
  format: slack
`

func startNotify(ctx context.Context, con *console, c *cluster.Cluster, binary string) (*notifyRun, error) {
	began := time.Now()
	n := &notifyRun{began: began}
	var err error
	if n.events, err = receiver.Start(receiver.Options{}); err != nil {
		return nil, err
	}
	if n.slack, err = receiver.Start(receiver.Options{}); err != nil {
		n.stop()
		return nil, err
	}
	kubeconfig, err := localrun.NewNotifierIdentity(ctx, localrun.IdentitySpec{Admin: c.Client, AdminConfig: c.Config, Dir: c.Dir})
	if err == nil {
		err = localrun.PutSinksSecret(ctx, c.Client, map[string]string{"events.url": n.events.URL, "chat.url": n.slack.URL})
	}
	if err == nil {
		n.notifier, err = localrun.StartNotifier(ctx, localrun.NotifierSpec{
			Binary: binary, Dir: c.Dir, Kubeconfig: kubeconfig, Name: "notifier", Config: notifyConfig, Flags: []string{"--cluster-name=demo"},
		})
	}
	if err != nil {
		n.stop()
		return nil, fmt.Errorf("notifier: %w", err)
	}
	con.step("notifier leading with its own service account's token: CloudEvents to %s, Slack messages to %s (%s)",
		n.events.URL[:strings.LastIndex(n.events.URL, "/hooks/")], n.slack.URL[:strings.LastIndex(n.slack.URL, "/hooks/")], since(began))
	return n, nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// report prints what arrived and says whether every CloudEvent id arrived
// once; it waits for what the scenarios' last steps still have in flight.
func (n *notifyRun) report(con *console) {
	if n == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	// Settle: no new request for a second.
	last := -1
	for ctx.Err() == nil {
		cur := len(n.events.Requests())
		if cur == last {
			break
		}
		last = cur
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	con.note("notifications that arrived at the demo's Slack receiver:")
	for _, r := range n.slack.Accepted() {
		var msg struct{ Text string }
		_ = json.Unmarshal(r.Body, &msg)
		con.note("  %s  %s", r.At.Format("15:04:05.000"), msg.Text)
	}
	ids, dup := map[string]int{}, 0
	for _, r := range n.events.Accepted() {
		if ids[r.Event.ID]++; ids[r.Event.ID] == 2 {
			dup++
		}
	}
	if dup > 0 {
		con.warn("%d CloudEvent ids arrived more than once", dup)
		return
	}
	con.note("%d CloudEvents arrived at the demo's receiver, each id once", len(n.events.Accepted()))
}

// stop ends the notifier and the receivers.
func (n *notifyRun) stop() {
	if n == nil {
		return
	}
	if n.notifier != nil {
		n.notifier.Stop()
	}
	for _, r := range []*receiver.Receiver{n.events, n.slack} {
		if r != nil {
			r.Close()
		}
	}
}
