package localrun

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/manifest"
)

// The agent's identity as the shipped manifests define it: a namespace of
// its own (privileged, for hostNetwork), apart from the webhook's.
const (
	AgentNamespace      = "termgate-agent"
	AgentServiceAccount = "termgate-agent"
)

// AgentIdentity is what a DaemonSet pod of the agent authenticates with:
// a service-account token bound to a Pod on the agent's node, so the API
// server adds the node and pod to the token's user extra, exactly as the
// kubelet's projected token does.
type AgentIdentity struct {
	// Kubeconfig holds the pod-bound token and nothing else.
	Kubeconfig string
	// Config is the same identity as a client configuration.
	Config *rest.Config
	// Pod is the stand-in DaemonSet pod the token is bound to. It tolerates
	// every taint, like the shipped DaemonSet, so its own drain keeps it.
	Pod *corev1.Pod
}

// IdentitySpec says whose identity to make.
type IdentitySpec struct {
	// Admin installs the RBAC and creates the pod and the token.
	Admin kubernetes.Interface
	// AdminConfig gives the API server's address and CA.
	AdminConfig *rest.Config
	// Dir receives the kubeconfig file.
	Dir  string
	Node string
	// Manifests is the folder with agent-rbac.yaml; defaults to the
	// repository's manifests/static/self-managed.
	Manifests string
}

// NewAgentIdentity installs the shipped agent permissions
// (InstallAgentPermissions) and makes the identity of the agent on s.Node
// (AgentIdentityOn). Callers making many nodes' identities install once and
// call AgentIdentityOn for each.
func NewAgentIdentity(ctx context.Context, s IdentitySpec) (*AgentIdentity, error) {
	if err := InstallAgentPermissions(ctx, s); err != nil {
		return nil, err
	}
	return AgentIdentityOn(ctx, s)
}

// InstallAgentPermissions applies, as shipped, what every agent of the
// cluster shares: its namespace, RBAC, the quota that admits its
// PriorityClass outside kube-system, the FlowSchema that keeps its Node
// marks ahead of its evictions, and the ValidatingAdmissionPolicies
// confining its Node patches and its pod deletes to its own node
// (manifests/static/self-managed). s.Node is not used.
func InstallAgentPermissions(ctx context.Context, s IdentitySpec) error {
	manifests, err := manifestsOr(s.Manifests)
	if err != nil {
		return err
	}
	for _, f := range AgentManifests {
		if err := manifest.ApplyFile(ctx, s.AdminConfig, filepath.Join(manifests, f)); err != nil {
			return err
		}
	}
	return nil
}

// AgentManifests are the files of manifests/static/self-managed that InstallAgentPermissions
// applies, in order.
var AgentManifests = []string{"agent-namespace.yaml", "agent-rbac.yaml", "agent-resourcequota.yaml", "agent-flowschema.yaml",
	"agent-node-policy.yaml", "agent-delete-policy.yaml"}

// AgentIdentityOn creates a stand-in agent pod on s.Node and writes a
// kubeconfig with a one-hour token bound to that pod. The permissions must
// be installed (InstallAgentPermissions).
func AgentIdentityOn(ctx context.Context, s IdentitySpec) (*AgentIdentity, error) {
	pod, err := ensureAgentPod(ctx, s.Admin, s.Node)
	if err != nil {
		return nil, err
	}
	tr, err := s.Admin.CoreV1().ServiceAccounts(AgentNamespace).CreateToken(ctx, AgentServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("request a token bound to pod %s: %w", pod.Name, err)
	}
	cfg := rest.AnonymousClientConfig(s.AdminConfig)
	cfg.BearerToken = tr.Status.Token
	path := filepath.Join(s.Dir, "agent-"+s.Node+".kubeconfig")
	if err := writeTokenKubeconfig(path, cfg); err != nil {
		return nil, err
	}
	return &AgentIdentity{Kubeconfig: path, Config: cfg, Pod: pod}, nil
}

// manifestsOr returns dir, or the repository's manifests/static/self-managed when it is
// empty.
func manifestsOr(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "manifests", manifest.StaticDir), nil
}

// The webhook's account as the shipped manifests define it.
const (
	WebhookNamespace      = "termgate"
	WebhookServiceAccount = "termgate-webhook"
)

// Certificate sources, named as the overlays that install them.
const (
	CertSourceSelfManaged = "self-managed"
	CertSourceCertManager = "cert-manager"
)

// certSourceFile is each certificate source's template as the chart renders
// it into manifests/static/<source>; its RBAC is the webhook's grant for its
// certificate.
var certSourceFile = map[string]string{
	CertSourceSelfManaged: "certificates-self-managed.yaml",
	CertSourceCertManager: "certificates-cert-manager.yaml",
}

