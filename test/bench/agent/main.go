// Command agent is `make bench-agent`: it measures termgate's agent on the
// local cluster and writes bin/bench/agent.json.
//
//   - notice_to_mark_ms: metadata flip to the taint seen by a separate watch
//   - drain110_evictions_issued_ms: flip until every regular pod of 110 has a
//     deletionTimestamp
//   - drain110_all_gone_ms: flip until every evictable pod is gone
//   - agent_rss_mb: the agent's resident memory after the drains
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

func main() {
	trials := flag.Int("mark-trials", 200, "notice-to-mark trials")
	drains := flag.Int("drain-trials", 3, "110-pod drain trials")
	out := flag.String("out", "bin/bench/agent.json", "where to write the results")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *trials, *drains, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench-agent:", err)
		os.Exit(1)
	}
}

type bench struct {
	c     *cluster.Cluster
	md    *gcefake.Server
	agent *localrun.Agent
	node  string
}

func run(ctx context.Context, trials, drains int, out string) error {
	c, err := cluster.Start(ctx, cluster.Options{Nodes: []cluster.NodeSpec{{Name: "bench-spot", Zone: "us-central1-a", MachineType: "e2-standard-4", Spot: true}}, PodDeleteDelay: time.Millisecond})
	if err != nil {
		return err
	}
	defer c.Stop()
	bin, err := localrun.Build(ctx, c.Dir)
	if err != nil {
		return err
	}
	fleet := gcefake.NewFleet()
	defer fleet.Close()
	md, err := fleet.Add(gcefake.Instance{Name: "bench-spot", Preemptible: true})
	if err != nil {
		return err
	}
	a, err := localrun.StartAgent(ctx, localrun.AgentSpec{Binary: bin, Dir: c.Dir, Kubeconfig: c.Kubeconfig, Node: "bench-spot", MetadataHost: md.Host(),
		Flags: append([]string{"--zap-log-level=error"}, strings.Fields(os.Getenv("AGENT_FLAGS"))...)})
	if err != nil {
		return err
	}
	defer a.Stop()
	b := &bench{c: c, md: md, agent: a, node: "bench-spot"}

	marks, err := b.noticeToMark(ctx, trials)
	if err != nil {
		return err
	}
	var issued, gone []float64
	for range drains {
		i, g, err := b.drain110(ctx)
		if err != nil {
			return err
		}
		issued, gone = append(issued, i), append(gone, g)
	}
	printAgentHistogram(a.Addr)
	rss, err := rssMB(a.PID())
	if err != nil {
		return err
	}
	res := map[string]float64{
		"notice_to_mark_ms_p50":            pct(marks, 50),
		"notice_to_mark_ms_p99":            pct(marks, 99),
		"drain110_evictions_issued_ms_p50": pct(issued, 50),
		"drain110_all_gone_ms_p50":         pct(gone, 50),
		"agent_rss_mb":                     rss,
	}
	return report(res, len(marks), drains, out)
}

// noticeToMark flips instance/preempted and times until a separate node
// watch sees the taint, then flips it back and waits for the node to clear.
func (b *bench) noticeToMark(ctx context.Context, trials int) ([]float64, error) {
	w, err := b.c.Client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", b.node).String()})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var ms []float64
	for range trials {
		flip := time.Now()
		b.md.SetPreempted(true)
		if err := awaitNode(ctx, w, true); err != nil {
			return nil, err
		}
		ms = append(ms, float64(time.Since(flip).Microseconds())/1000)
		b.md.SetPreempted(false)
		if err := awaitNode(ctx, w, false); err != nil {
			return nil, err
		}
	}
	return ms, nil
}

