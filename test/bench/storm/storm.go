package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/localrun"
)

// preemptionNotice is GCE's notice for Spot VMs (the DaemonSet's
// --preemption-notice). It stands in for the deadline of a node whose mark
// never appeared.
const preemptionNotice = 30 * time.Second

// nodeState is what the bench saw of one preempted node.
type nodeState struct {
	flip, tainted time.Time
	// markRV is the resourceVersion of the first write that showed the
	// node marked terminating: etcd's revision, which orders it against
	// every bind.
	markRV   uint64
	deadline time.Time
	marked   chan struct{}
	// At the deadline: evictable pods still on the node, and how many of
	// them were already being deleted.
	left, leftTerminating int
	checked               bool
}

// bindRecord is a Deployment pod's first appearance with a node: the bind.
type bindRecord struct {
	pod, node string
	rv        uint64
}

// podTimes is what the bench saw of one Deployment pod, on its own clock:
// first seen (created), first seen bound, and now Running and not being
// deleted.
type podTimes struct {
	seen, bound time.Time
	node        string
	up          bool
}

// observer follows nodes and the Deployment's pods through watches that
// resume after a dropped connection.
type observer struct {
	mu    sync.Mutex
	nodes map[string]*nodeState
	binds map[types.UID]bindRecord
	pods  map[types.UID]*podTimes
	// want is the Deployment's replicas; allUp is when the bench first saw
	// that many of its pods Running and not being deleted.
	want  int
	allUp time.Time
	errs  []error
	stop  context.CancelFunc
	done  sync.WaitGroup
}

func (e *env) observe(ctx context.Context) (*observer, error) {
	ctx, cancel := context.WithCancel(ctx)
	obs := &observer{nodes: map[string]*nodeState{}, binds: map[types.UID]bindRecord{}, pods: map[types.UID]*podTimes{}, stop: cancel}
	for _, n := range e.spot {
		obs.nodes[n] = &nodeState{marked: make(chan struct{})}
	}
	client := e.c.Client
	nodes, err := asdeployed.ResumingWatch(ctx,
		func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := client.CoreV1().Nodes().List(ctx, o)
			if err != nil {
				return "", err
			}
			return l.ResourceVersion, nil
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Nodes().Watch(ctx, o)
		}, metav1.ListOptions{})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	pods, err := asdeployed.ResumingWatch(ctx,
		func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := client.CoreV1().Pods(e.ns).List(ctx, o)
			if err != nil {
				return "", err
			}
			return l.ResourceVersion, nil
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Pods(e.ns).Watch(ctx, o)
		}, metav1.ListOptions{LabelSelector: "app=" + deploymentName})
	if err != nil {
		nodes.Stop()
		cancel()
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	obs.done.Go(func() { obs.follow(nodes, obs.node) })
	obs.done.Go(func() { obs.follow(pods, obs.pod) })
	return obs, nil
}

func (obs *observer) follow(w *watchtools.RetryWatcher, handle func(obj any, now time.Time)) {
	defer w.Stop()
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return
			}
			if ev.Type == watch.Error {
				obs.mu.Lock()
				obs.errs = append(obs.errs, fmt.Errorf("watch error: %v", ev.Object))
				obs.mu.Unlock()
				continue
			}
			handle(ev.Object, time.Now())
		case <-w.Done():
			return
		}
	}
}

func (obs *observer) node(o any, now time.Time) {
	n, ok := o.(*corev1.Node)
	if !ok {
		return
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	st := obs.nodes[n.Name]
	if st == nil || st.flip.IsZero() {
		return
	}
	if st.tainted.IsZero() && slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == nodemark.TaintKey }) {
		st.tainted = now
	}
	if st.markRV == 0 {
		if m, marked, err := nodemark.Read(n.Annotations); marked && err == nil && m.Terminating() {
			st.markRV, st.deadline = revision(n.ResourceVersion), m.Deadline
			close(st.marked)
		}
	}
}

func (obs *observer) pod(o any, now time.Time) {
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	t := obs.pods[p.UID]
	if t == nil {
		t = &podTimes{seen: now}
		obs.pods[p.UID] = t
	}
	t.up = p.Spec.NodeName != "" && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning
	if t.up && obs.allUp.IsZero() && obs.want > 0 {
		up := 0
		for _, q := range obs.pods {
			if q.up {
				up++
			}
		}
		if up >= obs.want {
			obs.allUp = now
		}
	}
	if p.Spec.NodeName == "" {
		return
	}
	if t.bound.IsZero() {
		t.bound, t.node = now, p.Spec.NodeName
	}
	if _, seen := obs.binds[p.UID]; !seen {
		obs.binds[p.UID] = bindRecord{pod: p.Name, node: p.Spec.NodeName, rv: revision(p.ResourceVersion)}
	}
}

