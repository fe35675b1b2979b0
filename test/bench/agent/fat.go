package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

// What a tenant can put in one pod: the API server caps annotations at
// 256 KiB in total, and nothing but the object size caps the environment.
const (
	fatAnnotations     = 5
	fatAnnotationBytes = 50 * 1000 // 250 kB of values, under the 256 KiB cap with the keys
	fatEnvVars         = 16
	fatEnvBytes        = 64 << 10 // 16 x 64 KiB = 1 MiB
)

// fatPod pins a pod with 250 KiB of annotations and 1 MiB of environment
// to the fat node. Each value differs, as they would between tenants' pods.
func fatPod(ns string, i int) *corev1.Pod {
	p := kit.Pod(ns, "fat-"+strconv.Itoa(i), kit.OnNode(fatNode), func(p *corev1.Pod) {
		p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
	})
	p.Annotations = map[string]string{}
	for a := range fatAnnotations {
		p.Annotations["bench.termgate.dev/blob-"+strconv.Itoa(a)] = filler(fatAnnotationBytes, i*100+a)
	}
	for e := range fatEnvVars {
		p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "BLOB_" + strconv.Itoa(e), Value: filler(fatEnvBytes, i*100+50+e)})
	}
	return p
}

func filler(n, seed int) string {
	unit := fmt.Sprintf("%08d", seed)
	return strings.Repeat(unit, n/len(unit)+1)[:n]
}

// fatPodsDrain puts n fat pods on the fat node, then starts an agent there
// as deployed (so its first LIST carries them all), preempts the node and
// reads the agent's memory once every pod is gone.
func (b *bench) fatPodsDrain(ctx context.Context, n int) (after, sampled asdeployed.Memory, err error) {
	client := b.c.Client
	if err := b.registration.restore(ctx); err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	md, err := b.fleet.Add(gcefake.Instance{Name: fatNode, Preemptible: true})
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	id, err := asdeployed.Identity(ctx, b.c, fatNode)
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-fat-"}}, metav1.CreateOptions{})
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, fmt.Errorf("create namespace: %w", err)
	}
	defer client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	if err := kit.WaitDefaultServiceAccount(ctx, client, ns.Name); err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	want := make([]*corev1.Pod, n)
	for i := range want {
		want[i] = fatPod(ns.Name, i)
	}
	began := time.Now()
	pods, err := createAll(ctx, client, want, 4)
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	s := &podSet{ns: ns.Name, pods: pods}
	if err := waitRunning(ctx, client, fatNode, s.ours, n); err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	fmt.Printf("%d fat pods running on %s (%s)\n", n, fatNode, time.Since(began).Round(time.Millisecond))
	agent, err := b.startAgent(ctx, fatNode, md, id)
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	defer agent.Stop()
	before, err := asdeployed.ReadMemory(agent.PID())
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	sample := asdeployed.SampleMemory(agent.PID(), 50*time.Millisecond)
	defer sample()
	w, err := watchNodePods(ctx, client, fatNode)
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	defer w.Stop()
	hooksBefore, err := asdeployed.Counters(ctx, b.metrics, b.webhook.MetricsAddr, "termgate_webhook_")
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	flip := time.Now()
	md.SetPreempted(true)
	issued, gone, err := follow(ctx, w, flip, drainBudget, s, s.regular)
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, fmt.Errorf("drain of fat pods (agent log %s): %w", agent.LogPath(), err)
	}
	sampled = sample()
	after, err = asdeployed.ReadMemory(agent.PID())
	if err != nil {
		return asdeployed.Memory{}, asdeployed.Memory{}, err
	}
	fmt.Printf("fat pods: during the drain, sampled every 50 ms: largest RSS %.1f MiB, largest anonymous %.1f MiB\n", sampled.RSS, sampled.Anon)
	fmt.Printf("fat pods: agent ready with them cached at %.1f MiB (%.1f anonymous, peak so far %.1f MiB); drained (issued %.0f ms, gone %.0f ms); now %.1f MiB (%.1f anonymous, %.1f file), peak %.1f MiB\n",
		before.RSS, before.Anon, before.Peak, issued, gone, after.RSS, after.Anon, after.File, after.Peak)
	if hooksAfter, err := asdeployed.Counters(ctx, b.metrics, b.webhook.MetricsAddr, "termgate_webhook_"); err == nil {
		fmt.Println("the webhook's counters that moved during the fat drain:")
		rise := localrun.Rise(hooksBefore, hooksAfter)
		for _, k := range slices.Sorted(maps.Keys(rise)) {
			if !strings.Contains(k, "_bucket{") {
				fmt.Printf("  %s %v\n", k, rise[k])
			}
		}
	}
	md.SetPreempted(false)
	return after, sampled, b.awaitUnmarked(ctx, fatNode)
}
