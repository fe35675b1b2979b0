package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/testenv"
	"termgate.dev/termgate/webhook"
	"termgate.dev/termgate/webhook/confine"
	"termgate.dev/termgate/webhook/nodecache"
	"termgate.dev/termgate/webhook/review"
)

// spotNode returns one of the cluster's Spot nodes.
func spotNode(t *testing.T) string {
	t.Helper()
	list, err := env.Client.CoreV1().Nodes().List(ctx(t), metav1.ListOptions{LabelSelector: cluster.LabelSpot + "=true"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) == 0 {
		t.Fatal("the cluster has no Spot node")
	}
	return list.Items[0].Name
}

// TestABindOntoASpotNodeIsJudgedByTheNodeAsStoredNotAsCached: an informer
// can be a second behind the API server in a mass preemption, and the
// scheduler binds onto a Spot node during that second. The webhook here
// answers from a cache frozen before the mark; the bind must still be
// refused, through the real API server, because the node is re-read.
func TestABindOntoASpotNodeIsJudgedByTheNodeAsStoredNotAsCached(t *testing.T) {
	ns := testenv.Namespace(t, env.Client)
	spot := spotNode(t)
	frozen := nodecache.NewStore()
	stale := nodecache.NodeMeta(spot, nil)
	stale.Labels = map[string]string{cluster.LabelSpot: "true"}
	if err := frozen.Add(stale); err != nil {
		t.Fatal(err)
	}
	meta, err := metadata.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	atRisk, err := nodecache.ParseSelectors(nodecache.DefaultAtRisk)
	if err != nil {
		t.Fatal(err)
	}
	// wiring answers the API server's calls with nodes until restored.
	wiring := func(nodes nodecache.Lookup) (restore func()) {
		metrics, err := review.NewMetrics(prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		h := webhook.Handler(webhook.Config{
			Nodes: nodes, Pods: webhook.APIPods{Client: env.Client},
			TaintEffect: corev1.TaintEffectNoSchedule, Agent: confine.Options{Username: agentUser},
			Metrics: metrics, Log: logr.Discard(), Clock: clock.RealClock{},
		})
		current := wh.handler.swap(h)
		return func() { wh.handler.swap(current) }
	}
	markNode(t, spot, false)

	bindOnto := func(name string) error {
		pod := kit.Pod(ns, name)
		pod.Spec.SchedulerName = "termgate-test-nobody" // only this test binds it
		createPod(t, pod)
		return env.Client.CoreV1().Pods(ns).Bind(ctx(t), &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Target:     corev1.ObjectReference{Kind: "Node", Name: spot},
		}, metav1.CreateOptions{})
	}

	t.Run("Answered from the stale cache alone, the bind gets through: the cache really is behind.", func(t *testing.T) {
		restore := wiring(nodecache.NewConfirmer(nodecache.NewFromStore(frozen), nil, atRisk, nil))
		defer restore()
		if err := bindOnto("through-the-cache"); err != nil {
			t.Fatalf("bind refused by a cache that has not seen the mark: %v", err)
		}
	})
	t.Run("With the node re-read, the same bind is refused, naming the node.", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		confirmMetrics, err := nodecache.NewConfirmMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		restore := wiring(nodecache.NewConfirmer(nodecache.NewFromStore(frozen), nodecache.NewRereader(meta.Resource(nodecache.NodesResource), 500*time.Millisecond), atRisk, confirmMetrics))
		defer restore()
		err = bindOnto("re-read")
		if err == nil || !strings.Contains(err.Error(), "node "+spot+" is terminating") {
			t.Fatalf("bind onto the marked Spot node: %v, want refused", err)
		}
		if caught := counterSum(t, reg, "termgate_webhook_node_confirmations_total", map[string]string{"result": nodecache.ConfirmCaught}); caught != 1 {
			t.Fatalf("caught-mark counted %v times, want 1", caught)
		}
	})
	t.Run("A pod pinned to the node is refused the same way.", func(t *testing.T) {
		restore := wiring(nodecache.NewConfirmer(nodecache.NewFromStore(frozen), nodecache.NewRereader(meta.Resource(nodecache.NodesResource), 500*time.Millisecond), atRisk, nil))
		defer restore()
		_, err := env.Client.CoreV1().Pods(ns).Create(ctx(t), kit.Pod(ns, "pinned", kit.OnNode(spot)), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "node "+spot+" is terminating") {
			t.Fatalf("pod pinned to the marked Spot node: %v, want refused", err)
		}
	})
}
