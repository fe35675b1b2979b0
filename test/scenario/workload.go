package scenario

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
)

// The workload's apps. Every pod is labelled app=<name>.
const (
	AppWeb          = "web"            // Deployment behind a PDB, spread over every node
	AppInference    = "inference"      // Deployment behind a PDB, prefers the GPU node
	AppLedger       = "ledger"         // one replica on a local SSD: a PDB forbids any disruption
	AppNightly      = "nightly-report" // batch Job
	AppNodeExporter = "node-exporter"  // DaemonSet
	AppClusterDNS   = "cluster-dns"    // kube-system Deployment, system-cluster-critical
)

// Replica counts. Web has two pods per node of the default six.
const (
	webReplicas       = 12
	inferenceReplicas = 4
	nightlyPods       = 6
	dnsReplicas       = 2
)

// Budget is a PodDisruptionBudget of the workload and what it guarantees.
type Budget struct {
	Namespace, App string
	// Guarantee is the number of Ready pods the budget promises.
	Guarantee int
}

// Workload is what runs on the cluster while the scenarios play.
type Workload struct {
	Namespace string
	Budgets   []Budget
	// LedgerNode runs the ledger; empty when the cluster has no on-demand node.
	LedgerNode string
	Summary    string
}

// DeployWorkload creates a realistic mix and waits until it is Ready: a web
// Deployment behind a PDB, an inference Deployment that prefers the GPU
// node, a single-replica ledger pinned to an on-demand node whose PDB
// forbids disruption, a batch Job, a DaemonSet and kube-system pods.
func DeployWorkload(ctx context.Context, c kubernetes.Interface, ns string, nodes []cluster.NodeSpec) (*Workload, error) {
	w := &Workload{Namespace: ns, LedgerNode: firstNode(nodes, NodeOnDemand)}
	if err := kit.EnsureNamespace(ctx, c, ns); err != nil {
		return nil, err
	}
	if err := w.create(ctx, c); err != nil {
		return nil, err
	}
	if err := w.awaitReady(ctx, c, len(nodes)); err != nil {
		return nil, err
	}
	ledger := ""
	if w.LedgerNode != "" {
		ledger = ", 1 ledger"
	}
	w.Summary = fmt.Sprintf("%d web, %d inference%s, a %d-pod Job, %d node-exporter, %d kube-system cluster-dns; PDBs on web, inference, ledger",
		webReplicas, inferenceReplicas, ledger, nightlyPods, len(nodes), dnsReplicas)
	return w, nil
}

func (w *Workload) create(ctx context.Context, c kubernetes.Interface) error {
	ns := w.Namespace
	inference := kit.Deployment(ns, AppInference, inferenceReplicas, preferNodesWith(cluster.LabelAccelerator))
	dns := kit.Deployment("kube-system", AppClusterDNS, dnsReplicas, func(p *corev1.Pod) {
		p.Spec.PriorityClassName = nodemark.PriorityClassClusterCritical
	})
	steps := []struct {
		what string
		do   func() error
	}{
		{"web", func() error { return createDeployment(ctx, c, kit.Deployment(ns, AppWeb, webReplicas)) }},
		{"web PDB", func() error { return createPDB(ctx, c, kit.PDB(ns, AppWeb, 1)) }},
		{"inference", func() error { return createDeployment(ctx, c, inference) }},
		{"inference PDB", func() error { return createPDB(ctx, c, kit.PDB(ns, AppInference, 1)) }},
		{"nightly Job", func() error { return createJob(ctx, c, nightlyJob(ns)) }},
		{"node-exporter", func() error { return createDaemonSet(ctx, c, kit.DaemonSet(ns, AppNodeExporter)) }},
		{"cluster-dns", func() error { return createDeployment(ctx, c, dns) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("deploy %s: %w", s.what, err)
		}
	}
	w.Budgets = []Budget{
		{Namespace: ns, App: AppWeb, Guarantee: webReplicas - 1},
		{Namespace: ns, App: AppInference, Guarantee: inferenceReplicas - 1},
	}
	if w.LedgerNode == "" {
		return nil
	}
	ledger := kit.Deployment(ns, AppLedger, 1, kit.NodeSelector(map[string]string{"kubernetes.io/hostname": w.LedgerNode}))
	if err := createDeployment(ctx, c, ledger); err != nil {
		return fmt.Errorf("deploy ledger: %w", err)
	}
	if err := createPDB(ctx, c, minAvailablePDB(ns, AppLedger, 1)); err != nil {
		return fmt.Errorf("deploy ledger PDB: %w", err)
	}
	w.Budgets = append(w.Budgets, Budget{Namespace: ns, App: AppLedger, Guarantee: 1})
	return nil
}

// preferNodesWith makes the scheduler prefer nodes carrying a label while
// allowing others: inference falls back to CPU nodes when the GPU goes.
func preferNodesWith(label string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{
				Weight: 100,
				Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: label, Operator: corev1.NodeSelectorOpExists,
				}}},
			}},
		}}
	}
}

