// Package integration runs termgate's notifier as users run it, on the local
// cluster: the real binary as a child process with its own service
// account's token under the shipped RBAC, real agents (one per node, with
// their own pod-bound tokens) writing the marks and events it reads, and
// real HTTP receivers the tests run.
package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/watch"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/ledger"
	"termgate.dev/termgate/notifier/notification"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/receiver"
	"termgate.dev/termgate/test/testenv"
)

var (
	env                *cluster.Cluster
	binary             string
	notifierKubeconfig string
)

func TestMain(m *testing.M) {
	os.Exit(testenv.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(1)}, &env, func(dir string) error {
		ctx := context.Background()
		var err error
		if binary, err = localrun.Build(ctx, dir); err != nil {
			return err
		}
		spec := localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: dir}
		if err := localrun.InstallAgentPermissions(ctx, spec); err != nil {
			return err
		}
		notifierKubeconfig, err = localrun.NewNotifierIdentity(ctx, spec)
		return err
	}))
}

// Budgets, each from the system under test.
const (
	// markWithin: the agent marks within milliseconds of reading the
	// notice; its own tests allow two seconds.
	markWithin = 2 * time.Second
	// deliverWithin: a notification leaves as soon as the notifier's
	// watch sees what the agent wrote; one request's timeout (the sinks'
	// default, 10s) bounds an answer that does not come.
	deliverWithin = markWithin + 10*time.Second
	// notice is the preemption notice the agents are given; the drain's
	// escalation comes at notice minus the system grace (10s).
	notice = 20 * time.Second
)

// hmacKey signs the CloudEvents sink's requests.
const hmacKey = "integration-test-hmac-key-0123456789"

// node is a kwok node with its fake metadata server and agent.
type node struct {
	name  string
	md    *gcefake.Server
	agent *localrun.Agent
}