// awaitNode reads the watch until the taint is present (or absent). The
// agent's own 10 s readiness budget bounds the wait.
func awaitNode(ctx context.Context, w watch.Interface, tainted bool) error {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("node watch closed")
			}
			n, isNode := ev.Object.(*corev1.Node)
			if !isNode {
				continue
			}
			has := slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == nodemark.TaintKey })
			if has == tainted {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("taint present=%v not seen within 10s", tainted)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// drain110 puts 100 regular and 10 kube-system pods on the node, preempts it
// and times the drain, then restores the node.
func (b *bench) drain110(ctx context.Context) (issuedMS, goneMS float64, err error) {
	client := b.c.Client
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-"}}, metav1.CreateOptions{})
	if err != nil {
		return 0, 0, err
	}
	defer client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	if err := kit.WaitDefaultServiceAccount(ctx, client, ns.Name); err != nil {
		return 0, 0, err
	}
	onNode := kit.OnNode(b.node)
	short := func(p *corev1.Pod) { p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1) }
	for i := range 100 {
		if _, err := client.CoreV1().Pods(ns.Name).Create(ctx, kit.Pod(ns.Name, "web-"+strconv.Itoa(i), onNode, short), metav1.CreateOptions{}); err != nil {
			return 0, 0, err
		}
	}
	for i := range 10 {
		p := kit.Pod("kube-system", fmt.Sprintf("%s-sys-%d", ns.Name, i), onNode, short)
		if _, err := client.CoreV1().Pods("kube-system").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return 0, 0, err
		}
	}
	sel := metav1.ListOptions{FieldSelector: "spec.nodeName=" + b.node}
	if err := kit.Poll(ctx, 60*time.Second, func(ctx context.Context) (bool, string, error) {
		list, err := client.CoreV1().Pods("").List(ctx, sel)
		if err != nil {
			return false, "", err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == 110, fmt.Sprintf("%d running", running), nil
	}); err != nil {
		return 0, 0, fmt.Errorf("110 pods running: %w", err)
	}

	w, err := client.CoreV1().Pods("").Watch(ctx, sel)
	if err != nil {
		return 0, 0, err
	}
	defer w.Stop()
	terminating, present := map[string]bool{}, map[string]bool{}
	flip := time.Now()
	b.md.SetPreempted(true)
	deadline := time.After(40 * time.Second) // the 30 s notice plus margin
	for issuedMS == 0 || goneMS == 0 {
		select {
		case ev := <-w.ResultChan():
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			key := p.Namespace + "/" + p.Name
			present[key] = ev.Type != watch.Deleted
			if p.DeletionTimestamp != nil && p.Namespace == ns.Name {
				terminating[key] = true
			}
			if issuedMS == 0 && len(terminating) == 100 {
				issuedMS = ms(time.Since(flip))
			}
			if goneMS == 0 && countTrue(present) == 0 && len(present) == 110 {
				goneMS = ms(time.Since(flip))
			}
		case <-deadline:
			return 0, 0, fmt.Errorf("drain incomplete after 40s: %d terminating, %d present", len(terminating), countTrue(present))
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
	b.md.SetPreempted(false)
	return issuedMS, goneMS, kit.Poll(ctx, 10*time.Second, func(ctx context.Context) (bool, string, error) {
		n, err := client.CoreV1().Nodes().Get(ctx, b.node, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		_, marked, _ := nodemark.Read(n.Annotations)
		return !marked, "", nil
	})
}

func countTrue(m map[string]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func pct(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

func rssMB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read agent memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

func report(res map[string]float64, trials, drains int, out string) error {
	targets := map[string]string{
		"notice_to_mark_ms_p50": "", "notice_to_mark_ms_p99": "<= 50",
		"drain110_evictions_issued_ms_p50": "<= 500", "drain110_all_gone_ms_p50": "", "agent_rss_mb": "<= 40",
	}
	keys := []string{"notice_to_mark_ms_p50", "notice_to_mark_ms_p99", "drain110_evictions_issued_ms_p50", "drain110_all_gone_ms_p50", "agent_rss_mb"}
	fmt.Printf("termgate agent benchmark (%d mark trials, %d drain trials, local cluster)\n", trials, drains)
	fmt.Printf("%-34s %10s  %s\n", "metric", "value", "target")
	for _, k := range keys {
		fmt.Printf("%-34s %10.1f  %s\n", k, res[k], targets[k])
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(b, '\n'), 0o644)
}

// printAgentHistogram shows the agent's own notice-to-mark histogram (from
// receiving the metadata answer to the patch being accepted), which splits
// the end-to-end figure into the agent's share and the watch's.
func printAgentHistogram(addr string) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Println("agent-side termgate_agent_notice_to_mark_seconds (cumulative):")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "termgate_agent_notice_to_mark_seconds_bucket") {
			fmt.Println("  " + strings.TrimPrefix(line, "termgate_agent_notice_to_mark_seconds_bucket"))
		}
	}
}
