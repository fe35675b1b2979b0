// Package install installs the chart through Helm's own Go SDK on the local
// cluster with the real node (kubelet, containerd, runc), as `helm install`,
// `helm upgrade` and `helm uninstall` do: the agent's and the webhook's pods
// Ready on the kubelet from the image `make image` built, a pod pinned onto
// a marked node refused by the webhook behind its Service, an upgrade that
// changes a value while the webhook's rotator owns caBundle, and after the
// uninstall nothing of termgate's left and scheduling as before. It runs in
// `make test`'s real-node chain (the real node is one per machine).
package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/realnodeinstall"
	"termgate.dev/termgate/test/testenv"
)

var (
	env        *cluster.Cluster
	node       *cluster.RealNode
	md         *gcefake.Server
	skipReason string
)

const (
	release          = "termgate"
	releaseNamespace = "default"
	// installBudget: the image import is done before; pulling nothing, the
	// pods start in seconds and the webhook makes its CA and turns Ready
	// after its caches sync (as realnodeinstall.WaitInstalled allows).
	installBudget = 3 * time.Minute
)

func TestMain(m *testing.M) {
	var fleet *gcefake.Fleet
	code := testenv.RunWithCluster(m, cluster.Options{Nodes: cluster.DefaultNodes(2), RealNode: true}, &env, func(dir string) error {
		ctx := context.Background()
		var err error
		node, err = env.RealNode()
		if errors.Is(err, cluster.ErrRealNodeUnavailable) {
			skipReason = err.Error()
			return nil
		}
		if err != nil {
			return err
		}
		if err := realnodeinstall.ImportImage(ctx, node); err != nil {
			return err
		}
		fleet = gcefake.NewFleet()
		md, err = fleet.Add(gcefake.Instance{Name: node.Name, Zone: "us-central1-a", MachineType: "e2-standard-4", Preemptible: true})
		return err
	})
	if fleet != nil {
		_ = fleet.Close()
	}
	os.Exit(code)
}

// values are what a user changes to install on this cluster, as `make
// cluster` writes them for a newcomer.
func values() map[string]any { return realnodeinstall.ChartValues(node.Name, md.Host()) }

func helmConfig(t *testing.T) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = ptr.To(env.Kubeconfig)
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, releaseNamespace, "secret"); err != nil {
		t.Fatalf("helm configuration: %v", err)
	}
	return cfg
}

func chartDir(t *testing.T) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the chart")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func TestInstallUpgradeAndUninstallOnTheRealNode(t *testing.T) {
	testenv.NeedCluster(t, env)
	if skipReason != "" {
		t.Skip(skipReason)
	}
	ctx := t.Context()
	chrt, err := loader.Load(chartDir(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := helmConfig(t)

	began := time.Now()
	install := action.NewInstall(cfg)
	install.ReleaseName, install.Namespace = release, releaseNamespace
	install.WaitStrategy, install.Timeout = kube.StatusWatcherStrategy, installBudget
	if _, err := install.RunWithContext(ctx, chrt, values()); err != nil {
		realnodeinstall.Diagnose(ctx, env, node, "chart install")
		t.Fatalf("helm install: %v", err)
	}
	t.Cleanup(func() { uninstall(t, cfg) })
	if err := realnodeinstall.WaitInstalled(ctx, env, node, installBudget); err != nil {
		realnodeinstall.Diagnose(ctx, env, node, "chart install")
		t.Fatal(err)
	}
	bundle := waitCABundle(t)
	t.Logf("installed and Ready on the real node in %s", time.Since(began).Round(time.Millisecond))

	expectPinnedPodRefused(t)

	// An upgrade changes a flag; the rotator's caBundle, a field the chart
	// never renders, stays the rotator's.
	upgrade := action.NewUpgrade(cfg)
	upgrade.Namespace = releaseNamespace
	upgrade.WaitStrategy, upgrade.Timeout = kube.StatusWatcherStrategy, installBudget
	changed := values()
	changed["webhook"].(map[string]any)["confirmTimeout"] = "750ms"
	began = time.Now()
	if _, err := upgrade.RunWithContext(ctx, release, chrt, changed); err != nil {
		realnodeinstall.Diagnose(ctx, env, node, "chart upgrade")
		t.Fatalf("helm upgrade: %v", err)
	}
	if err := realnodeinstall.WaitInstalled(ctx, env, node, installBudget); err != nil {
		t.Fatal(err)
	}
	if after := caBundle(t); after != bundle {
		t.Errorf("the upgrade changed caBundle (%d bytes, was %d): it must stay the rotator's", len(after), len(bundle))
	}
	if !hasArg(t, "--confirm-timeout=750ms") {
		t.Errorf("the upgraded Deployment lacks --confirm-timeout=750ms")
	}
	t.Logf("upgraded and Ready again in %s, caBundle untouched", time.Since(began).Round(time.Millisecond))
	expectPinnedPodRefused(t)

	installed := clusterObjects(t)
	for kind, n := range installed {
		if n == 0 {
			t.Errorf("the install made no %s labelled part-of=termgate: the check after the uninstall would prove nothing", kind)
		}
	}
	began = time.Now()
	uninstall(t, cfg)
	expectNothingLeft(t, installed)
	t.Logf("uninstalled, nothing of termgate left, in %s", time.Since(began).Round(time.Millisecond))
	expectSchedulingWorks(t)
}

// waitCABundle waits for the self-managed rotator to inject its bundle and
// returns it.
func waitCABundle(t *testing.T) string {
	t.Helper()
	var b string
	testenv.Eventually(t, installBudget, "the rotator's caBundle in the webhook configuration", func(ctx context.Context) (bool, string, error) {
		b = caBundle(t)
		return b != "", "", nil
	})
	return b
}

func caBundle(t *testing.T) string {
	t.Helper()
	v, err := env.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(t.Context(), "termgate", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read the webhook configuration: %v", err)
	}
	if len(v.Webhooks) == 0 {
		return ""
	}
	return string(v.Webhooks[0].ClientConfig.CABundle)
}

func hasArg(t *testing.T, arg string) bool {
	d, err := env.Client.AppsV1().Deployments(realnodeinstall.WebhookNamespace).Get(t.Context(), "termgate-webhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		if a == arg {
			return true
		}
	}
	return false
}

