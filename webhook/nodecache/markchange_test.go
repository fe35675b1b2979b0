package nodecache

import (
	"context"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	metadatafake "k8s.io/client-go/metadata/fake"

	"termgate.dev/termgate/nodemark"
)

// markEvents records what OnTerminatingChange reports.
type markEvents struct {
	mu  sync.Mutex
	got map[string]bool
}

func (m *markEvents) record(node string, marked bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.got[node] = marked
}

func (m *markEvents) expect(t *testing.T, node string, marked bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		got, ok := m.got[node]
		m.mu.Unlock()
		if ok && got == marked {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: reported (%v, %v), want marked=%v", node, got, ok, marked)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTerminatingChangesAreReported(t *testing.T) {
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	mark := nodemark.Mark{State: nodemark.StateTerminating}.Annotations()
	advance := nodemark.Mark{State: nodemark.StateAdvance}.Annotations()
	client := metadatafake.NewSimpleMetadataClient(scheme, NodeMeta("marked-at-start", mark), NodeMeta("plain", nil), NodeMeta("advance", advance))
	c := New(client, nil)
	events := &markEvents{got: map[string]bool{}}
	c.OnTerminatingChange(events.record)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Start(ctx) }()

	events.expect(t, "marked-at-start", true)
	events.expect(t, "plain", false)
	events.expect(t, "advance", false)
	nodes := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "nodes"})
	if _, err := nodes.Patch(ctx, "plain", types.MergePatchType, []byte(`{"metadata":{"annotations":{"`+nodemark.AnnotationState+`":"terminating"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	events.expect(t, "plain", true)
	if err := nodes.Delete(ctx, "plain", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	events.expect(t, "plain", false)
	if _, err := nodes.Patch(ctx, "marked-at-start", types.MergePatchType, []byte(`{"metadata":{"annotations":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	events.expect(t, "marked-at-start", false)
}