// revision reads a resourceVersion as the etcd revision it is on this
// cluster; 0 when it is not a number.
func revision(rv string) uint64 {
	n, _ := strconv.ParseUint(rv, 10, 64)
	return n
}

func (obs *observer) close() {
	obs.stop()
	obs.done.Wait()
}

// result is what one storm measured.
type result struct {
	markMaxMS, markP50MS                  float64
	binds, bindsOntoSpot, bindsOntoMarked int
	bindsRacing                           int
	failOpen                              int
	failOpenNote                          string
	uncheckedAllows                       int
	uncheckedNote                         string
	refusedUnconfirmed                    int
	refusedNote                           string
	replicasRunningMS                     float64
	replicasNote                          string
	doneFraction                          float64
	doneNote                              string
	webhookRSS, webhookPeak               float64
}

// storm preempts every Spot node, spread over o.spread, scales the
// Deployment up at the first notice, and checks each node at its deadline.
func (e *env) storm(ctx context.Context, o options) (result, error) {
	if o.withoutPolicy {
		if err := e.removeNodePolicy(ctx); err != nil {
			return result{}, err
		}
	}
	obs, err := e.observe(ctx)
	if err != nil {
		return result{}, err
	}
	defer obs.close()
	logPath := e.c.LogPath("kube-apiserver")
	before, err := e.snapshot(ctx, logPath)
	if err != nil {
		return result{}, err
	}
	webhookMemory := asdeployed.SampleMemory(e.webhook.PID(), 100*time.Millisecond)
	defer webhookMemory()

	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		say("load average before the storm: %s", strings.TrimSpace(string(load)))
	}
	obs.mu.Lock()
	obs.want = o.replicas
	obs.mu.Unlock()
	t0 := time.Now()
	say("storm: %d notices over %s, %s scaled to %d", len(e.spot), o.spread, deploymentName, o.replicas)
	if err := e.scale(ctx, o.replicas); err != nil {
		return result{}, err
	}
	for i, node := range e.spot {
		at := t0.Add(time.Duration(i) * o.spread / time.Duration(len(e.spot)))
		if err := sleepUntil(ctx, at); err != nil {
			return result{}, err
		}
		md, ok := e.fleet.Get(node)
		if !ok {
			return result{}, fmt.Errorf("no metadata server for %s", node)
		}
		obs.mu.Lock()
		obs.nodes[node].flip = time.Now()
		obs.mu.Unlock()
		md.SetPreempted(true)
	}
	say("all %d notices given (%s after the first)", len(e.spot), since(t0))
	var wg sync.WaitGroup
	errs := make([]error, len(e.spot))
	for i, node := range e.spot {
		wg.Go(func() { errs[i] = e.checkAtDeadline(ctx, obs, node) })
	}
	wg.Wait()
	end := time.Now()
	// The scale-up may outlast the deadlines on a slow control plane (or
	// when refused binds wait out the scheduler's back-off): give it a
	// minute more, so a stall shows as a time rather than as nothing.
	if err := waitAllUp(ctx, obs, time.Minute); err != nil {
		return result{}, err
	}
	webhookRSS := webhookMemory().RSS
	say("every node checked at its deadline (%s after the first notice)", end.Sub(t0).Round(time.Millisecond))
	if err := errors.Join(errs...); err != nil {
		return result{}, err
	}
	after, err := e.snapshot(ctx, logPath)
	if err != nil {
		return result{}, err
	}
	obs.close()
	if err := errors.Join(obs.errs...); err != nil {
		return result{}, fmt.Errorf("the storm's watches failed, figures would be incomplete: %w", err)
	}
	if err := e.webhook.Exited(); err != nil {
		return result{}, fmt.Errorf("the webhook died during the storm: %w", err)
	}
	audit, err := e.auditedStorm(t0)
	if err != nil {
		return result{}, err
	}
	res := e.summarise(obs, audit, end)
	res.replicasRunningMS, res.replicasNote = obs.scaleUp(t0, o.replicas, e.spot)
	e.printAgentSide(ctx)
	var total, largest, peak float64
	for _, a := range e.agents {
		select {
		case <-a.Done():
			fmt.Printf("the agent on %s exited during the storm (log %s)\n", a.Node, a.LogPath())
			continue
		default:
		}
		if m, err := asdeployed.ReadMemory(a.PID()); err == nil {
			total, largest, peak = total+m.RSS, max(largest, m.RSS), max(peak, m.Peak)
		}
	}
	fmt.Printf("agents' resident memory after the storm: %.0f MiB in all, largest %.1f MiB, largest peak %.1f MiB\n", total, largest, peak)
	res.webhookRSS = webhookRSS
	mem, err := asdeployed.ReadMemory(e.webhook.PID())
	if err != nil {
		return result{}, err
	}
	res.webhookPeak = mem.Peak
	byHook, err := failOpenLines(logPath, before.logSize, after.logSize)
	if err != nil {
		return result{}, err
	}
	for name, n := range byHook {
		if strings.HasSuffix(name, ".termgate.dev") {
			res.failOpen += n
		}
	}
	res.failOpenNote = fmt.Sprintf("log lines by webhook %v; the API server's fail-open counter rose by %v", byHook, localrun.Rise(before.api.failOpen, after.api.failOpen))
	fmt.Printf("the API server's refusals during the storm, by webhook: %v\n", localrun.Rise(before.api.rejected, after.api.rejected))
	lat := localrun.Rise(before.api.latency, after.api.latency)
	const apfWait = "apiserver_flowcontrol_request_wait_duration_seconds_count{"
	for _, k := range slices.Sorted(maps.Keys(lat)) {
		if flow, ok := strings.CutPrefix(k, apfWait); ok && lat[k] > 0 {
			sum := lat["apiserver_flowcontrol_request_wait_duration_seconds_sum{"+flow]
			fmt.Printf("API priority and fairness, %s: %.0f requests waited %.1f ms on average\n", strings.TrimSuffix(flow, "}"), lat[k], sum/lat[k]*1000)
		}
	}
	for _, h := range []struct{ metric, what string }{
		{"apiserver_request_duration_seconds", "Node PATCH requests"},
		{"apiserver_validating_admission_policy_check_duration_seconds", "ValidatingAdmissionPolicy checks"},
	} {
		if n := lat[h.metric+"_count"]; n > 0 {
			fmt.Printf("%s during the storm: %.0f, mean %.1f ms\n", h.what, n, lat[h.metric+"_sum"]/n*1000)
		}
	}
	fmt.Println("the webhook's own counters during the storm:")
	rise := localrun.Rise(before.webhook, after.webhook)
	unchecked, refused := map[string]float64{}, map[string]float64{}
	for _, k := range slices.Sorted(maps.Keys(rise)) {
		fmt.Printf("  %s %v\n", k, rise[k])
		if strings.HasPrefix(k, "termgate_webhook_decisions_total{") && strings.Contains(k, `verdict="`+refusedUnconfirmedVerdict+`"`) {
			_, gate, _ := strings.Cut(k, `gate="`)
			gate, _, _ = strings.Cut(gate, `"`)
			refused[gate] += rise[k]
			res.refusedUnconfirmed += int(rise[k])
		}
		for _, v := range uncheckedVerdicts {
			if strings.HasPrefix(k, "termgate_webhook_decisions_total{") && strings.Contains(k, `verdict="`+v+`"`) {
				_, gate, _ := strings.Cut(k, `gate="`)
				gate, _, _ = strings.Cut(gate, `"`)
				unchecked[gate+"/"+v] += rise[k]
				res.uncheckedAllows += int(rise[k])
			}
		}
	}
	res.uncheckedNote = fmt.Sprintf("by gate and verdict %v", unchecked)
	res.refusedNote = fmt.Sprintf("by gate %v: each a scheduler retry", refused)
	return res, nil
}

