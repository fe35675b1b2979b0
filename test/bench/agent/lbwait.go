package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/test/kit"
)

// The bench cloud's load-balancer calls take lbOperation; the agents of the
// load-balancer trials size --lb-sync-window to it, as a user sizes it to
// the cloud's operations.
const (
	lbOperation  = 500 * time.Millisecond
	lbSyncWindow = 3 * time.Second
)

// lbWaitTrials measures, as deployed, how long a preemption holds the
// backends of n Services of type LoadBalancer on the spot node (one backend
// each): from the metadata flip until the last backend is being deleted
// (each goes once its own Service's load balancer has let the node go).
// The real service controller updates the n load balancers one after the
// other, lbOperation each, then the agent waits its margin.
func (b *bench) lbWaitTrials(ctx context.Context, n, trials int) ([]float64, error) {
	client := b.c.Client
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-lb-"}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	defer func() {
		_ = client.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), ns.Name, metav1.DeleteOptions{})
	}()
	if err := kit.WaitDefaultServiceAccount(ctx, client, ns.Name); err != nil {
		return nil, err
	}
	var services []string
	for i := range n {
		name := fmt.Sprintf("lb-%d", i)
		d := kit.Deployment(ns.Name, name, 1, kit.NodeSelector(map[string]string{"kubernetes.io/hostname": spotNode}),
			func(p *corev1.Pod) { p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1) })
		if _, err := client.AppsV1().Deployments(ns.Name).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: name}, Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Port: 8080, TargetPort: intstr.FromInt32(8080)}},
		}}
		if _, err := client.CoreV1().Services(ns.Name).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create Service %s: %w", name, err)
		}
		services = append(services, ns.Name+"/"+name)
	}
	if err := b.registration.restore(ctx); err != nil {
		return nil, err
	}
	agent, err := b.startAgentWith(ctx, spotNode, b.md, b.spotID, "--lb-sync-window="+lbSyncWindow.String())
	if err != nil {
		return nil, err
	}
	defer agent.Stop()
	var ms []float64
	for i := range trials {
		if err := b.lbServing(ctx, ns.Name, services); err != nil {
			return nil, fmt.Errorf("trial %d: %w", i+1, err)
		}
		w, err := watchNodePods(ctx, client, spotNode)
		if err != nil {
			return nil, err
		}
		flip := time.Now()
		b.md.SetPreempted(true)
		held, err := allDeleting(ctx, w, ns.Name, n, drainBudget)
		w.Stop()
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w (agent log %s)", i+1, err, agent.LogPath())
		}
		ms = append(ms, float64(held.Sub(flip).Microseconds())/1000)
		b.md.SetPreempted(false)
	}
	return ms, nil
}

// lbServing waits until every backend runs on the spot node, every load
// balancer holds the node, and the cloud has been idle for the agent's
// sync window.
func (b *bench) lbServing(ctx context.Context, ns string, services []string) error {
	lbs := b.c.LoadBalancers()
	return kit.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, string, error) {
		pods, err := b.c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		running := 0
		for _, p := range pods.Items {
			if p.Spec.NodeName == spotNode && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				running++
			}
		}
		s, err := lbs.State(ctx)
		if err != nil {
			return false, "", err
		}
		holding, last := 0, time.Time{}
		for _, svc := range services {
			if slices.Contains(s.LoadBalancers[svc].Hosts, spotNode) {
				holding++
			}
		}
		for _, c := range s.Calls {
			if c.Ended.After(last) {
				last = c.Ended
			}
		}
		quiet := len(s.InFlight) == 0 && time.Since(last) > lbSyncWindow+time.Second
		return running == len(services) && holding == len(services) && quiet,
			fmt.Sprintf("%d backends running, %d load balancers hold the node, cloud quiet %v", running, holding, quiet), nil
	})
}

// allDeleting reads pod events until n pods of ns are being deleted.
func allDeleting(ctx context.Context, w watch.Interface, ns string, n int, budget time.Duration) (time.Time, error) {
	timeout := time.After(budget)
	deleting := map[string]bool{}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return time.Time{}, errors.New("pod watch closed")
			}
			if p, isPod := ev.Object.(*corev1.Pod); isPod && p.Namespace == ns && (p.DeletionTimestamp != nil || ev.Type == watch.Deleted) {
				deleting[p.Name] = true
				if len(deleting) == n {
					return time.Now(), nil
				}
			}
		case <-timeout:
			return time.Time{}, fmt.Errorf("%d of %d backends evicted within %s", len(deleting), n, budget)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}
