package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

// bindLatency is what the cluster phase measures: the round trip of a
// Binding POST to the real kube-apiserver, without termgate's webhook, and
// with `termgate webhook` running as deployed (its own service account's
// token, the shipped configurations): onto an on-demand node, answered from
// memory, and onto a Spot node, which the webhook re-reads first.
type bindLatency struct {
	WithoutP50Ms, OnDemandP50Ms, SpotP50Ms float64
}

// benchPods is how many binds each phase times.
const benchPods = 300

// measureAPIServer starts a local cluster, times binds without the webhook,
// then with it.
func measureAPIServer(ctx context.Context) (bindLatency, error) {
	nodes := []cluster.NodeSpec{
		{Name: "node-0", Zone: "us-central1-a", MachineType: "e2-standard-4"},
		{Name: "ondemand-1", Zone: "us-central1-b", MachineType: "e2-standard-4"},
		{Name: "spot-2", Zone: "us-central1-c", MachineType: "e2-standard-4", Spot: true},
	}
	c, err := cluster.Start(ctx, cluster.Options{Nodes: nodes})
	if err != nil {
		return bindLatency{}, fmt.Errorf("start local cluster: %w", err)
	}
	defer c.Stop()
	ns, err := benchNamespace(ctx, c.Client)
	if err != nil {
		return bindLatency{}, err
	}
	without, err := timeBinds(ctx, c.Client, ns, "without", "ondemand-1")
	if err != nil {
		return bindLatency{}, err
	}
	r := bindLatency{WithoutP50Ms: ms(median(without))}
	if r.OnDemandP50Ms, r.SpotP50Ms, err = measureDeployed(ctx, c, ns); err != nil {
		return bindLatency{}, err
	}
	return r, nil
}

// measureDeployed starts `termgate webhook` as `make demo` runs it and
// times binds onto an on-demand and a Spot node.
func measureDeployed(ctx context.Context, c *cluster.Cluster, ns string) (onDemand, spot float64, err error) {
	bin, err := localrun.Build(ctx, c.Dir)
	if err != nil {
		return 0, 0, err
	}
	w, err := asdeployed.StartWebhook(ctx, c, bin)
	if err != nil {
		return 0, 0, err
	}
	defer w.Stop()
	// node-0 marked for real, so that a refused bind onto it shows the API
	// server calls the new webhook.
	now := time.Now()
	mark := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted, NoticeTime: now, Deadline: now.Add(time.Hour), BootID: "bench"}
	if err := kit.MarkNode(ctx, c.Client, "node-0", mark); err != nil {
		return 0, 0, err
	}
	if err := waitWebhookActive(ctx, c.Client, ns); err != nil {
		return 0, 0, err
	}
	onDemandLat, err := timeBinds(ctx, c.Client, ns, "deployed-on-demand", "ondemand-1")
	if err != nil {
		return 0, 0, err
	}
	spotLat, err := timeBinds(ctx, c.Client, ns, "deployed-spot", "spot-2")
	if err != nil {
		return 0, 0, err
	}
	return ms(median(onDemandLat)), ms(median(spotLat)), nil
}

func benchNamespace(ctx context.Context, client kubernetes.Interface) (string, error) {
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-"}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace: %w", err)
	}
	if err := kit.WaitDefaultServiceAccount(ctx, client, ns.Name); err != nil {
		return "", err
	}
	return ns.Name, nil
}

// unscheduledPod is left alone by the scheduler (no such scheduler), so the
// bench is the only binder.
func unscheduledPod(ns, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			SchedulerName: "termgate-bench",
			Containers:    []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
}

func bind(ctx context.Context, client kubernetes.Interface, ns, pod, node string) error {
	return client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
}

func timeBinds(ctx context.Context, client kubernetes.Interface, ns, phase, node string) ([]time.Duration, error) {
	for i := range benchPods {
		if _, err := client.CoreV1().Pods(ns).Create(ctx, unscheduledPod(ns, fmt.Sprintf("%s-%d", phase, i)), metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create pod: %w", err)
		}
	}
	lat := make([]time.Duration, 0, benchPods)
	for i := range benchPods {
		start := time.Now()
		if err := bind(ctx, client, ns, fmt.Sprintf("%s-%d", phase, i), node); err != nil {
			return nil, fmt.Errorf("bind %s-%d: %w", phase, i, err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}

// waitWebhookActive binds probe pods onto node-0, which the child's cache
// marks terminating, until the API server refuses one.
func waitWebhookActive(ctx context.Context, client kubernetes.Interface, ns string) error {
	i := 0
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		name := fmt.Sprintf("probe-%d", i)
		i++
		if _, err := client.CoreV1().Pods(ns).Create(ctx, unscheduledPod(ns, name), metav1.CreateOptions{}); err != nil {
			return false, err
		}
		err := bind(ctx, client, ns, name, "node-0")
		return err != nil && strings.Contains(err.Error(), "is terminating"), nil
	})
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