// NewWebhookIdentity installs what the shipped install of certSource grants
// the webhook (its RBAC, the certificate source's RBAC, the policy that
// lets it change only CA bundles, the FlowSchema for its single reads),
// applied as they are, and writes a kubeconfig with a one-hour token of its
// service account. A webhook process run with it is refused whatever a
// replica in the cluster would be refused, and queued where it would be
// queued.
func NewWebhookIdentity(ctx context.Context, s IdentitySpec, certSource string) (kubeconfig string, err error) {
	file, ok := certSourceFile[certSource]
	if !ok {
		return "", fmt.Errorf("certificate source %q: want %s or %s", certSource, CertSourceSelfManaged, CertSourceCertManager)
	}
	if s.Manifests, err = manifestsOr(s.Manifests); err != nil {
		return "", err
	}
	for _, f := range []string{"namespace.yaml", "webhook-rbac.yaml", "webhook-flowschema.yaml", "webhook-ca-bundle-policy.yaml"} {
		if err := manifest.ApplyFile(ctx, s.AdminConfig, filepath.Join(s.Manifests, f)); err != nil {
			return "", err
		}
	}
	if err := applyCertSourceRBAC(ctx, s.AdminConfig, certSource, file); err != nil {
		return "", err
	}
	tr, err := s.Admin.CoreV1().ServiceAccounts(WebhookNamespace).CreateToken(ctx, WebhookServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request a token of %s: %w", WebhookServiceAccount, err)
	}
	cfg := rest.AnonymousClientConfig(s.AdminConfig)
	cfg.BearerToken = tr.Status.Token
	path := filepath.Join(s.Dir, "webhook-"+certSource+".kubeconfig")
	if err := writeTokenKubeconfig(path, cfg); err != nil {
		return "", err
	}
	return path, nil
}

// applyCertSourceRBAC applies the RBAC objects of the certificate source's
// file, leaving its Issuers and Certificates to the tests that run
// cert-manager.
func applyCertSourceRBAC(ctx context.Context, cfg *rest.Config, certSource, file string) error {
	path, err := manifest.Shipped("static", certSource, file)
	if err != nil {
		return err
	}
	objs, err := manifest.ReadFile(path)
	if err != nil {
		return err
	}
	var rbac []*unstructured.Unstructured
	for _, o := range objs {
		if o.GroupVersionKind().Group == rbacv1.GroupName {
			rbac = append(rbac, o)
		}
	}
	if len(rbac) == 0 {
		return fmt.Errorf("%s holds no RBAC for the webhook", path)
	}
	a, err := manifest.NewApplier(cfg)
	if err != nil {
		return err
	}
	if err := a.Apply(ctx, rbac...); err != nil {
		return fmt.Errorf("apply %s: %w", path, err)
	}
	return nil
}

// ensureAgentPod creates (or finds) the stand-in pod of the agent's
// DaemonSet on node.
func ensureAgentPod(ctx context.Context, admin kubernetes.Interface, node string) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "termgate-agent-" + node, Namespace: AgentNamespace,
			Labels: map[string]string{"app.kubernetes.io/name": "termgate", "app.kubernetes.io/component": "agent"}},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: AgentServiceAccount,
			PriorityClassName:  "system-node-critical",
			Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:         []corev1.Container{{Name: "agent", Image: "termgate:local"}},
		},
	}
	got, err := admin.CoreV1().Pods(AgentNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		got, err = admin.CoreV1().Pods(AgentNamespace).Get(ctx, pod.Name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("agent pod on %s: %w", node, err)
	}
	return got, nil
}

func writeTokenKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile}
	kc.AuthInfos["token"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["token"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "token"}
	kc.CurrentContext = "token"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// WaitAgentPoliciesEnforced waits until the API server enforces the agent's
// policies: a newly created policy takes effect only once the API server's
// informer has delivered and compiled it, and a test running before that
// would see the agent allowed what the policies refuse, and a test that
// the agent's writes pass them would pass without them. It installs the
// agent's permissions (InstallAgentPermissions) and probes with the agent
// of one node deleting (dry run) a pod on another and patching (dry run)
// that other Node; test packages call it once, after starting the cluster.
func WaitAgentPoliciesEnforced(ctx context.Context, c *cluster.Cluster) error {
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		return fmt.Errorf("two nodes for the policy probe: %d, %v", len(nodes.Items), err)
	}
	own, other := nodes.Items[0].Name, nodes.Items[1].Name
	dir, err := os.MkdirTemp(c.Dir, "policy-probe-")
	if err != nil {
		return err
	}
	id, err := NewAgentIdentity(ctx, IdentitySpec{Admin: c.Client, AdminConfig: c.Config, Dir: dir, Node: own})
	if err != nil {
		return err
	}
	agent, err := kubernetes.NewForConfig(id.Config)
	if err != nil {
		return err
	}
	const ns = "default"
	probe, err := c.Client.CoreV1().Pods(ns).Create(ctx, kit.Pod(ns, "policy-probe-"+rand.String(5), kit.OnNode(other)), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("policy probe pod: %w", err)
	}
	defer func() {
		_ = c.Client.CoreV1().Pods(ns).Delete(context.Background(), probe.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	}()
	dryRun := []string{metav1.DryRunAll}
	annotate := []byte(`{"metadata":{"annotations":{"` + nodemark.AnnotationState + `":"advance"}}}`)
	return kit.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, string, error) {
		delErr := agent.CoreV1().Pods(ns).Delete(ctx, probe.Name, metav1.DeleteOptions{DryRun: dryRun})
		_, patchErr := agent.CoreV1().Nodes().Patch(ctx, other, types.MergePatchType, annotate, metav1.PatchOptions{DryRun: dryRun})
		enforced := delErr != nil && strings.Contains(delErr.Error(), "termgate-agent-pod-deletes") &&
			patchErr != nil && strings.Contains(patchErr.Error(), "termgate-agent-node")
		return enforced, fmt.Sprintf("delete: %v; node patch: %v", delErr, patchErr), nil
	})
}
