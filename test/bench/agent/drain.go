package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
)

// podSet is the 100 regular and 10 kube-system pods of one trial on the
// spot node.
type podSet struct {
	ns   string
	pods []*corev1.Pod
}

// ours tells this trial's pods from the others on the node (the stand-in
// agent pod, a previous trial's leftovers).
func (s *podSet) ours(p *corev1.Pod) bool {
	return p.Namespace == s.ns || (p.Namespace == "kube-system" && strings.HasPrefix(p.Name, s.ns+"-sys-"))
}

func (s *podSet) regular(p *corev1.Pod) bool { return p.Namespace == s.ns }

// createPods puts 100 regular pods (own namespace) and 10 kube-system pods
// on the spot node and waits until all run. remove deletes whatever is left.
func (b *bench) createPods(ctx context.Context) (s *podSet, remove func(), err error) {
	client := b.c.Client
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-"}}, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("create namespace: %w", err)
	}
	s = &podSet{ns: ns.Name}
	remove = func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.CoreV1().Namespaces().Delete(dctx, ns.Name, metav1.DeleteOptions{})
		for i := range 10 {
			_ = client.CoreV1().Pods("kube-system").Delete(dctx, fmt.Sprintf("%s-sys-%d", ns.Name, i), metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		}
	}
	defer func() {
		if err != nil {
			remove()
		}
	}()
	if err := kit.WaitDefaultServiceAccount(ctx, client, ns.Name); err != nil {
		return nil, nil, err
	}
	onNode := kit.OnNode(spotNode)
	short := func(p *corev1.Pod) { p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1) }
	var want []*corev1.Pod
	for i := range 100 {
		want = append(want, kit.Pod(ns.Name, "web-"+strconv.Itoa(i), onNode, short))
	}
	for i := range 10 {
		want = append(want, kit.Pod("kube-system", fmt.Sprintf("%s-sys-%d", ns.Name, i), onNode, short))
	}
	if s.pods, err = createAll(ctx, client, want, 8); err != nil {
		return nil, nil, err
	}
	if err := waitRunning(ctx, client, spotNode, s.ours, len(want)); err != nil {
		return nil, nil, err
	}
	return s, remove, nil
}

// createAll creates pods with a few requests in flight; setting up is not
// what is measured.
func createAll(ctx context.Context, client kubernetes.Interface, pods []*corev1.Pod, inFlight int) ([]*corev1.Pod, error) {
	created := make([]*corev1.Pod, len(pods))
	errs := make([]error, len(pods))
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for i, p := range pods {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			created[i], errs[i] = client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
			if errs[i] != nil {
				errs[i] = fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, errs[i])
			}
		})
	}
	wg.Wait()
	return created, errors.Join(errs...)
}

