package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/test/bench/asdeployed"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
)

// The zone shape (Z): a zone's Spot nodes reclaimed in a cluster that
// keeps working. Its nodes are spread over three zones; in the first
// zone, o.preempted nodes are Spot (all of them preempted) and the others
// on-demand; in the other two zones every second node is Spot.
const (
	zoneA = "us-central1-a"
	// zoneGroup is the podLabel value of the pods the reclaim evicts:
	// the Deployments' pods and the DaemonSet's.
	zoneGroup = "zone"
	// replacementLabel opens the first zone's on-demand nodes to the
	// Deployments once their pods are placed: where the evicted pods'
	// replacements go.
	replacementLabel = "bench.termgate.dev/replacements"
	// slotLabel gives each Deployment pod one of the podsPerNode places on
	// a Spot node: pods of one slot keep apart (anti-affinity over every
	// namespace), so each Spot node gets one pod of each slot.
	slotLabel        = "bench.termgate.dev/slot"
	spotWebName      = "zone-spot-web"
	daemonSetName    = "zone-node-agent"
	bystanderNS      = "bystander"
	bystanderAccount = "writer"
)

// zoneLayout names the nodes and says which are preempted (e.spot), which
// are the first zone's on-demand nodes, and which get background pods
// (e.idle: every node but the preempted ones).
func zoneLayout(e *env, o options) (specs []cluster.NodeSpec, onDemandA []string) {
	zones := []string{zoneA, "us-central1-b", "us-central1-c"}
	specs = make([]cluster.NodeSpec, o.nodes)
	for i := range specs {
		zone := zones[i%len(zones)]
		spot := (i/len(zones))%2 == 0
		if zone == zoneA {
			spot = len(e.spot) < o.preempted
		}
		specs[i] = cluster.NodeSpec{Name: fmt.Sprintf("zone-%04d", i), Zone: zone, MachineType: "e2-standard-4", Spot: spot}
		name := specs[i].Name
		switch {
		case zone == zoneA && spot:
			e.spot = append(e.spot, name)
			e.isSpot[name] = true
		case zone == zoneA:
			onDemandA = append(onDemandA, name)
			e.idle = append(e.idle, name)
		default:
			e.idle = append(e.idle, name)
		}
	}
	if o.processAgents > 0 {
		for i := 0; i < len(e.spot) && len(e.isProcess) < o.processAgents; i += max(1, len(e.spot)/o.processAgents) {
			e.isProcess[e.spot[i]] = true
		}
	}
	return specs, onDemandA
}