// expectPinnedPodRefused preempts the real node, waits for the agent's pod
// to mark it, checks that a pod pinned onto it is refused through the
// Service, and withdraws the notice.
func expectPinnedPodRefused(t *testing.T) {
	t.Helper()
	md.SetPreempted(true)
	defer func() {
		md.SetPreempted(false)
		testenv.Eventually(t, 30*time.Second, "the node unmarked after the notice is withdrawn", func(ctx context.Context) (bool, string, error) {
			_, ok, err := nodemark.Read(testenv.GetNode(t, env.Client, node.Name).Annotations)
			return !ok, fmt.Sprintf("marked %v", ok), err
		})
	}()
	testenv.Eventually(t, 5*time.Second, "the agent's pod marking the node", func(ctx context.Context) (bool, string, error) {
		_, ok, err := nodemark.Read(testenv.GetNode(t, env.Client, node.Name).Annotations)
		return ok, fmt.Sprintf("marked %v", ok), err
	})
	ns := testenv.Namespace(t, env.Client)
	p := kit.Pod(ns, "pinned", kit.OnNode(node.Name))
	p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: cluster.RealNodeTaint, Operator: corev1.TolerationOpExists})
	_, err := env.Client.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "denied") {
		t.Errorf("pod pinned onto the marked node: err %v, want the webhook's denial", err)
	}
}

func uninstall(t *testing.T, cfg *action.Configuration) {
	u := action.NewUninstall(cfg)
	u.WaitStrategy, u.Timeout = kube.StatusWatcherStrategy, installBudget
	u.IgnoreNotFound = true
	if _, err := u.Run(release); err != nil {
		t.Errorf("helm uninstall: %v", err)
	}
}

// clusterObjects counts termgate's cluster-wide objects by kind: webhook
// configurations, admission policies and bindings, RBAC, FlowSchemas and
// PriorityClasses.
func clusterObjects(t *testing.T) map[string]int {
	t.Helper()
	ctx := t.Context()
	c := env.Client
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=termgate"}
	out := map[string]int{}
	count := func(kind string, n int, err error) {
		if err != nil {
			t.Fatalf("list %s: %v", kind, err)
		}
		out[kind] = n
	}
	v, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, sel)
	count("ValidatingWebhookConfiguration", len(v.Items), err)
	mw, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, sel)
	count("MutatingWebhookConfiguration", len(mw.Items), err)
	p, err := c.AdmissionregistrationV1().ValidatingAdmissionPolicies().List(ctx, sel)
	count("ValidatingAdmissionPolicy", len(p.Items), err)
	pb, err := c.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().List(ctx, sel)
	count("ValidatingAdmissionPolicyBinding", len(pb.Items), err)
	cr, err := c.RbacV1().ClusterRoles().List(ctx, sel)
	count("ClusterRole", len(cr.Items), err)
	crb, err := c.RbacV1().ClusterRoleBindings().List(ctx, sel)
	count("ClusterRoleBinding", len(crb.Items), err)
	fs, err := c.FlowcontrolV1().FlowSchemas().List(ctx, sel)
	count("FlowSchema", len(fs.Items), err)
	pc, err := c.SchedulingV1().PriorityClasses().List(ctx, sel)
	count("PriorityClass", len(pc.Items), err)
	return out
}

// expectNothingLeft: none of the objects the install made (counted before
// it) and none of termgate's namespaces.
func expectNothingLeft(t *testing.T, installed map[string]int) {
	t.Helper()
	ctx := t.Context()
	c := env.Client
	left := map[string]int{}
	for kind, n := range clusterObjects(t) {
		if n > 0 {
			left[kind] = n
		}
	}
	if len(left) > 0 {
		t.Errorf("after helm uninstall, left: %v (installed: %v)", left, installed)
	}
	// Each by name too, in case a label went missing from the chart.
	if _, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "termgate", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ValidatingWebhookConfiguration termgate: %v, want not found", err)
	}
	if _, err := c.SchedulingV1().PriorityClasses().Get(ctx, "termgate-webhook", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("PriorityClass termgate-webhook: %v, want not found", err)
	}
	testenv.Eventually(t, installBudget, "termgate's namespaces gone", func(ctx context.Context) (bool, string, error) {
		for _, ns := range realnodeinstall.Namespaces {
			if _, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, "namespace " + ns + " still there", nil
			}
		}
		return true, "", nil
	})
}

// expectSchedulingWorks: with termgate gone, a new pod is bound and a pod
// pinned onto the real node is admitted.
func expectSchedulingWorks(t *testing.T) {
	t.Helper()
	ns := testenv.Namespace(t, env.Client)
	testenv.CreatePod(t, env.Client, kit.Pod(ns, "after"))
	testenv.ExpectPodsRunning(t, env.Client, ns, nil, 1, 30*time.Second)
	p := kit.Pod(ns, "pinned-after", kit.OnNode(node.Name))
	p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: cluster.RealNodeTaint, Operator: corev1.TolerationOpExists})
	if _, err := env.Client.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Errorf("pinned pod after the uninstall: %v", err)
	}
}
