package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
)

// bindLatency is what the cluster phase measures: the round trip of a
// Binding POST to the real kube-apiserver, without and with termgate's bind
// webhook registered (the shipped registration, pointed at the child).
type bindLatency struct {
	WithoutP50Ms, WithP50Ms float64
	Ratio                   float64
}

// benchPods is how many binds each phase times.
const benchPods = 300

// measureAPIServer starts a local cluster, times binds without the webhook,
// registers it, and times them again.
func measureAPIServer(ctx context.Context, addr string, caPEM []byte) (bindLatency, error) {
	// node-0 is marked terminating in the child's cache (every tenth node
	// is); ondemand nodes are unknown to it, so binds onto them are allowed.
	nodes := []cluster.NodeSpec{{Name: "node-0", Zone: "us-central1-a", MachineType: "e2-standard-4"}, {Name: "ondemand-1", Zone: "us-central1-b", MachineType: "e2-standard-4"}}
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
	if err := registerBindWebhook(ctx, c.Client, addr, caPEM); err != nil {
		return bindLatency{}, err
	}
	if err := waitWebhookActive(ctx, c.Client, ns); err != nil {
		return bindLatency{}, err
	}
	with, err := timeBinds(ctx, c.Client, ns, "with", "ondemand-1")
	if err != nil {
		return bindLatency{}, err
	}
	r := bindLatency{WithoutP50Ms: ms(median(without)), WithP50Ms: ms(median(with))}
	if r.WithoutP50Ms > 0 {
		r.Ratio = r.WithP50Ms / r.WithoutP50Ms
	}
	return r, nil
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

// registerBindWebhook installs the shipped bind webhook only, by URL.
func registerBindWebhook(ctx context.Context, client kubernetes.Interface, addr string, caPEM []byte) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(root, "manifests", "base", "webhook-configurations.yaml"))
	if err != nil {
		return err
	}
	var v admissionregistrationv1.ValidatingWebhookConfiguration
	if err := yaml.Unmarshal([]byte(strings.Split(string(data), "\n---\n")[0]), &v); err != nil {
		return fmt.Errorf("shipped validating configuration: %w", err)
	}
	v.Webhooks = slices.DeleteFunc(v.Webhooks, func(w admissionregistrationv1.ValidatingWebhook) bool { return w.Name != "bind.termgate.dev" })
	if len(v.Webhooks) != 1 {
		return fmt.Errorf("shipped configuration has no bind.termgate.dev webhook")
	}
	url := "https://" + addr + *v.Webhooks[0].ClientConfig.Service.Path
	v.Webhooks[0].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM}
	_, err = client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &v, metav1.CreateOptions{})
	return err
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