// newNode adds a Spot node and starts its agent as the DaemonSet runs it:
// with a token bound to its pod, under the shipped RBAC and Node policy.
func newNode(t *testing.T, labels map[string]string) *node {
	t.Helper()
	ctx := context.Background()
	spec := cluster.NodeSpec{Name: "n-" + rand.String(6), Zone: "us-central1-a", MachineType: "e2-standard-4", Spot: true}
	if err := env.AddNodes(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.Background(), spec.Name, metav1.DeleteOptions{})
	})
	if len(labels) > 0 {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
		if _, err := env.Client.CoreV1().Nodes().Patch(ctx, spec.Name, "application/merge-patch+json", b, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	fleet := gcefake.NewFleet()
	t.Cleanup(func() { _ = fleet.Close() })
	md, err := fleet.Add(gcefake.Instance{Name: spec.Name, Zone: spec.Zone, MachineType: spec.MachineType, Preemptible: true})
	if err != nil {
		t.Fatal(err)
	}
	id, err := localrun.AgentIdentityOn(ctx, localrun.IdentitySpec{Admin: env.Client, AdminConfig: env.Config, Dir: env.Dir, Node: spec.Name})
	if err != nil {
		t.Fatal(err)
	}
	a, err := localrun.StartAgent(ctx, localrun.AgentSpec{
		Binary: binary, Dir: env.Dir, Kubeconfig: id.Kubeconfig, Node: spec.Name, MetadataHost: md.Host(), Pod: id.Pod,
		Flags: []string{"--preemption-notice=" + notice.String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return &node{name: spec.Name, md: md, agent: a}
}

// workload puts plain pods on the node, and guarded pods whose
// PodDisruptionBudget refuses every eviction, so the drain deletes them at
// its cut-off: the drain then lasts notice minus the system grace.
func workload(t *testing.T, n *node, plain, guarded int) {
	t.Helper()
	ctx := context.Background()
	ns := testenv.Namespace(t, env.Client)
	for i := range plain {
		if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, kit.Pod(ns, fmt.Sprintf("web-%d", i), kit.OnNode(n.name)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if guarded > 0 {
		onNode := kit.NodeSelector(map[string]string{"kubernetes.io/hostname": n.name})
		if _, err := env.Client.AppsV1().Deployments(ns).Create(ctx, kit.Deployment(ns, "guarded", int32(guarded), onNode), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, kit.PDB(ns, "guarded", 0), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, "the workload running on "+n.name, func(ctx context.Context) (bool, string, error) {
		pods, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
		if err != nil {
			return false, "", err
		}
		running := 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == plain+guarded, fmt.Sprintf("%d of %d running", running, plain+guarded), nil
	})
}

// sinkConfig is the configuration the tests run: every notification as a
// signed CloudEvent, and a Slack-preset and a template copy to their own
// receivers when those are given.
func sinkConfig(extra string) string {
	return "sinks:\n- name: events\n  format: cloudevents\n  signatureHeader: X-Signature\n  backoffMax: 5s\n" + extra
}

// startNotifier (re)creates the sinks Secret from urls (sink name to URL)
// and starts a notifier replica as its Deployment runs it.
func startNotifier(t *testing.T, name, config string, urls map[string]string, flags ...string) *localrun.Notifier {
	t.Helper()
	return startNotifierLogged(t, name, name, config, urls, flags...)
}

// startNotifierLogged is startNotifier with a log of its own name, for a
// replica restarted under its pod's name.
func startNotifierLogged(t *testing.T, name, logName, config string, urls map[string]string, flags ...string) *localrun.Notifier {
	t.Helper()
	ctx := context.Background()
	data := map[string]string{"events.hmac-key": hmacKey}
	for sink, u := range urls {
		data[sink+".url"] = u
	}
	if err := localrun.PutSinksSecret(ctx, env.Client, data); err != nil {
		t.Fatal(err)
	}
	n, err := localrun.StartNotifier(ctx, localrun.NotifierSpec{
		Binary: binary, Dir: env.Dir, Kubeconfig: notifierKubeconfig, Name: name, LogName: logName, Config: config,
		Flags: append([]string{"--cluster-name=integration"}, flags...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Stop()
		if t.Failed() {
			t.Logf("log of %s:\n%s", logName, n.Log())
		}
	})
	return n
}

// freshNotifierState removes the Lease and delivery record earlier tests
// left, so each test starts as a first install does.
func freshNotifierState(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	err := env.Client.CoreV1().ConfigMaps(localrun.NotifierNamespace).Delete(ctx, localrun.NotifierRecord, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	err = env.Client.CoordinationV1().Leases(localrun.NotifierNamespace).Delete(ctx, localrun.NotifierLease, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func startReceiver(t *testing.T, b receiver.Behaviour) *receiver.Receiver {
	t.Helper()
	r, err := receiver.Start(receiver.Options{HMACKey: []byte(hmacKey), SignatureHeader: "X-Signature", Behaviour: b})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// eventsOf returns the accepted CloudEvents about node, in order.
func eventsOf(reqs []receiver.Request, node string) []receiver.Request {
	var out []receiver.Request
	for _, r := range reqs {
		if r.Answered >= 200 && r.Answered < 300 && r.Event.Subject == "node/"+node {
			out = append(out, r)
		}
	}
	return out
}

func types(reqs []receiver.Request) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, strings.TrimPrefix(r.Event.Type, notification.TypePrefix))
	}
	return out
}

// waitTypes waits until the receiver accepted exactly want about node.
func waitTypes(t *testing.T, r *receiver.Receiver, node string, budget time.Duration, want ...notification.Kind) []receiver.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	wantS := fmt.Sprint(want)
	reqs, err := r.WaitFor(ctx, func(reqs []receiver.Request) bool { return fmt.Sprint(kindsOf(eventsOf(reqs, node))) == wantS })
	if err != nil {
		t.Fatalf("receiver: accepted %v about %s within %s, want %v", types(eventsOf(reqs, node)), node, budget, want)
	}
	return eventsOf(reqs, node)
}

func kindsOf(reqs []receiver.Request) []notification.Kind {
	var out []notification.Kind
	for _, r := range reqs {
		out = append(out, notification.Kind(strings.TrimPrefix(r.Event.Type, notification.TypePrefix)))
	}
	return out
}

// expectEachIDOnce fails if any id arrived (was accepted) more than once.
func expectEachIDOnce(t *testing.T, reqs []receiver.Request) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range reqs {
		if r.Answered >= 200 && r.Answered < 300 {
			seen[r.Event.ID]++
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("id %s accepted %d times", id, n)
		}
	}
}

// data decodes a CloudEvent's data.
func data(t *testing.T, r receiver.Request) notification.Notification {
	t.Helper()
	var n notification.Notification
	if err := json.Unmarshal(r.Event.Data, &n); err != nil {
		t.Fatalf("data of %s: %v", r.Event.ID, err)
	}
	return n
}

// written records, from a watch of its own, when the test saw each thing
// the agent wrote about a node: its mark appear and go, and its events.
type written struct {
	mu     sync.Mutex
	marked map[string]time.Time // node -> first seen marked terminating
	gone   map[string]time.Time // node -> first seen unmarked after that
	events map[string]time.Time // node/reason -> first seen
	stop   func()
}

func watchWritten(t *testing.T) *written {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &written{marked: map[string]time.Time{}, gone: map[string]time.Time{}, events: map[string]time.Time{}, stop: cancel}
	t.Cleanup(cancel)
	nw, err := env.Client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ew, err := env.Client.CoreV1().Events("").Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("source", "termgate-agent").String()})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range nw.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			now := time.Now()
			m, marked, _ := nodemark.Read(n.Annotations)
			w.mu.Lock()
			if _, seen := w.marked[n.Name]; !seen && marked && m.Terminating() {
				w.marked[n.Name] = now
			}
			if _, seen := w.marked[n.Name]; seen && !marked {
				if _, done := w.gone[n.Name]; !done {
					w.gone[n.Name] = now
				}
			}
			w.mu.Unlock()
		}
	}()
	go func() {
		for ev := range ew.ResultChan() {
			e, ok := ev.Object.(*corev1.Event)
			if !ok || e.InvolvedObject.Kind != "Node" {
				continue
			}
			k := e.InvolvedObject.Name + "/" + e.Reason
			w.mu.Lock()
			if _, seen := w.events[k]; !seen {
				w.events[k] = time.Now()
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// at returns when the thing a notification reports was written: the mark
// for node.marked, the drain's event, the mark's removal.
func (w *written) at(node string, kind notification.Kind) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var t time.Time
	var ok bool
	switch kind {
	case notification.KindMarked:
		t, ok = w.marked[node]
	case notification.KindDrainFinished:
		t, ok = w.events[node+"/"+nodemark.EventDrainCompleted]
	case notification.KindDeadlineMissed:
		t, ok = w.events[node+"/"+nodemark.EventDrainDeadlinePassed]
	case notification.KindNoticeWithdrawn:
		t, ok = w.gone[node]
	}
	return t, ok
}

// latencies logs, for each accepted notification, the time from the write
// it reports to its arrival, and returns them by kind.
func latencies(t *testing.T, w *written, node string, reqs []receiver.Request) map[notification.Kind]time.Duration {
	t.Helper()
	out := map[notification.Kind]time.Duration{}
	for _, r := range reqs {
		k := notification.Kind(strings.TrimPrefix(r.Event.Type, notification.TypePrefix))
		if at, ok := w.at(node, k); ok {
			out[k] = r.At.Sub(at)
			t.Logf("%s: written %s, arrived %s later", k, at.Format("15:04:05.000"), r.At.Sub(at).Round(time.Millisecond))
		}
	}
	return out
}

// waitSettled waits until the delivery record holds id for sink: what a
// kill must not lose.
func waitSettled(t *testing.T, sink, id string) {
	t.Helper()
	testenv.Eventually(t, deliverWithin, id+" in the delivery record", func(context.Context) (bool, string, error) {
		ids := settledIDs(t, sink)
		_, ok := ids[id]
		return ok, fmt.Sprint(ids), nil
	})
}

// settledIDs reads the delivery record's ids for sink.
func settledIDs(t *testing.T, sink string) map[string]int64 {
	t.Helper()
	cm, err := env.Client.CoreV1().ConfigMaps(localrun.NotifierNamespace).Get(context.Background(), localrun.NotifierRecord, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int64{}
	if v, ok := cm.Data[ledger.KeySinkPrefix+sink]; ok {
		if err := json.Unmarshal([]byte(v), &ids); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// secretPath is the part of a receiver's URL that must never be logged.
func secretPath(t *testing.T, r *receiver.Receiver) string {
	t.Helper()
	u, err := url.Parse(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/hooks/")
}
