package nodepods

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	metadatafake "k8s.io/client-go/metadata/fake"
)

// The field selector that keeps each informer to its node is applied by the
// API server; webhook/integration tests it against a real one. These tests
// cover the cache's own logic with the metadata client's in-memory fake.

func podMeta(ns, name string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), ResourceVersion: "7",
			Labels:        map[string]string{"app": "web"},
			Annotations:   map[string]string{"big": string(make([]byte, 4096))},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
	}
}

func startCache(t *testing.T, objs ...runtime.Object) *Cache {
	t.Helper()
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := New(metadatafake.NewSimpleMetadataClient(scheme, objs...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// Until Start has run, a followed node only waits in pending.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.RLock()
		started := c.ctx != nil
		c.mu.RUnlock()
		if started {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal("the cache did not start within 10s")
		}
	}
}

func expectListed(t *testing.T, c *Cache, node string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for !c.Synced(node) {
		select {
		case <-ctx.Done():
			t.Fatalf("pods of %s not listed within 10s", node)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestAFollowedNodeAnswersFromMemory(t *testing.T) {
	c := startCache(t, podMeta("apps", "web-1"))
	if _, found := c.Locate(t.Context(), "apps", "web-1", "node-a"); found {
		t.Fatal("a node that is not followed answered")
	}
	c.SetFollowed("node-a", true)
	expectListed(t, c, "node-a")
	if where, found := c.Locate(t.Context(), "apps", "web-1", "node-a"); !found || where != "node-a" {
		t.Fatalf("got %q %v, want node-a", where, found)
	}
	if _, found := c.Locate(t.Context(), "apps", "web-2", "node-a"); found {
		t.Fatal("a pod nobody holds was found")
	}
	c.SetFollowed("node-a", false)
	if _, found := c.Locate(t.Context(), "apps", "web-1", "node-a"); found || len(c.Followed()) != 0 {
		t.Fatal("a node no longer marked still answers")
	}
}

func TestANodeMarkedBeforeStartIsFollowedAtStart(t *testing.T) {
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := New(metadatafake.NewSimpleMetadataClient(scheme, podMeta("apps", "web-1")))
	c.SetFollowed("node-a", true)
	c.SetFollowed("node-b", true)
	c.SetFollowed("node-b", false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	expectListed(t, c, "node-a")
	if got := c.Followed(); len(got) != 1 || got[0] != "node-a" {
		t.Fatalf("followed %v, want [node-a]", got)
	}
}

func TestAPodIsFoundOnAnotherFollowedNode(t *testing.T) {
	// With the fake every informer sees every pod, so the agent's own node
	// is left unfollowed: the pod is then found on the other node.
	c := startCache(t, podMeta("apps", "web-1"))
	c.SetFollowed("node-b", true)
	expectListed(t, c, "node-b")
	if where, found := c.Locate(t.Context(), "apps", "web-1", "node-a"); !found || where != "node-b" {
		t.Fatalf("got %q %v, want node-b", where, found)
	}
}

func TestLocateWaitsForTheFirstListOfItsOwnNode(t *testing.T) {
	c := startCache(t, podMeta("apps", "web-1"))
	// An eviction right after the mark: the node's informer has only just
	// started, and the lookup waits for its list (milliseconds against the
	// fake) instead of sending the caller to the API.
	c.SetFollowed("node-a", true)
	if where, found := c.Locate(t.Context(), "apps", "web-1", "node-a"); !found || where != "node-a" {
		t.Fatalf("got %q %v, want node-a once its first list is in", where, found)
	}
}

func TestLocateWaitsOnlyBrieflyForAFirstList(t *testing.T) {
	c := startCache(t)
	// The informer of a node is running but cannot have listed yet only
	// for an instant; a deadline already spent returns at once.
	c.SetFollowed("node-a", true)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	c.Locate(ctx, "apps", "web-1", "node-a")
	if d := time.Since(start); d > maxSyncWait {
		t.Fatalf("Locate with a spent context took %v", d)
	}
}

func TestTrimKeepsOnlyWhatTheKeyAndWatchNeed(t *testing.T) {
	got, err := trim(podMeta("apps", "web-1"))
	if err != nil {
		t.Fatal(err)
	}
	m := got.(*metav1.PartialObjectMetadata)
	if m.Namespace != "apps" || m.Name != "web-1" || m.UID != "uid-web-1" || m.ResourceVersion != "7" {
		t.Fatalf("identity lost: %+v", m.ObjectMeta)
	}
	if m.Labels != nil || m.Annotations != nil || m.ManagedFields != nil {
		t.Fatalf("kept more than needed: %+v", m.ObjectMeta)
	}
	if other, _ := trim("tombstone"); other != "tombstone" {
		t.Fatal("a non-metadata object was changed")
	}
}
