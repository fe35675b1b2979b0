package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

// workload110 is the mixed node of the drain test: what a busy Spot node
// carries, with every special case the policy names.
type workload110 struct {
	ns, ksName string
	pool       map[string]string
}

const (
	groupRegular  = "regular"
	groupSystem   = "system"
	groupKeep     = "keep"
	groupDelayed  = "delayed"
	groupMirror   = "mirror"
	groupFinished = "finished"
)

// create puts 110 pods on node and returns them grouped by what the policy
// must do with them.
func (w *workload110) create(t *testing.T, node string) {
	t.Helper()
	ctx := context.Background()
	c := env.Client
	w.ns = testenv.Namespace(t, c)
	w.ksName = "ks-" + rand.String(5)
	onPool := kit.NodeSelector(w.pool)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.AppsV1().Deployments(w.ns).Create(ctx, kit.Deployment(w.ns, "web-pdb", 40, onPool), metav1.CreateOptions{}))
	must(c.PolicyV1().PodDisruptionBudgets(w.ns).Create(ctx, kit.PDB(w.ns, "web-pdb", 5), metav1.CreateOptions{}))
	must(c.AppsV1().Deployments(w.ns).Create(ctx, kit.Deployment(w.ns, "web", 53, onPool), metav1.CreateOptions{}))
	must(c.AppsV1().Deployments("kube-system").Create(ctx, kit.Deployment("kube-system", w.ksName, 10, onPool), metav1.CreateOptions{}))
	t.Cleanup(func() {
		_ = c.AppsV1().Deployments("kube-system").Delete(context.Background(), w.ksName, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	})
	onNode := kit.NodeSelector(map[string]string{"kubernetes.io/hostname": node})
	must(c.AppsV1().DaemonSets(w.ns).Create(ctx, kit.DaemonSet(w.ns, "node-agent", onNode), metav1.CreateOptions{}))
	must(c.AppsV1().DaemonSets(w.ns).Create(ctx, kit.DaemonSet(w.ns, "log-shipper", onNode,
		kit.Tolerating(corev1.Toleration{Operator: corev1.TolerationOpExists})), metav1.CreateOptions{}))
	must(c.CoreV1().Pods(w.ns).Create(ctx, kit.Pod(w.ns, "tolerates-10s", kit.OnNode(node), kit.Tolerating(corev1.Toleration{
		Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](10),
	})), metav1.CreateOptions{}))
	must(c.CoreV1().Pods(w.ns).Create(ctx, kit.Pod(w.ns, "mirror", kit.OnNode(node), func(p *corev1.Pod) {
		p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "static-hash"}
	}), metav1.CreateOptions{}))
	must(c.CoreV1().Pods(w.ns).Create(ctx, kit.Pod(w.ns, "finalizer", kit.OnNode(node), func(p *corev1.Pod) {
		p.Finalizers = []string{"example.com/hold"}
	}), metav1.CreateOptions{}))
	t.Cleanup(func() { removeFinalizers(w.ns, "finalizer") })
	must(c.CoreV1().Pods(w.ns).Create(ctx, kit.Pod(w.ns, "slow-stop", kit.OnNode(node), func(p *corev1.Pod) {
		p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](3600)
	}), metav1.CreateOptions{}))
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: "done"},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "done"}},
			Spec: corev1.PodSpec{
				NodeName: node, RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{Name: "job", Image: "registry.k8s.io/pause:3.10"}},
			},
		}},
	}
	must(c.BatchV1().Jobs(w.ns).Create(ctx, job, metav1.CreateOptions{}))
}