// waitRunning waits until n of the node's pods that ours accepts run. kwok
// starts a pod within a second; a minute means something is broken.
func waitRunning(ctx context.Context, client kubernetes.Interface, node string, ours func(*corev1.Pod) bool, n int) error {
	sel := metav1.ListOptions{FieldSelector: "spec.nodeName=" + node}
	err := kit.Poll(ctx, 60*time.Second, func(ctx context.Context) (bool, string, error) {
		list, err := client.CoreV1().Pods("").List(ctx, sel)
		if err != nil {
			return false, "", err
		}
		running := 0
		for i := range list.Items {
			if ours(&list.Items[i]) && list.Items[i].Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == n, fmt.Sprintf("%d of %d running", running, n), nil
	})
	if err != nil {
		return fmt.Errorf("pods running on %s: %w", node, err)
	}
	return nil
}

// follow reads pod events until every pod of the set that counted accepts
// is being deleted (issuedMS after start) and every pod of the set is gone
// (goneMS), or budget passes.
func follow(ctx context.Context, w watch.Interface, start time.Time, budget time.Duration, s *podSet, counted func(*corev1.Pod) bool) (issuedMS, goneMS float64, err error) {
	present, terminating := map[string]bool{}, map[string]bool{}
	want := 0
	for _, pod := range s.pods {
		present[pod.Namespace+"/"+pod.Name] = true
		if counted(pod) {
			want++
		}
	}
	deadline := time.After(time.Until(start.Add(budget)))
	for issuedMS == 0 || goneMS == 0 {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return 0, 0, errors.New("pod watch closed")
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			if !isPod || !s.ours(pod) {
				continue
			}
			key := pod.Namespace + "/" + pod.Name
			if ev.Type == watch.Deleted {
				delete(present, key)
			}
			if (pod.DeletionTimestamp != nil || ev.Type == watch.Deleted) && counted(pod) {
				terminating[key] = true
			}
			if issuedMS == 0 && len(terminating) == want {
				issuedMS = msSince(start)
			}
			if goneMS == 0 && len(present) == 0 {
				goneMS = msSince(start)
			}
		case <-deadline:
			return 0, 0, fmt.Errorf("incomplete after %s: %d of %d being deleted, %d of %d still present", budget, len(terminating), want, len(present), len(s.pods))
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
	return issuedMS, goneMS, nil
}

func watchNodePods(ctx context.Context, client kubernetes.Interface, node string) (watch.Interface, error) {
	w, err := asdeployed.ResumingWatch(ctx,
		func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := client.CoreV1().Pods("").List(ctx, o)
			if err != nil {
				return "", err
			}
			return l.ResourceVersion, nil
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Pods("").Watch(ctx, o)
		}, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, fmt.Errorf("watch pods on %s: %w", node, err)
	}
	return w, nil
}

// drainBudget is the 30 s notice plus margin: a drain not done by then has
// missed its deadline.
const drainBudget = 40 * time.Second

// drain110 preempts the spot node with 110 pods on it, times the agent's
// drain, then restores the node.
func (b *bench) drain110(ctx context.Context, md *gcefake.Server) (issuedMS, goneMS float64, err error) {
	s, remove, err := b.createPods(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer remove()
	w, err := watchNodePods(ctx, b.c.Client, spotNode)
	if err != nil {
		return 0, 0, err
	}
	defer w.Stop()
	flip := time.Now()
	md.SetPreempted(true)
	issuedMS, goneMS, err = follow(ctx, w, flip, drainBudget, s, s.regular)
	md.SetPreempted(false)
	if err != nil {
		return 0, 0, err
	}
	return issuedMS, goneMS, b.awaitUnmarked(ctx, spotNode)
}

// awaitUnmarked waits for the agent to restore the node after the notice
// was withdrawn, so the next trial starts from an unmarked node.
func (b *bench) awaitUnmarked(ctx context.Context, node string) error {
	return kit.Poll(ctx, 10*time.Second, func(ctx context.Context) (bool, string, error) {
		n, err := b.c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		_, marked, _ := nodemark.Read(n.Annotations)
		return !marked, "still marked", nil
	})
}

// The agent's client settings (cmd/termgate/app/agent.go defaults, not set
// by the DaemonSet) and drain concurrency (drain.DefaultConcurrency). The
// floor client uses the same so that only the agent's logic differs.
const (
	agentQPS         = 100
	agentBurst       = 200
	agentConcurrency = 32
)

// floor evicts the 110 pods of a fresh set with a bare client: the agent's
// concurrency and client limits, the same eviction body (UID precondition),
// admin credentials, its own connection. The time runs from the first
// request until the watch has seen every pod being deleted, the same end
// point as drain110's.
func (b *bench) floor(ctx context.Context) (float64, error) {
	s, remove, err := b.createPods(ctx)
	if err != nil {
		return 0, err
	}
	defer remove()
	cfg := rest.CopyConfig(b.c.Config)
	cfg.QPS, cfg.Burst = agentQPS, agentBurst
	// A custom dialer keeps client-go from sharing the bench's cached
	// transport: the floor client gets its own connection, as the agent has.
	cfg.Dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return 0, fmt.Errorf("floor client: %w", err)
	}
	w, err := watchNodePods(ctx, b.c.Client, spotNode)
	if err != nil {
		return 0, err
	}
	defer w.Stop()
	start := time.Now()
	evicted := make(chan error, 1)
	go func() { evicted <- evictAll(ctx, client, s.pods) }()
	// Timed like the agent's drains: until the 100 regular pods are being
	// deleted (the agent evicts kube-system pods in a later wave). All 110
	// are evicted, regular first, so the load is the same.
	issuedMS, _, err := follow(ctx, w, start, drainBudget, s, s.regular)
	if evErr := <-evicted; evErr != nil {
		return 0, evErr
	}
	return issuedMS, err
}

// evictAll evicts every pod with agentConcurrency requests in flight.
func evictAll(ctx context.Context, client kubernetes.Interface, pods []*corev1.Pod) error {
	sem := make(chan struct{}, agentConcurrency)
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			uid := p.UID
			err := client.CoreV1().Pods(p.Namespace).EvictV1(ctx, &policyv1.Eviction{
				ObjectMeta:    metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
				DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
			})
			if err != nil && !apierrors.IsNotFound(err) {
				errs[i] = fmt.Errorf("evict %s/%s: %w", p.Namespace, p.Name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