// checkAtDeadline waits for the node's deadline (from its mark, or notice
// plus 30 s if it was never marked) and counts the evictable pods left.
func (e *env) checkAtDeadline(ctx context.Context, obs *observer, node string) error {
	obs.mu.Lock()
	st := obs.nodes[node]
	fallback := st.flip.Add(preemptionNotice)
	obs.mu.Unlock()
	deadline := fallback
	select {
	case <-st.marked:
		obs.mu.Lock()
		deadline = st.deadline
		obs.mu.Unlock()
	case <-time.After(time.Until(fallback)):
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := sleepUntil(ctx, deadline); err != nil {
		return err
	}
	list, err := e.c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return fmt.Errorf("pods on %s at its deadline: %w", node, err)
	}
	left, terminating := 0, 0
	for i := range list.Items {
		p := &list.Items[i]
		if nodemark.IsMirrorPod(p) || nodemark.IsFinished(p) || nodemark.DefaultDrainOrder(p, corev1.TaintEffectNoSchedule).Wave == nodemark.WaveKeep {
			continue
		}
		left++
		if p.DeletionTimestamp != nil {
			terminating++
		}
	}
	obs.mu.Lock()
	st.left, st.leftTerminating, st.checked = left, terminating, true
	obs.mu.Unlock()
	return nil
}

