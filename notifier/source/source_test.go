package source

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/notifier/notification"
)

// collector records what a Source emits.
type collector struct {
	mu  sync.Mutex
	got []notification.Notification
}

func (c *collector) emit(n notification.Notification) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, n)
}

func (c *collector) kinds() []notification.Kind {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []notification.Kind
	for _, n := range c.got {
		out = append(out, n.Kind)
	}
	return out
}

// waitKinds polls until the collector holds want, for at most a few of the
// source's resyncs of real time: the fake clients answer at once.
func (c *collector) waitKinds(t *testing.T, want ...notification.Kind) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for fmt.Sprint(c.kinds()) != fmt.Sprint(want) {
		if time.Now().After(deadline) {
			t.Fatalf("emitted %v, want %v", c.kinds(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func nodeMeta(name string, annotations map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations, Labels: map[string]string{"pool": "spot"}},
	}
}

func TestSourceFollowsTheMarkItsDrainAndItsRemoval(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond)
	clk := clocktesting.NewFakeClock(now)
	m := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(30 * time.Second)}
	scheme := metadatafake.NewTestScheme()
	_ = metav1.AddMetaToScheme(scheme)
	meta := metadatafake.NewSimpleMetadataClient(scheme, nodeMeta("n1", m.Annotations()), nodeMeta("n2", nil))
	kube := fake.NewClientset()
	cfg := DefaultConfig()
	cfg.Cluster = "test"
	s, err := New(meta, kube, cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c := &collector{}
	go func() { defer close(done); _ = s.Run(ctx, c.emit) }()
	defer func() { cancel(); <-done }()

	c.waitKinds(t, notification.KindMarked)
	if n := c.got[0]; n.Node.Name != "n1" || n.Node.Labels["pool"] != "spot" || n.Cluster != "test" || n.Source != "/termgate.dev/clusters/test" {
		t.Errorf("marked %+v", n)
	}

	sum := nodemark.DrainSummary{EndedAt: now.Add(5 * time.Second), Evicted: 3}
	ev := nodeEvent("n1", nodemark.EventDrainCompleted, &m, now.Add(5*time.Second), map[string]string{nodemark.EventAnnotationDrainSummary: sum.Encode()})
	if _, err := kube.CoreV1().Events("default").Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitKinds(t, notification.KindMarked, notification.KindDrainFinished)

	// The agent unmarks: without its event the withdrawal waits for the
	// hold, then goes out on its own. n2 marked after it is the barrier:
	// the Node watch delivers in order, so once n2's mark is out, n1's
	// removal has been seen.
	nodes := meta.Resource(nodesResource).(metadatafake.MetadataClient)
	if _, err := nodes.UpdateFake(nodeMeta("n1", nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	m2 := m
	m2.NoticeTime = now.Add(time.Second)
	if _, err := nodes.UpdateFake(nodeMeta("n2", m2.Annotations()), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitKinds(t, notification.KindMarked, notification.KindDrainFinished, notification.KindMarked)
	clk.Step(cfg.WithdrawalHold)
	c.waitKinds(t, notification.KindMarked, notification.KindDrainFinished, notification.KindMarked, notification.KindNoticeWithdrawn)
	w := c.got[3]
	if w.Node.Name != "n1" || w.ID != notification.ID(notification.KindNoticeWithdrawn, "n1", m) {
		t.Errorf("withdrawal %s of %s, want n1's, with the id its event would give", w.ID, w.Node.Name)
	}
	// The agent's event arrives late: same id, nothing more. n2's drain,
	// on the same event watch, is the barrier.
	late := nodeEvent("n1", nodemark.EventTerminationCancelled, &m, now.Add(6*time.Second), nil)
	if _, err := kube.CoreV1().Events("default").Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Events("default").Create(ctx, nodeEvent("n2", nodemark.EventDrainCompleted, &m2, now.Add(7*time.Second), nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitKinds(t, notification.KindMarked, notification.KindDrainFinished, notification.KindMarked, notification.KindNoticeWithdrawn, notification.KindDrainFinished)
}

func TestConfigIsValidated(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil {
		t.Error("a config without a cluster name passed")
	}
	cfg.Cluster, cfg.Window = "c", time.Second
	if err := cfg.Validate(); err == nil {
		t.Error("a one-second window passed")
	}
}
