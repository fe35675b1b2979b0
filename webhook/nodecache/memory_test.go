package nodecache

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/kit"
)

// Sizes of the memory benchmark: the scale target.
const (
	memCachedNodes = 5000
	memMarkedNodes = 500 // terminating among them, with termgate's mark
)

// BenchmarkMemoryPerCachedNode reports the heap the node cache keeps per
// node of the cluster (kib/cached-node), as the webhook builds it: New with
// the default at-risk selectors' labels, the change callback registered,
// fed through the informer and its transform by an API that serves GKE node
// metadata as the API server does (every field, managedFields included).
// Every node is a Spot node, so each keeps a label, and one in ten carries
// a terminating mark: the worst case of what the cache keeps.
func BenchmarkMemoryPerCachedNode(b *testing.B) {
	api := newNodeAPI(b, memCachedNodes, memMarkedNodes)
	sels, err := ParseSelectors(DefaultAtRisk)
	if err != nil {
		b.Fatal(err)
	}
	keep := SelectorLabelKeys(sels)
	var perNode float64
	for range b.N {
		ctx, cancel := context.WithCancel(context.Background())
		client, err := metadata.NewForConfig(&rest.Config{Host: api.URL, QPS: -1})
		if err != nil {
			b.Fatal(err)
		}
		before := kit.LiveHeap()
		c := New(client, keep)
		var terminating atomic.Int64
		allReported := make(chan struct{})
		c.OnTerminatingChange(func(_ string, t bool) {
			if t && terminating.Add(1) == memMarkedNodes {
				close(allReported)
			}
		})
		if err := c.Start(ctx); err != nil {
			b.Fatal(err)
		}
		// The callback runs apart from the store: the first sync is
		// complete once it has seen every mark.
		select {
		case <-allReported:
		case <-b.Context().Done():
			b.Fatalf("%d of %d terminating nodes reported", terminating.Load(), memMarkedNodes)
		}
		after := kit.LiveHeap()
		if got := len(c.store.ListKeys()); got != memCachedNodes {
			b.Fatalf("cache holds %d nodes, want %d", got, memCachedNodes)
		}
		if n, ok := c.Lookup(ctx, nodeName(0)); !ok || !n.Terminating() || n.Labels["cloud.google.com/gke-spot"] != "true" {
			b.Fatalf("node %s reads %+v (known %v), want terminating and Spot", nodeName(0), n, ok)
		}
		perNode = float64(after-before) / memCachedNodes / 1024
		runtime.KeepAlive(c)
		cancel()
	}
	b.ReportMetric(perNode, "kib/cached-node")
}

func nodeName(i int) string { return fmt.Sprintf("gke-prod-spot-pool-%d-4f8a2c1e-%04d", i%4, i) }