func (e *env) summarise(obs *observer, audit stormAudit, end time.Time) result {
	obs.mu.Lock()
	defer obs.mu.Unlock()
	var res result
	var marks []float64
	var unmarked, notDone []string
	done := 0
	for _, node := range e.spot {
		st := obs.nodes[node]
		if st.tainted.IsZero() {
			unmarked = append(unmarked, node)
			marks = append(marks, float64(end.Sub(st.flip).Milliseconds()))
		} else {
			marks = append(marks, float64(st.tainted.Sub(st.flip).Microseconds())/1000)
		}
		if st.checked && st.left == 0 {
			done++
		} else {
			notDone = append(notDone, fmt.Sprintf("%s: %d left (%d terminating)", node, st.left, st.leftTerminating))
		}
	}
	res.markMaxMS, res.markP50MS = slices.Max(marks), asdeployed.Percentile(marks, 50)
	if len(unmarked) > 0 {
		fmt.Printf("never tainted (counted as the whole window): %v\n", unmarked)
	}
	res.doneFraction = float64(done) / float64(len(e.spot))
	res.doneNote = fmt.Sprintf("%d of %d", done, len(e.spot))
	if len(notDone) > 0 {
		fmt.Printf("nodes with evictable pods at their deadline: %s\n", strings.Join(notDone, "; "))
		res.doneNote += ", first: " + notDone[0]
	}
	for _, b := range obs.binds {
		res.binds++
		st, spot := obs.nodes[b.node]
		if !spot {
			continue
		}
		res.bindsOntoSpot++
		stored, marked := audit.markStored[b.node]
		asked, audited := audit.bindAsked[b.pod]
		switch {
		case !marked || !audited:
			if st.markRV != 0 && b.rv > st.markRV {
				// Without the audit there is no telling when the bind was
				// asked for: count it against termgate.
				res.bindsOntoMarked++
				fmt.Printf("bound onto %s after its mark (revision %d, mark %d), not in the audit log\n", b.node, b.rv, st.markRV)
			}
		case asked.After(stored):
			res.bindsOntoMarked++
			fmt.Printf("bound onto %s after its mark: the bind was asked for %s after the mark was stored (revision %d, mark %d)\n",
				b.node, asked.Sub(stored).Round(time.Microsecond), b.rv, st.markRV)
		case st.markRV != 0 && b.rv > st.markRV:
			res.bindsRacing++
			fmt.Printf("bind onto %s raced its mark: asked for %s before the mark was stored, stored after it (revision %d, mark %d)\n",
				b.node, stored.Sub(asked).Round(time.Microsecond), b.rv, st.markRV)
		}
	}
	return res
}

// stormAudit is what the API server's audit log says of the storm, on the
// server's own clock.
type stormAudit struct {
	// markStored is, for each Spot node, when the server answered the
	// agent's first Node patch of the storm: the mark.
	markStored map[string]time.Time
	// bindAsked is, for each pod bound during the storm, when the server
	// received its bind.
	bindAsked map[string]time.Time
}

func (e *env) auditedStorm(since time.Time) (stormAudit, error) {
	a := stormAudit{markStored: map[string]time.Time{}, bindAsked: map[string]time.Time{}}
	patches, err := e.c.NodePatches()
	if err != nil {
		return a, err
	}
	agent := "system:serviceaccount:" + localrun.AgentNamespace + ":" + localrun.AgentServiceAccount
	for _, p := range patches {
		// Agents patch only their own node, and only on a notice.
		if p.User != agent || p.Code != 200 || p.Received.Before(since) {
			continue
		}
		if first, ok := a.markStored[p.Node]; !ok || p.Completed.Before(first) {
			a.markStored[p.Node] = p.Completed
		}
	}
	binds, err := e.c.Binds()
	if err != nil {
		return a, err
	}
	for _, b := range binds {
		if b.Namespace == e.ns && b.Code == 201 && !b.Received.Before(since) {
			a.bindAsked[b.Pod] = b.Received
		}
	}
	return a, nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", path, err)
	}
	return fi.Size(), nil
}