func minAvailablePDB(ns, app string, n int32) *policyv1.PodDisruptionBudget {
	pdb := kit.PDB(ns, app, 0)
	minAvailable := intstr.FromInt32(n)
	pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable = nil, &minAvailable
	return pdb
}

func nightlyJob(ns string) *batchv1.Job {
	pod := kit.Pod(ns, AppNightly)
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: AppNightly},
		Spec: batchv1.JobSpec{
			Completions: ptr.To[int32](nightlyPods), Parallelism: ptr.To[int32](3), BackoffLimit: ptr.To[int32](6),
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: pod.Labels}, Spec: pod.Spec},
		},
	}
}

func createDeployment(ctx context.Context, c kubernetes.Interface, d *appsv1.Deployment) error {
	_, err := c.AppsV1().Deployments(d.Namespace).Create(ctx, d, metav1.CreateOptions{})
	return ignoreExists(err)
}

func createDaemonSet(ctx context.Context, c kubernetes.Interface, d *appsv1.DaemonSet) error {
	_, err := c.AppsV1().DaemonSets(d.Namespace).Create(ctx, d, metav1.CreateOptions{})
	return ignoreExists(err)
}

func createPDB(ctx context.Context, c kubernetes.Interface, p *policyv1.PodDisruptionBudget) error {
	_, err := c.PolicyV1().PodDisruptionBudgets(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	return ignoreExists(err)
}

func createJob(ctx context.Context, c kubernetes.Interface, j *batchv1.Job) error {
	_, err := c.BatchV1().Jobs(j.Namespace).Create(ctx, j, metav1.CreateOptions{})
	return ignoreExists(err)
}

// ignoreExists lets a kept cluster take the workload again.
func ignoreExists(err error) error {
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// awaitReady waits for every part of the workload, and for the disruption
// controller to have computed each budget (before that, every eviction of a
// covered pod is refused).
func (w *Workload) awaitReady(ctx context.Context, c kubernetes.Interface, nodes int) error {
	const budget = 90 * time.Second // kwok starts pods in well under a second each
	return kit.Poll(ctx, budget, func(ctx context.Context) (bool, string, error) {
		if seen, err := w.notReady(ctx, c, nodes); seen != "" || err != nil {
			return false, seen, err
		}
		return true, "", nil
	})
}

// notReady names the first part of the workload that is not Ready yet.
func (w *Workload) notReady(ctx context.Context, c kubernetes.Interface, nodes int) (string, error) {
	for _, d := range []struct{ ns, name string }{{w.Namespace, AppWeb}, {w.Namespace, AppInference}, {"kube-system", AppClusterDNS}} {
		dep, err := c.AppsV1().Deployments(d.ns).Get(ctx, d.name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("read deployment %s: %w", d.name, err)
		}
		if dep.Status.ReadyReplicas != ptr.Deref(dep.Spec.Replicas, 1) {
			return fmt.Sprintf("%s: %d of %d Ready", d.name, dep.Status.ReadyReplicas, ptr.Deref(dep.Spec.Replicas, 1)), nil
		}
	}
	ds, err := c.AppsV1().DaemonSets(w.Namespace).Get(ctx, AppNodeExporter, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read daemonset: %w", err)
	}
	if int(ds.Status.NumberReady) != nodes {
		return fmt.Sprintf("%s: %d of %d Ready", AppNodeExporter, ds.Status.NumberReady, nodes), nil
	}
	job, err := c.BatchV1().Jobs(w.Namespace).Get(ctx, AppNightly, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read job: %w", err)
	}
	if job.Status.Succeeded != nightlyPods {
		return fmt.Sprintf("%s: %d of %d succeeded", AppNightly, job.Status.Succeeded, nightlyPods), nil
	}
	for _, b := range w.Budgets {
		pdb, err := c.PolicyV1().PodDisruptionBudgets(b.Namespace).Get(ctx, b.App, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("read PDB %s: %w", b.App, err)
		}
		if pdb.Status.ObservedGeneration != pdb.Generation || int(pdb.Status.CurrentHealthy) < b.Guarantee {
			return fmt.Sprintf("PDB %s: %d healthy, observed generation %d", b.App, pdb.Status.CurrentHealthy, pdb.Status.ObservedGeneration), nil
		}
	}
	return "", nil
}