func setUpZone(ctx context.Context, o options) (*env, error) {
	e := &env{fleet: gcefake.NewFleet(), servers: map[string]*gcefake.Server{}, isProcess: map[string]bool{}, isSpot: map[string]bool{}}
	specs, onDemandA := zoneLayout(e, o)
	if len(e.spot) < o.preempted || len(onDemandA) < o.preempted {
		return e, fmt.Errorf("%d nodes give %d Spot and %d on-demand nodes in %s; the shape wants %d of each (-nodes >= 6 * -preempted)", o.nodes, len(e.spot), len(onDemandA), zoneA, o.preempted)
	}
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs, NodeLease: o.nodeLease})
	if err != nil {
		return e, err
	}
	e.c = c
	say("local cluster with %d Ready nodes (%s)", o.nodes, since(began))
	if e.bin, e.state, err = asdeployed.Build(ctx, c.Dir); err != nil {
		return e, err
	}
	say("measuring %s", e.state)
	began = time.Now()
	if e.replicas, err = localrun.StartWebhookReplicasWithOwnIdentity(ctx, c, localrun.WebhookSpec{Binary: e.bin}, o.webhookReplicas); err != nil {
		return e, err
	}
	e.webhook = e.replicas.Replicas[0]
	if e.metrics, err = asdeployed.MetricsReader(ctx, c); err != nil {
		return e, err
	}
	say("%d webhook replicas behind %s, their own token, configurations and policies registered (%s)", len(e.replicas.Replicas), e.replicas.Addr, since(began))

	began = time.Now()
	if err := e.makeNamespaces(ctx, o.namespaces); err != nil {
		return e, err
	}
	if err := e.zoneWorkload(ctx, o); err != nil {
		return e, err
	}
	say("%d Deployment pods and %d DaemonSet pods placed by the scheduler on the %d Spot nodes of %s (%s)", o.podsPerNode*len(e.spot), len(e.spot), len(e.spot), zoneA, since(began))

	began = time.Now()
	err = kit.InParallel(onDemandA, 32, func(node string) error {
		patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:"true"}}}`, replacementLabel)
		if _, err := c.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("open %s to replacements: %w", node, err)
		}
		return nil
	})
	if err != nil {
		return e, err
	}
	if o.backgroundPerNode > 0 {
		if err := e.placePods(ctx, e.idle, o.backgroundPerNode, "background"); err != nil {
			return e, err
		}
	}
	say("%d on-demand nodes of %s open to replacements, %d background pods on the other %d nodes (%s)", len(onDemandA), zoneA, o.backgroundPerNode*len(e.idle), len(e.idle), since(began))

	if e.bystander, err = newBystander(ctx, c); err != nil {
		return e, err
	}
	if err := e.bystander.prepare(ctx); err != nil {
		return e, err
	}
	return e, e.startAgentsCountingWatches(ctx, o)
}

// zoneWorkload creates the Deployments whose pods the reclaim evicts,
// their budgets, the DaemonSet on the Spot nodes, and the Spot-preferring
// Deployment (no replicas yet), and waits until the scheduler has placed
// and kwok runs every pod on the Spot nodes.
func (e *env) zoneWorkload(ctx context.Context, o options) error {
	client := e.c.Client
	perSlot := o.deployments / o.podsPerNode
	for d := range o.deployments {
		slot, k := d/perSlot, d%perSlot
		replicas := len(e.spot)/perSlot + btoi(k < len(e.spot)%perSlot)
		ns, name := e.namespaceOf(d), fmt.Sprintf("zone-app-%02d", d)
		dep := kit.Deployment(ns, name, int32(replicas), func(p *corev1.Pod) {
			p.Labels[podLabel] = zoneGroup
			p.Labels[slotLabel] = strconv.Itoa(slot)
			p.Spec.Affinity = &corev1.Affinity{
				NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
					NodeSelectorTerms: []corev1.NodeSelectorTerm{
						{MatchExpressions: []corev1.NodeSelectorRequirement{
							{Key: "topology.kubernetes.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{zoneA}},
							{Key: cluster.LabelSpot, Operator: corev1.NodeSelectorOpIn, Values: []string{"true"}},
						}},
						{MatchExpressions: []corev1.NodeSelectorRequirement{
							{Key: replacementLabel, Operator: corev1.NodeSelectorOpIn, Values: []string{"true"}},
						}},
					},
				}},
				PodAntiAffinity: &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
					LabelSelector:     &metav1.LabelSelector{MatchLabels: map[string]string{slotLabel: strconv.Itoa(slot)}},
					NamespaceSelector: &metav1.LabelSelector{},
					TopologyKey:       "kubernetes.io/hostname",
				}}},
			}
		})
		if _, err := client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create deployment %s/%s: %w", ns, name, err)
		}
		pdb := kit.PDB(ns, name, 0)
		pct := intstr.FromString("20%")
		pdb.Spec.MaxUnavailable = &pct
		if _, err := client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create budget %s/%s: %w", ns, name, err)
		}
	}
	ds := kit.DaemonSet(e.namespaceOf(0), daemonSetName, kit.NodeSelector(map[string]string{"topology.kubernetes.io/zone": zoneA, cluster.LabelSpot: "true"}), func(p *corev1.Pod) {
		p.Labels[podLabel] = zoneGroup
	})
	if _, err := client.AppsV1().DaemonSets(ds.Namespace).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create daemonset: %w", err)
	}
	// Cost-minded: prefers Spot capacity, so the scheduler keeps choosing
	// Spot nodes, the marked ones among them, while the marks land.
	web := kit.Deployment(e.namespaceOf(0), spotWebName, 0, func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{
				Weight: 100,
				Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: cluster.LabelSpot, Operator: corev1.NodeSelectorOpIn, Values: []string{"true"}},
				}},
			}},
		}}
	})
	if _, err := client.AppsV1().Deployments(web.Namespace).Create(ctx, web, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create deployment %s: %w", spotWebName, err)
	}
	want := (o.podsPerNode + 1) * len(e.spot)
	// The scheduler binds about 50 pods a second (its client's default
	// rate): ten minutes for a few thousand means something is broken.
	return kit.Poll(ctx, 10*time.Minute, func(ctx context.Context) (bool, string, error) {
		tracked, err := e.zonePods(ctx)
		if err != nil {
			return false, "", err
		}
		full, n := 0, 0
		for _, node := range e.spot {
			n += len(tracked[node])
			if len(tracked[node]) == o.podsPerNode+1 {
				full++
			}
		}
		return full == len(e.spot) && n == want, fmt.Sprintf("%d of %d pods running on the Spot nodes, %d of %d nodes with %d", n, want, full, len(e.spot), o.podsPerNode+1), nil
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// zonePods lists the running pods the reclaim evicts, by node.
func (e *env) zonePods(ctx context.Context) (map[string][]string, error) {
	list, err := e.c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: podLabel + "=" + zoneGroup, ResourceVersion: "0"})
	if err != nil {
		return nil, fmt.Errorf("list the zone's pods: %w", err)
	}
	out := map[string][]string{}
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && e.isSpot[p.Spec.NodeName] {
			out[p.Spec.NodeName] = append(out[p.Spec.NodeName], p.Name)
		}
	}
	return out, nil
}

// makeNamespaces creates n namespaces for the run's pods.
func (e *env) makeNamespaces(ctx context.Context, n int) error {
	for range n {
		ns, err := e.c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "scale-"}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create namespace: %w", err)
		}
		if err := kit.WaitDefaultServiceAccount(ctx, e.c.Client, ns.Name); err != nil {
			return err
		}
		e.namespaces = append(e.namespaces, ns.Name)
	}
	return nil
}

// bystander is a tenant's client with nothing to do with termgate: a
// service account of its own allowed to write ConfigMaps in its own
// namespace, so its requests fall to the built-in service-accounts
// FlowSchema (workload-low), the level the agents' evictions share.
type bystander struct {
	client                  kubernetes.Interface
	creates, updates, fails atomic.Int64
	pooled                  atomic.Int64
	firstFail               atomic.Value
}

func newBystander(ctx context.Context, c *cluster.Cluster) (*bystander, error) {
	admin := c.Client
	if err := kit.EnsureNamespace(ctx, admin, bystanderNS); err != nil {
		return nil, err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: bystanderAccount, Namespace: bystanderNS}}
	if _, err := admin.CoreV1().ServiceAccounts(bystanderNS).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create the bystander's service account: %w", err)
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: bystanderAccount, Namespace: bystanderNS},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create", "update", "get"}}},
	}
	if _, err := admin.RbacV1().Roles(bystanderNS).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create the bystander's role: %w", err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: bystanderAccount, Namespace: bystanderNS},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: bystanderAccount},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: bystanderAccount, Namespace: bystanderNS}},
	}
	if _, err := admin.RbacV1().RoleBindings(bystanderNS).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("bind the bystander's role: %w", err)
	}
	tr, err := admin.CoreV1().ServiceAccounts(bystanderNS).CreateToken(ctx, bystanderAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("request the bystander's token: %w", err)
	}
	cfg := rest.AnonymousClientConfig(c.Config)
	cfg.BearerToken = tr.Status.Token
	cfg.QPS, cfg.Burst = -1, 0 // the bench paces it
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("the bystander's client: %w", err)
	}
	return &bystander{client: client}, nil
}

// bystanderPool is how many ConfigMaps the bystander creates before the
// reclaim, for its updates.
const bystanderPool = 50

// prepare creates the ConfigMaps the bystander updates.
func (b *bystander) prepare(ctx context.Context) error {
	return kit.InParallel(make([]struct{}, bystanderPool), 8, func(struct{}) error {
		n := b.pooled.Add(1) - 1
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "pool-" + strconv.FormatInt(n, 10), Namespace: bystanderNS}}
		if _, err := b.client.CoreV1().ConfigMaps(bystanderNS).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("the bystander's ConfigMap %s: %w", cm.Name, err)
		}
		return nil
	})
}

// run writes at qps until stopped, open loop (a slow answer does not slow
// the next request): each even tick creates a new ConfigMap, each odd one
// updates one of the pool's in turn.
func (b *bystander) run(ctx context.Context, qps int) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(qps))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			create := i%2 == 0
			name := "cm-" + strconv.Itoa(i/2)
			if !create {
				name = "pool-" + strconv.Itoa((i/2)%bystanderPool)
			}
			wg.Go(func() {
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: bystanderNS}, Data: map[string]string{"at": time.Now().Format(time.RFC3339Nano)}}
				var err error
				if create {
					_, err = b.client.CoreV1().ConfigMaps(bystanderNS).Create(ctx, cm, metav1.CreateOptions{})
				} else {
					// An update without a resourceVersion: last write wins.
					_, err = b.client.CoreV1().ConfigMaps(bystanderNS).Update(ctx, cm, metav1.UpdateOptions{})
				}
				switch {
				case err != nil && ctx.Err() == nil:
					b.fails.Add(1)
					b.firstFail.CompareAndSwap(nil, err.Error())
				case err == nil && create:
					b.creates.Add(1)
				case err == nil:
					b.updates.Add(1)
				}
			})
		}
	})
	return func() { cancel(); wg.Wait() }
}

// pinner creates, for each preempted node, one pod pinned to it
// (spec.nodeName) as soon as a watch shows the node's taint: after the
// mark was stored, so the pinned-pod gate must refuse every one.
type pinner struct {
	e                 *env
	wg                sync.WaitGroup
	admitted, refused atomic.Int64
	failed            atomic.Int64
	firstFailure      atomic.Value
	admittedOnto      sync.Map
}

func (p *pinner) onTaint(ctx context.Context, node string) {
	if !p.e.isSpot[node] {
		return
	}
	p.wg.Go(func() {
		pod := kit.Pod(p.e.namespaceOf(0), node+"-pinned", kit.OnNode(node))
		_, err := p.e.c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		switch {
		case err == nil:
			p.admitted.Add(1)
			p.admittedOnto.Store(node, true)
		case apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err):
			p.refused.Add(1)
		default:
			p.failed.Add(1)
			p.firstFailure.CompareAndSwap(nil, err.Error())
		}
	})
}

// zoneResult is what the zone reclaim gave.
type zoneResult struct {
	result
	tracked                          int
	bindsOnto, bindsRacing, bindsAll int
	bindNote                         string
	pinnedAdmitted, pinnedRefused    int64
	pinnedNote                       string
	mutatingP99                      map[string]float64 // resource verb -> ms
	mutatingCount                    map[string]float64
	webhookP99                       map[string]float64 // gate -> ms
	rss                              []float64
	connections                      []int64
	bystanderNote                    string
	spotWebBound                     string
}

// reclaimZone preempts the Spot nodes over the spread, scales the
// Spot-preferring Deployment at the first notice, runs the bystander and
// the pinner, and waits until every tracked pod is evicted or the
// deadlines pass.
func (e *env) reclaimZone(ctx context.Context, o options) (*zoneResult, error) {
	tracked, err := e.zonePods(ctx)
	if err != nil {
		return nil, err
	}
	owner := map[string]string{} // pod -> node
	for node, pods := range tracked {
		for _, p := range pods {
			owner[p] = node
		}
	}
	pin := &pinner{e: e}
	obs, err := e.observe(ctx, func(node string) { pin.onTaint(ctx, node) })
	if err != nil {
		return nil, err
	}
	defer obs.close()
	webhookBefore, err := e.replicaCounters(ctx)
	if err != nil {
		return nil, err
	}
	apiBefore, err := e.zoneAPISamples(ctx)
	if err != nil {
		return nil, err
	}
	var memory []func() asdeployed.Memory
	for _, w := range e.replicas.Replicas {
		memory = append(memory, asdeployed.SampleMemory(w.PID(), 200*time.Millisecond))
	}
	stopBystander := e.bystander.run(ctx, o.bystanderQPS)
	bystanderBegan := time.Now()

	noticed := map[string]time.Time{}
	first := time.Now()
	if err := e.scaleSpotWeb(ctx, o.spotReplicas); err != nil {
		stopBystander()
		return nil, err
	}
	for i, node := range e.spot {
		at := first.Add(time.Duration(i) * o.spread / time.Duration(len(e.spot)))
		if err := pace(ctx, at); err != nil {
			stopBystander()
			return nil, err
		}
		noticed[node] = time.Now()
		e.servers[node].SetPreempted(true)
	}
	say("%d nodes preempted within %s, %s scaled to %d at the first notice", len(e.spot), since(first), spotWebName, o.spotReplicas)
	deadline := noticed[e.spot[len(e.spot)-1]].Add(o.notice)
	err = kit.Poll(ctx, time.Until(deadline), func(context.Context) (bool, string, error) {
		tainted, evicted := obs.snapshot()
		n := 0
		for name := range evicted {
			if _, ok := owner[name]; ok {
				n++
			}
		}
		return n == len(owner) && len(tainted) >= len(e.spot), fmt.Sprintf("%d of %d nodes tainted, %d of %d pods evicted", len(tainted), len(e.spot), n, len(owner)), nil
	})
	if err != nil {
		say("not every pod evicted by the last deadline: %v", err)
		e.whyNotDrained(ctx)
	}
	stopBystander()
	bystanderFor := time.Since(bystanderBegan)
	// No more taints to pin pods to once the watches stop.
	obs.close()
	pin.wg.Wait()
	tainted, evicted := obs.snapshot()
	r := &zoneResult{tracked: len(owner)}
	r.result = *e.marks(tainted, noticed, first, o.notice)
	done := 0
	for node, pods := range tracked {
		ok := true
		for _, p := range pods {
			at, seen := evicted[p]
			ok = ok && seen && at.Before(noticed[node].Add(o.notice))
		}
		if ok {
			done++
		}
	}
	r.doneByDeadline = float64(done) / float64(len(e.spot))
	r.span, r.peakPerSecond = rate(evicted, func(name string) bool { _, ok := owner[name]; return ok })
	if r.results, err = e.evictionResults(ctx); err != nil {
		return nil, err
	}
	webhookAfter, err := e.replicaCounters(ctx)
	if err != nil {
		return nil, err
	}
	r.webhookRise = localrun.Rise(webhookBefore, webhookAfter)
	apiAfter, err := e.zoneAPISamples(ctx)
	if err != nil {
		return nil, err
	}
	r.apiRise = localrun.Rise(apiBefore, apiAfter)
	r.mutatingP99, r.mutatingCount = requestP99(r.apiRise)
	r.webhookP99 = webhookP99(r.apiRise)
	for _, m := range memory {
		r.rss = append(r.rss, m().RSS)
	}
	r.connections = e.replicas.Connections()
	for _, w := range e.replicas.Replicas {
		if err := w.Exited(); err != nil {
			return nil, fmt.Errorf("a webhook replica died during the reclaim: %w", err)
		}
	}
	r.pinnedAdmitted, r.pinnedRefused = pin.admitted.Load(), pin.refused.Load()
	r.pinnedNote = fmt.Sprintf("%d pods pinned to marked nodes, %d refused, %d failed otherwise", r.pinnedAdmitted+r.pinnedRefused+pin.failed.Load(), r.pinnedRefused, pin.failed.Load())
	if f := pin.firstFailure.Load(); f != nil {
		r.pinnedNote += fmt.Sprintf(" (first: %v)", f)
	}
	b := e.bystander
	r.bystanderNote = fmt.Sprintf("the bystander: %d creates, %d updates, %d failed over %.1f s (%.1f/s)", b.creates.Load(), b.updates.Load(), b.fails.Load(),
		bystanderFor.Seconds(), float64(b.creates.Load()+b.updates.Load()+b.fails.Load())/bystanderFor.Seconds())
	if f := b.firstFail.Load(); f != nil {
		r.bystanderNote += fmt.Sprintf(", first failure: %v", f)
	}
	binds, err := asdeployed.BindsAgainstMarks(e.c, first, e.isSpot)
	if err != nil {
		return nil, err
	}
	r.bindsOnto, r.bindsRacing, r.bindsAll = binds.Onto, binds.Racing, binds.All
	r.bindNote = fmt.Sprintf("of %d binds from the first notice, %d onto the preempted nodes (%d of their marks in the audit log, %d files)", binds.All, binds.OntoPreempted, binds.Marks, binds.Files)
	for _, line := range binds.Lines {
		fmt.Println(line)
	}
	say("zone: %d pods evicted over %s, peak %.0f/s; eviction results %v; %s; %s", len(evicted), r.span.Round(time.Millisecond), r.peakPerSecond, r.results, r.bystanderNote, r.pinnedNote)
	return r, nil
}

// scaleSpotWeb sets the Spot-preferring Deployment's replicas.
func (e *env) scaleSpotWeb(ctx context.Context, replicas int) error {
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, replicas)
	if _, err := e.c.Client.AppsV1().Deployments(e.namespaceOf(0)).Patch(ctx, spotWebName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("scale %s to %d: %w", spotWebName, replicas, err)
	}
	return nil
}

// replicaCounters sums the webhook replicas' decision and pod-read
// counters.
func (e *env) replicaCounters(ctx context.Context) (map[string]float64, error) {
	sum := map[string]float64{}
	for _, w := range e.replicas.Replicas {
		c, err := asdeployed.Counters(ctx, e.metrics, w.MetricsAddr, "termgate_webhook_decisions_total", "termgate_webhook_pod_reads_total")
		if err != nil {
			return nil, err
		}
		for k, v := range c {
			sum[k] += v
		}
	}
	return sum, nil
}

// zoneAPISamples reads T's API server counters and the request and
// admission-webhook latency histograms.
func (e *env) zoneAPISamples(ctx context.Context) (map[string]float64, error) {
	body, err := e.c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("API server metrics: %w", err)
	}
	return localrun.Samples(string(body), "apiserver_admission_webhook_fail_open_count", "apiserver_flowcontrol_rejected_requests_total",
		requestHistogram+"_bucket{", webhookHistogram+"_bucket{"), nil
}

// pace waits until t, the time of the next notice.
func pace(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// whyNotDrained prints where the zone's pods are and what the budgets
// allow, when the drains did not finish.
func (e *env) whyNotDrained(ctx context.Context) {
	list, err := e.c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: podLabel + "=" + zoneGroup, ResourceVersion: "0"})
	if err != nil {
		say("list the zone's pods: %v", err)
		return
	}
	where := map[string]int{}
	reasons := map[string]int{}
	for _, p := range list.Items {
		place := "elsewhere"
		switch {
		case p.Spec.NodeName == "":
			place = "unscheduled"
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
					msg := c.Message
					if len(msg) > 160 {
						msg = msg[:160]
					}
					reasons[msg]++
				}
			}
		case e.isSpot[p.Spec.NodeName]:
			place = "on a preempted node"
		}
		state := string(p.Status.Phase)
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
				state += ", not ready"
			}
		}
		if p.DeletionTimestamp != nil {
			state += ", terminating"
		}
		where[place+" ("+state+")"]++
	}
	say("the zone's pods: %v", where)
	nodes, err := e.c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		say("list nodes: %v", err)
		return
	}
	ready := map[string]int{}
	for _, n := range nodes.Items {
		kind := "other"
		if e.isSpot[n.Name] {
			kind = "preempted"
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				ready[kind+" Ready="+string(c.Status)]++
			}
		}
	}
	say("nodes: %v", ready)
	for msg, n := range reasons {
		say("  %d unscheduled: %s", n, msg)
	}
	pdbs, err := e.c.Client.PolicyV1().PodDisruptionBudgets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		say("list budgets: %v", err)
		return
	}
	for _, b := range pdbs.Items {
		st := b.Status
		say("  budget %s/%s: expected %d, healthy %d of %d desired, %d disruptions allowed", b.Namespace, b.Name, st.ExpectedPods, st.CurrentHealthy, st.DesiredHealthy, st.DisruptionsAllowed)
	}
}