// failOpenLines counts, by webhook name, the API server's "failing open"
// warnings between two offsets of its log: klog writes
// `Failed calling webhook, failing open <name>: <error>`.
func failOpenLines(path string, from, to int64) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open API server log: %w", err)
	}
	defer f.Close()
	byHook := map[string]int{}
	sc := bufio.NewScanner(io.NewSectionReader(f, from, to-from))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		_, rest, ok := strings.Cut(sc.Text(), "failing open ")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, ":")
		byHook[strings.TrimSpace(name)]++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read API server log: %w", err)
	}
	return byHook, nil
}

// counters are the API server's admission counters for termgate's webhooks,
// summed by webhook name.
type counters struct {
	failOpen, rejected map[string]float64
	// latency holds the sums and counts of the API server's latency
	// histograms that explain the mark time: Node patches and the
	// ValidatingAdmissionPolicy's checks.
	latency map[string]float64
}

// snapshot is what the storm's figures compare before and after it: the
// API server log's size (its fail-open lines come after), its counters and
// the webhook's.
type snapshot struct {
	logSize int64
	api     counters
	webhook map[string]float64
}

func (e *env) snapshot(ctx context.Context, apiserverLog string) (snapshot, error) {
	var s snapshot
	var err error
	if s.logSize, err = fileSize(apiserverLog); err != nil {
		return snapshot{}, err
	}
	if s.api, err = admissionCounters(ctx, e); err != nil {
		return snapshot{}, err
	}
	if s.webhook, err = asdeployed.Counters(ctx, e.metrics, e.webhook.MetricsAddr, webhookCounters...); err != nil {
		return snapshot{}, err
	}
	return s, nil
}

func admissionCounters(ctx context.Context, e *env) (counters, error) {
	raw, err := e.c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return counters{}, fmt.Errorf("API server metrics: %w", err)
	}
	c := counters{failOpen: map[string]float64{}, rejected: map[string]float64{}, latency: map[string]float64{}}
	for _, line := range strings.Split(string(raw), "\n") {
		var into map[string]float64
		switch {
		case strings.HasPrefix(line, "apiserver_flowcontrol_request_wait_duration_seconds_sum{"),
			strings.HasPrefix(line, "apiserver_flowcontrol_request_wait_duration_seconds_count{"):
			// API Priority and Fairness: how long requests queued, by
			// flow schema and priority level.
			name, labels, _ := strings.Cut(line, "{")
			key := name + "{" + label(labels, "flow_schema") + "/" + label(labels, "priority_level") + "}"
			if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
				c.latency[key] += v
			}
			continue
		case strings.HasPrefix(line, "apiserver_request_duration_seconds_") && strings.Contains(line, `resource="nodes"`) && strings.Contains(line, `verb="PATCH"`),
			strings.HasPrefix(line, "apiserver_validating_admission_policy_check_duration_seconds_"):
			if strings.Contains(line, "_sum{") || strings.Contains(line, "_count{") {
				name, _, _ := strings.Cut(line, "{")
				if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
					c.latency[name] += v
				}
			}
			continue
		case strings.HasPrefix(line, "apiserver_admission_webhook_fail_open_count{"):
			into = c.failOpen
		case strings.HasPrefix(line, "apiserver_admission_webhook_rejection_count{"):
			into = c.rejected
		default:
			continue
		}
		_, rest, _ := strings.Cut(line, `name="`)
		name, _, _ := strings.Cut(rest, `"`)
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err == nil && strings.HasSuffix(name, ".termgate.dev") {
			into[name] += v
		}
	}
	return c, nil
}

// refusedUnconfirmedVerdict is the webhook's answer to a bind or pinned pod
// onto a node whose re-read failed, with --refuse-unconfirmed.
const refusedUnconfirmedVerdict = "denied-unconfirmed"