// newNodeAPI serves n nodes' metadata, the first marked of them
// terminating, to metadata lists and watch lists (the informer's first
// sync uses either), as JSON encoded once up front.
func newNodeAPI(b *testing.B, n, marked int) *httptest.Server {
	b.Helper()
	items := make([]json.RawMessage, n)
	for i := range items {
		raw, err := json.Marshal(gkeNode(i, i < marked))
		if err != nil {
			b.Fatal(err)
		}
		items[i] = raw
	}
	const listRV = "900000"
	list, err := json.Marshal(map[string]any{
		"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
		"metadata": map[string]any{"resourceVersion": listRV},
		"items":    items,
	})
	if err != nil {
		b.Fatal(err)
	}
	bookmark, err := json.Marshal(map[string]any{"type": "BOOKMARK", "object": map[string]any{
		"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
		"metadata": map[string]any{"resourceVersion": listRV, "annotations": map[string]string{metav1.InitialEventsAnnotationKey: "true"}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/nodes" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		if q.Get("watch") != "true" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(list)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if q.Get("sendInitialEvents") == "true" {
			for _, item := range items {
				_, _ = fmt.Fprintf(w, `{"type":"ADDED","object":%s}`+"\n", item)
			}
			_, _ = w.Write(append(bookmark, '\n'))
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	b.Cleanup(srv.Close)
	return srv
}

// gkeNode is node i's metadata as a GKE API server sends it in a metadata
// list: the labels, annotations and managedFields of a Spot node.
func gkeNode(i int, marked bool) *metav1.PartialObjectMetadata {
	name := nodeName(i)
	zone := []string{"us-central1-a", "us-central1-b", "us-central1-f"}[i%3]
	created := metav1.NewTime(time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second))
	labels := map[string]string{
		"beta.kubernetes.io/arch":                      "amd64",
		"beta.kubernetes.io/instance-type":             "e2-standard-8",
		"beta.kubernetes.io/os":                        "linux",
		"cloud.google.com/gke-boot-disk":               "pd-balanced",
		"cloud.google.com/gke-container-runtime":       "containerd",
		"cloud.google.com/gke-cpu-scaling-level":       "8",
		"cloud.google.com/gke-logging-variant":         "DEFAULT",
		"cloud.google.com/gke-max-pods-per-node":       "110",
		"cloud.google.com/gke-memory-gb-scaling-level": "32",
		"cloud.google.com/gke-nodepool":                fmt.Sprintf("spot-pool-%d", i%4),
		"cloud.google.com/gke-os-distribution":         "cos",
		"cloud.google.com/gke-provisioning":            "spot",
		"cloud.google.com/gke-spot":                    "true",
		"cloud.google.com/gke-stack-type":              "IPV4",
		"cloud.google.com/machine-family":              "e2",
		"cloud.google.com/private-node":                "false",
		"failure-domain.beta.kubernetes.io/region":     "us-central1",
		"failure-domain.beta.kubernetes.io/zone":       zone,
		"kubernetes.io/arch":                           "amd64",
		"kubernetes.io/hostname":                       name,
		"kubernetes.io/os":                             "linux",
		"node.kubernetes.io/instance-type":             "e2-standard-8",
		"topology.gke.io/zone":                         zone,
		"topology.kubernetes.io/region":                "us-central1",
		"topology.kubernetes.io/zone":                  zone,
	}
	annotations := map[string]string{
		"container.googleapis.com/instance_id":                   fmt.Sprintf("%019d", 4811234567890123456+int64(i)),
		"csi.volume.kubernetes.io/nodeid":                        fmt.Sprintf(`{"pd.csi.storage.gke.io":"projects/acme-prod/zones/%s/instances/%s"}`, zone, name),
		"node.alpha.kubernetes.io/ttl":                           "0",
		"node.gke.io/last-applied-node-labels":                   "cloud.google.com/gke-boot-disk=pd-balanced,cloud.google.com/gke-container-runtime=containerd,cloud.google.com/gke-nodepool=spot-pool,cloud.google.com/gke-os-distribution=cos,cloud.google.com/gke-provisioning=spot,cloud.google.com/gke-spot=true,cloud.google.com/machine-family=e2",
		"node.gke.io/last-applied-node-taints":                   "",
		"volumes.kubernetes.io/controller-managed-attach-detach": "true",
	}
	managed := []metav1.ManagedFieldsEntry{
		managedEntry("kubelet", metav1.ManagedFieldsOperationUpdate, "", created,
			`{"f:metadata":{"f:annotations":{".":{},"f:container.googleapis.com/instance_id":{},"f:volumes.kubernetes.io/controller-managed-attach-detach":{}},"f:labels":{".":{},"f:beta.kubernetes.io/arch":{},"f:beta.kubernetes.io/os":{},"f:cloud.google.com/gke-boot-disk":{},"f:cloud.google.com/gke-container-runtime":{},"f:cloud.google.com/gke-nodepool":{},"f:cloud.google.com/gke-os-distribution":{},"f:cloud.google.com/gke-provisioning":{},"f:cloud.google.com/gke-spot":{},"f:cloud.google.com/machine-family":{},"f:kubernetes.io/arch":{},"f:kubernetes.io/hostname":{},"f:kubernetes.io/os":{},"f:node.kubernetes.io/instance-type":{},"f:topology.kubernetes.io/region":{},"f:topology.kubernetes.io/zone":{}}},"f:spec":{"f:providerID":{}}}`),
		managedEntry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "", created,
			`{"f:metadata":{"f:annotations":{"f:node.alpha.kubernetes.io/ttl":{}}},"f:spec":{"f:podCIDR":{},"f:podCIDRs":{".":{},"v:\"10.52.3.0/24\"":{}}}}`),
		managedEntry("gcp-controller-manager", metav1.ManagedFieldsOperationUpdate, "", created,
			`{"f:metadata":{"f:annotations":{"f:node.gke.io/last-applied-node-labels":{},"f:node.gke.io/last-applied-node-taints":{}}}}`),
		managedEntry("kubelet", metav1.ManagedFieldsOperationUpdate, "status", created,
			`{"f:metadata":{"f:annotations":{"f:csi.volume.kubernetes.io/nodeid":{}}},"f:status":{"f:allocatable":{"f:cpu":{},"f:ephemeral-storage":{},"f:memory":{}},"f:capacity":{"f:ephemeral-storage":{}},"f:conditions":{"k:{\"type\":\"DiskPressure\"}":{"f:lastHeartbeatTime":{}},"k:{\"type\":\"MemoryPressure\"}":{"f:lastHeartbeatTime":{}},"k:{\"type\":\"PIDPressure\"}":{"f:lastHeartbeatTime":{}},"k:{\"type\":\"Ready\"}":{"f:lastHeartbeatTime":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{}}},"f:images":{},"f:nodeInfo":{"f:bootID":{},"f:kernelVersion":{},"f:osImage":{}}}}`),
		managedEntry("node-problem-detector", metav1.ManagedFieldsOperationUpdate, "status", created,
			`{"f:status":{"f:conditions":{"k:{\"type\":\"CorruptDockerOverlay2\"}":{".":{},"f:lastHeartbeatTime":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}},"k:{\"type\":\"FrequentContainerdRestart\"}":{".":{},"f:lastHeartbeatTime":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}},"k:{\"type\":\"KernelDeadlock\"}":{".":{},"f:lastHeartbeatTime":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}},"k:{\"type\":\"ReadonlyFilesystem\"}":{".":{},"f:lastHeartbeatTime":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}}}}}`),
	}
	if marked {
		deadline := time.Date(2026, 12, 3, 16, 0, 30, 0, time.UTC)
		mark := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
			NoticeTime: deadline.Add(-30 * time.Second), Deadline: deadline,
			BootID: fmt.Sprintf("0f6c2b7e-3d4a-4c1b-9e8f-%012x", i), Source: "metadata-server"}
		for k, v := range mark.Annotations() {
			annotations[k] = v
		}
		managed = append(managed, managedEntry(nodemark.FieldManager, metav1.ManagedFieldsOperationApply, "", created,
			`{"f:metadata":{"f:annotations":{"f:termgate.dev/boot-id":{},"f:termgate.dev/deadline":{},"f:termgate.dev/notice-time":{},"f:termgate.dev/reason":{},"f:termgate.dev/source":{},"f:termgate.dev/state":{}}}}`))
	}
	return &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "PartialObjectMetadata"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              name,
			UID:               types.UID(fmt.Sprintf("5b1f3c2a-8d4e-4f6a-b7c9-%012x", i)),
			ResourceVersion:   fmt.Sprintf("%d", 812345+i),
			CreationTimestamp: created,
			Labels:            labels,
			Annotations:       annotations,
			ManagedFields:     managed,
		},
	}
}

func managedEntry(manager string, op metav1.ManagedFieldsOperationType, subresource string, at metav1.Time, fields string) metav1.ManagedFieldsEntry {
	return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, APIVersion: "v1", Time: &at,
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}, Subresource: subresource}
}