func removeFinalizers(ns, name string) {
	_, _ = env.Client.CoreV1().Pods(ns).Patch(context.Background(), name, "application/merge-patch+json",
		[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
}

// group says what the policy must do with a pod of the workload.
func (w *workload110) group(p *corev1.Pod) string {
	switch {
	case p.Name == "mirror":
		return groupMirror
	case p.Labels["app"] == "done":
		return groupFinished
	case p.Name == "tolerates-10s":
		return groupDelayed
	case p.Labels["app"] == "log-shipper":
		return groupKeep
	case p.Namespace == "kube-system" || p.Labels["app"] == "node-agent":
		return groupSystem
	}
	return groupRegular
}

// podLog records, from a separate watch, when each pod of the node first had
// a deletionTimestamp and when it disappeared.
type podLog struct {
	mu         sync.Mutex
	pods       map[string]*corev1.Pod
	terminated map[string]time.Time
	gone       map[string]time.Time
}

func watchNodePods(t *testing.T, node string) *podLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	l := &podLog{pods: map[string]*corev1.Pod{}, terminated: map[string]time.Time{}, gone: map[string]time.Time{}}
	sel := fields.OneTermEqualSelector("spec.nodeName", node).String()
	w, err := env.Client.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.Namespace == localrun.AgentNamespace {
				continue // not a pod, or the agent's own
			}
			key := p.Namespace + "/" + p.Name
			l.mu.Lock()
			l.pods[key] = p
			if _, seen := l.terminated[key]; !seen && p.DeletionTimestamp != nil {
				l.terminated[key] = time.Now()
			}
			if ev.Type == watch.Deleted {
				l.gone[key] = time.Now()
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *podLog) snapshot() (pods map[string]*corev1.Pod, terminated, gone map[string]time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pods, terminated, gone = map[string]*corev1.Pod{}, map[string]time.Time{}, map[string]time.Time{}
	for k, v := range l.pods {
		pods[k] = v
	}
	for k, v := range l.terminated {
		terminated[k] = v
	}
	for k, v := range l.gone {
		gone[k] = v
	}
	return pods, terminated, gone
}

// A busy Spot node is preempted: 110 pods of every kind. The user relies on
// regular pods leaving first and system pods last, on every pod the policy
// evicts being gone by the deadline (PDBs respected while time allows), on
// pods that tolerate the taint staying or leaving when their toleration says,
// and on nothing holding the agent past the deadline.
func TestPreemptionDrains110PodsInWavesBeforeTheDeadline(t *testing.T) {
	const notice = 30 * time.Second
	const systemGrace = 10 * time.Second
	pool := map[string]string{"termgate.dev/test-pool": rand.String(6)}
	spec := cluster.NodeSpec{Spot: true}
	n := newNode(t, spec, fmt.Sprintf("--preemption-notice=%s", notice), fmt.Sprintf("--system-grace=%s", systemGrace))
	labelNode(t, n.name, pool)
	w := &workload110{pool: pool}
	w.create(t, n.name)
	testenv.Eventually(t, 90*time.Second, "110 pods on "+n.name+" running or finished", func(ctx context.Context) (bool, string, error) {
		list, err := env.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
		if err != nil {
			return false, "", err
		}
		ready, all := 0, 0
		for _, p := range list.Items {
			if p.Namespace == localrun.AgentNamespace {
				continue // the agent's own pod
			}
			all++
			if p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodSucceeded {
				ready++
			}
		}
		return ready == 110, fmt.Sprintf("%d of %d ready", ready, all), nil
	})
	// A second node of the same pool gives the evicted pods somewhere to go,
	// so the PDB frees up as replacements become Ready.
	spare := cluster.NodeSpec{Name: n.name + "-spare", Zone: "us-central1-b", MachineType: "e2-standard-4"}
	if err := env.AddNodes(context.Background(), spare); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.Background(), spare.Name, metav1.DeleteOptions{})
	})
	labelNode(t, spare.Name, pool)

	log := watchNodePods(t, n.name)
	flip := time.Now()
	n.md.SetPreempted(true)
	m := n.expectMarked(t, nodemark.ReasonPreempted, nodemark.StateTerminating, corev1.TaintEffectNoSchedule, 2*time.Second)
	deadline := m.Deadline

	// Wait until the deadline (plus the fake kubelet's delete delay) or
	// until every pod the policy evicts is gone, whichever comes first.
	budget := time.Until(deadline) + 2*time.Second
	testenv.Eventually(t, budget, "every evictable pod gone", func(ctx context.Context) (bool, string, error) {
		pods, _, gone := log.snapshot()
		left := 0
		for k, p := range pods {
			g := w.group(p)
			if (g == groupRegular || g == groupSystem || g == groupDelayed) && p.Name != "finalizer" {
				if _, ok := gone[k]; !ok {
					left++
				}
			}
		}
		return left == 0, fmt.Sprintf("%d evictable pods left", left), nil
	})
	done := time.Since(flip)
	pods, terminated, gone := log.snapshot()

	var lastRegular, firstSystem time.Time
	for k, p := range pods {
		switch w.group(p) {
		case groupRegular:
			if ts := terminated[k]; ts.After(lastRegular) {
				lastRegular = ts
			}
		case groupSystem:
			if ts := terminated[k]; firstSystem.IsZero() || ts.Before(firstSystem) {
				firstSystem = ts
			}
		case groupKeep, groupMirror, groupFinished:
			if _, ok := terminated[k]; ok {
				t.Errorf("%s pod %s was deleted; the policy leaves it", w.group(p), k)
			}
		case groupDelayed:
			ts, ok := terminated[k]
			if !ok {
				t.Errorf("pod %s tolerating the taint for 10s was never evicted", k)
			} else if ts.Sub(m.NoticeTime) < 10*time.Second {
				t.Errorf("pod %s evicted %s after the notice, before its 10s toleration ended", k, ts.Sub(m.NoticeTime))
			}
		}
	}
	// The system wave starts once the regular pods are all terminating or at
	// the cut-off, whichever is first; a little slack covers watch delivery.
	const slack = 250 * time.Millisecond
	cutoff := deadline.Add(-systemGrace)
	if firstSystem.Before(lastRegular.Add(-slack)) && firstSystem.Before(cutoff.Add(-slack)) {
		t.Errorf("system wave began at %s, before the regular wave was done (%s) and before the cut-off (%s)",
			firstSystem.Sub(m.NoticeTime), lastRegular.Sub(m.NoticeTime), cutoff.Sub(m.NoticeTime))
	}
	for k, ts := range gone {
		if ts.After(deadline.Add(time.Second)) {
			t.Errorf("pod %s gone %s after the deadline", k, ts.Sub(deadline))
		}
	}
	if p := pods[w.ns+"/finalizer"]; p == nil || p.DeletionTimestamp == nil {
		t.Errorf("pod with a finalizer was not evicted")
	}
	t.Logf("110 pods: regular wave terminating by +%s, system wave from +%s, all evictable pods gone at +%s (deadline +%s)",
		lastRegular.Sub(m.NoticeTime).Round(time.Millisecond), firstSystem.Sub(m.NoticeTime).Round(time.Millisecond),
		done.Round(time.Millisecond), deadline.Sub(m.NoticeTime))
}

func labelNode(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	body := `{"metadata":{"labels":{`
	i := 0
	for k, v := range labels {
		if i > 0 {
			body += ","
		}
		body += fmt.Sprintf("%q:%q", k, v)
		i++
	}
	body += "}}}"
	if _, err := env.Client.CoreV1().Nodes().Patch(context.Background(), name, "application/merge-patch+json", []byte(body), metav1.PatchOptions{}); err != nil {
		t.Fatalf("label node %s: %v", name, err)
	}
}