// waitAllUp waits, at most limit, for the Deployment's replicas all to be
// Running at once.
func waitAllUp(ctx context.Context, obs *observer, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		obs.mu.Lock()
		up := !obs.allUp.IsZero()
		obs.mu.Unlock()
		if up {
			return nil
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	say("the Deployment's replicas were not all Running %s after the deadlines", limit)
	return nil
}

// scaleUp returns the time from the scale-up to all replicas Running at
// once (-1 if never), and a note with the pods' wait from creation to bind
// (p50, p99, max) apart for the preempted nodes and the rest: refused binds
// show as the others' wait.
func (obs *observer) scaleUp(t0 time.Time, replicas int, spot []string) (float64, string) {
	obs.mu.Lock()
	defer obs.mu.Unlock()
	isSpot := map[string]bool{}
	for _, n := range spot {
		isSpot[n] = true
	}
	var onSpot, elsewhere []float64
	unbound := 0
	for _, t := range obs.pods {
		if t.bound.IsZero() {
			unbound++
			continue
		}
		wait := float64(t.bound.Sub(t.seen).Microseconds()) / 1000
		if isSpot[t.node] {
			onSpot = append(onSpot, wait)
		} else {
			elsewhere = append(elsewhere, wait)
		}
	}
	dist := func(xs []float64) string {
		if len(xs) == 0 {
			return "none"
		}
		return fmt.Sprintf("%d, p50 %.0f p99 %.0f max %.0f ms", len(xs), asdeployed.Percentile(xs, 50), asdeployed.Percentile(xs, 99), slices.Max(xs))
	}
	note := fmt.Sprintf("%d replicas; created to bound, elsewhere %s; onto preempted nodes %s; %d never bound", replicas, dist(elsewhere), dist(onSpot), unbound)
	if obs.allUp.IsZero() {
		return -1, "never all Running; " + note
	}
	return float64(obs.allUp.Sub(t0).Milliseconds()), note
}

// uncheckedVerdicts are the webhook's answers that allow without having
// checked: the gate's own fail-open, invisible to the API server's
// fail-open count.
var uncheckedVerdicts = []string{"allowed-pod-unreadable", "allowed-unknown-node", "allowed-unconfirmed"}

// webhookCounters are the webhook's metrics that say how it answered.
var webhookCounters = []string{
	"termgate_webhook_decisions_total", "termgate_webhook_node_cache_misses_total", "termgate_webhook_pod_reads_total",
	"termgate_webhook_pod_cache_answers_total", "termgate_webhook_requests_refused_total",
	"termgate_webhook_node_confirmations_total", "termgate_webhook_node_confirmation_duration_seconds_sum",
	"termgate_webhook_node_confirmation_duration_seconds_count",
	"termgate_webhook_decision_duration_seconds_sum", "termgate_webhook_decision_duration_seconds_count",
}

// printAgentSide prints the agents' own notice-to-mark times (metadata
// answer to Node patch accepted): each agent marked once, so its
// histogram's sum is its time. Beside the watch-based figure, it tells the
// agent's and API server's share from the bench's watch delay.
func (e *env) printAgentSide(ctx context.Context) {
	var ms []float64
	for _, a := range e.agents {
		c, err := asdeployed.Counters(ctx, e.metrics, a.MetricsAddr, "termgate_agent_notice_to_mark_seconds_sum", "termgate_agent_notice_to_mark_seconds_count")
		if err != nil {
			fmt.Printf("agent on %s: %v\n", a.Node, err)
			continue
		}
		var sum, count float64
		for k, v := range c {
			if strings.HasPrefix(k, "termgate_agent_notice_to_mark_seconds_sum") {
				sum += v
			} else {
				count += v
			}
		}
		if count > 0 {
			ms = append(ms, sum/count*1000)
		}
	}
	if len(ms) == 0 {
		return
	}
	fmt.Printf("agent-side notice to mark accepted (%d agents): p50 %.0f ms, max %.0f ms\n", len(ms), asdeployed.Percentile(ms, 50), slices.Max(ms))
}

// nodePolicy is the shipped ValidatingAdmissionPolicy confining the
// agent's Node patches.
const nodePolicy = "termgate-agent-node"

// removeNodePolicy deletes the bindings of the agent's Node policy, for
// the diagnostic run that shows what the policy costs the marks.
func (e *env) removeNodePolicy(ctx context.Context) error {
	api := e.c.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings()
	list, err := api.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list policy bindings: %w", err)
	}
	for _, b := range list.Items {
		if b.Spec.PolicyName == nodePolicy {
			if err := api.Delete(ctx, b.Name, metav1.DeleteOptions{}); err != nil {
				return fmt.Errorf("delete policy binding %s: %w", b.Name, err)
			}
			say("NOT AS DEPLOYED: removed the binding %s of %s", b.Name, nodePolicy)
		}
	}
	return nil
}

// label returns the value of a Prometheus label in a sample's label text.
func label(labels, name string) string {
	_, rest, ok := strings.Cut(labels, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}
