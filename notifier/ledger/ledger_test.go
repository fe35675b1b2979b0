package ledger

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
)

const ns, name = "termgate", "termgate-notifier-record"

func open(t *testing.T, client *fake.Clientset, clk *clocktesting.FakeClock, o Options) *Ledger {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	o.Name = name
	if o.Retention == 0 {
		o.Retention = time.Hour
	}
	l, err := Open(context.Background(), client.CoreV1().ConfigMaps(ns), o, clk, m)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func run(t *testing.T, l *Ledger) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func stored(t *testing.T, client *fake.Clientset) map[string]map[string]int64 {
	t.Helper()
	cm, err := client.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, settled, err := parse(cm)
	if err != nil {
		t.Fatal(err)
	}
	return settled
}

func settle(t *testing.T, l *Ledger, sink, id string, at time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Settle(sink, id, at)(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFirstStartRecordsSinceAndASettledIDOutlivesTheLeader(t *testing.T) {
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(now)
	client := fake.NewClientset()
	l := open(t, client, clk, Options{})
	if !l.Since().Equal(now) {
		t.Errorf("since %s, want the first start %s", l.Since(), now)
	}
	run(t, l)
	settle(t, l, "chat", "id-1", now)
	if got := stored(t, client)["chat"]; got["id-1"] != now.UnixMilli() {
		t.Fatalf("stored %v, want id-1", got)
	}
	// The next leader reads what this one settled, and keeps the first
	// start's since.
	clk.Step(time.Minute)
	next := open(t, client, clk, Options{})
	if !next.Settled("chat", "id-1") || next.Settled("pager", "id-1") || !next.Since().Equal(now) {
		t.Errorf("next leader: chat settled %v, pager settled %v, since %s", next.Settled("chat", "id-1"), next.Settled("pager", "id-1"), next.Since())
	}
}

func TestAConflictMergesBothRecords(t *testing.T) {
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(now)
	client := fake.NewClientset()
	l := open(t, client, clk, Options{})
	// Meanwhile another replica (a leader that just lost the Lease) wrote.
	cm, _ := client.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	other, _ := json.Marshal(map[string]int64{"theirs": now.UnixMilli()})
	cm.Data[KeySinkPrefix+"chat"] = string(other)
	if _, err := client.CoreV1().ConfigMaps(ns).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var conflicts atomic.Int32
	client.PrependReactor("update", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts.Add(1) == 1 {
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, name, nil)
		}
		return false, nil, nil
	})
	run(t, l)
	settle(t, l, "chat", "mine", now)
	got := stored(t, client)["chat"]
	if _, ok := got["mine"]; !ok {
		t.Errorf("stored %v: lost this leader's id", got)
	}
	if _, ok := got["theirs"]; !ok {
		t.Errorf("stored %v: the conflict's merge lost the other replica's id", got)
	}
}

func TestPruneForgetsOnlyWhatCannotBeDerivedAgain(t *testing.T) {
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(now)
	client := fake.NewClientset()
	l := open(t, client, clk, Options{Retention: time.Hour, Keep: func() map[string]bool { return map[string]bool{"old-but-marked": true} }})
	run(t, l)
	settle(t, l, "chat", "old", now.Add(-2*time.Hour))
	settle(t, l, "chat", "old-but-marked", now.Add(-72*time.Hour))
	settle(t, l, "chat", "recent", now.Add(-10*time.Minute))
	clk.Step(2 * pruneEvery)
	settle(t, l, "chat", "new", clk.Now())
	got := stored(t, client)["chat"]
	for id, want := range map[string]bool{"old": false, "old-but-marked": true, "recent": true, "new": true} {
		if _, ok := got[id]; ok != want {
			t.Errorf("%s kept = %v, want %v (stored %v)", id, ok, want, got)
		}
	}
}

func TestAnUnreadableRecordFailsWithHowToReset(t *testing.T) {
	client := fake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string]string{KeySince: "2026-03-01T10:00:00Z", KeySinkPrefix + "chat": "{not json"},
	})
	m, _ := NewMetrics(prometheus.NewRegistry())
	_, err := Open(context.Background(), client.CoreV1().ConfigMaps(ns), Options{Name: name, Retention: time.Hour}, clocktesting.NewFakeClock(time.Now()), m)
	if err == nil || !strings.Contains(err.Error(), "settled.chat") || !strings.Contains(err.Error(), "delete it to start afresh") {
		t.Errorf("error %v, want the key and how to reset", err)
	}
}
