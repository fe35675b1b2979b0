package charttest

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
)

// typed knows every kind the chart may render; a kind it does not know, or
// a field its type does not have, fails the strict decode.
var typed = func() serializer.CodecFactory {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientscheme.AddToScheme, cmv1.AddToScheme, monv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict)
}()

// decodeRender renders with vals and decodes every document strictly into
// its Go type.
func decodeRender(t *testing.T, vals map[string]any) []runtime.Object {
	t.Helper()
	docs, err := splitDocs(renderManifest(t, vals))
	if err != nil {
		t.Fatal(err)
	}
	dec := typed.UniversalDeserializer()
	var out []runtime.Object
	seen := map[string]bool{}
	for i, d := range docs {
		obj, gvk, err := dec.Decode(d, nil, nil)
		if err != nil {
			t.Fatalf("document %d does not decode strictly: %v\n%s", i, err, d)
		}
		m, err := metaOf(obj)
		if err != nil {
			t.Fatal(err)
		}
		key := gvk.Kind + "/" + m.GetNamespace() + "/" + m.GetName()
		if seen[key] {
			t.Errorf("%s rendered twice", key)
		}
		seen[key] = true
		out = append(out, obj)
	}
	return out
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// matrixCase is one combination of the values that change what is
// rendered.
type matrixCase struct {
	mode                 string
	monitoring, notifier bool
	ownAccounts          bool
}

func (c matrixCase) String() string {
	return fmt.Sprintf("%s/monitoring=%t/notifier=%t/ownAccounts=%t", c.mode, c.monitoring, c.notifier, c.ownAccounts)
}

func (c matrixCase) values(t *testing.T) map[string]any {
	doc := required + "certificates:\n  mode: " + c.mode + "\n"
	if c.mode == "provided" {
		prov := ciValues(t)["provided"]["certificates"].(map[string]any)["provided"].(map[string]any)
		doc += fmt.Sprintf("  provided:\n    secretName: %s\n    caBundle: %s\n", prov["secretName"], prov["caBundle"])
	}
	if c.monitoring {
		doc += "monitoring:\n  podMonitor: {enabled: true}\n  serviceMonitor: {enabled: true}\n  prometheusRule: {enabled: true}\n  dashboard: {enabled: true}\n"
	}
	if c.notifier {
		doc += "notifier:\n  enabled: true\n"
		if c.ownAccounts {
			doc += "  serviceAccount: {create: false, name: own-notifier}\n"
		}
	}
	if c.ownAccounts {
		doc += "agent:\n  serviceAccount: {create: false, name: own-agent}\nwebhook:\n  serviceAccount: {create: false, name: own-webhook}\n"
	}
	return values(t, doc)
}

func matrix() []matrixCase {
	var out []matrixCase
	for _, mode := range []string{"selfManaged", "certManager", "provided"} {
		for _, mon := range []bool{false, true} {
			for _, n := range []bool{false, true} {
				for _, own := range []bool{false, true} {
					out = append(out, matrixCase{mode, mon, n, own})
				}
			}
		}
	}
	return out
}

// Every combination renders objects that decode strictly and keep the
// install's invariants.
func TestEveryRenderOfTheMatrixKeepsTheInvariants(t *testing.T) {
	for _, c := range matrix() {
		t.Run(c.String(), func(t *testing.T) {
			checkInvariants(t, c, decodeRender(t, c.values(t)))
		})
	}
}

// rendered indexes a render by kind.
type rendered struct {
	deployments  []*appsv1.Deployment
	daemonSets   []*appsv1.DaemonSet
	services     []*corev1.Service
	pdbs         []*policyv1.PodDisruptionBudget
	policies     []*networkingv1.NetworkPolicy
	accounts     map[string]bool // namespace/name
	validating   []*admissionregistrationv1.ValidatingWebhookConfiguration
	mutating     []*admissionregistrationv1.MutatingWebhookConfiguration
	podMonitors  []*monv1.PodMonitor
	svcMonitors  []*monv1.ServiceMonitor
	rules        []*monv1.PrometheusRule
	configMaps   []*corev1.ConfigMap
	certificates []*cmv1.Certificate
	namespaces   map[string]bool
}

func index(objs []runtime.Object) rendered {
	r := rendered{accounts: map[string]bool{}, namespaces: map[string]bool{}}
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *appsv1.DaemonSet:
			r.daemonSets = append(r.daemonSets, o)
		case *corev1.Service:
			r.services = append(r.services, o)
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *networkingv1.NetworkPolicy:
			r.policies = append(r.policies, o)
		case *corev1.ServiceAccount:
			r.accounts[o.Namespace+"/"+o.Name] = true
		case *admissionregistrationv1.ValidatingWebhookConfiguration:
			r.validating = append(r.validating, o)
		case *admissionregistrationv1.MutatingWebhookConfiguration:
			r.mutating = append(r.mutating, o)
		case *monv1.PodMonitor:
			r.podMonitors = append(r.podMonitors, o)
		case *monv1.ServiceMonitor:
			r.svcMonitors = append(r.svcMonitors, o)
		case *monv1.PrometheusRule:
			r.rules = append(r.rules, o)
		case *corev1.ConfigMap:
			r.configMaps = append(r.configMaps, o)
		case *cmv1.Certificate:
			r.certificates = append(r.certificates, o)
		case *corev1.Namespace:
			r.namespaces[o.Name] = true
		}
	}
	return r
}

// podTemplate is a workload's pod template with its kind and name.
type podTemplate struct {
	name     string
	ns       string
	selector *metav1.LabelSelector
	tmpl     corev1.PodTemplateSpec
}

func (r rendered) templates() []podTemplate {
	var out []podTemplate
	for _, d := range r.deployments {
		out = append(out, podTemplate{"Deployment/" + d.Name, d.Namespace, d.Spec.Selector, d.Spec.Template})
	}
	for _, d := range r.daemonSets {
		out = append(out, podTemplate{"DaemonSet/" + d.Name, d.Namespace, d.Spec.Selector, d.Spec.Template})
	}
	return out
}

const (
	webhookNS = "termgate"
	agentNS   = "termgate-agent"
)

func checkInvariants(t *testing.T, c matrixCase, objs []runtime.Object) {
	t.Helper()
	r := index(objs)
	checkNamespaces(t, objs)
	checkPodTemplates(t, c, r)
	checkSelectors(t, r)
	checkRegistrations(t, c, r)
	checkMonitoring(t, c, r)
	if got, want := len(r.certificates) > 0, c.mode == "certManager"; got != want {
		t.Errorf("cert-manager Certificates rendered: %t, want %t", got, want)
	}
}

// Every namespaced object goes to one of termgate's two namespaces, and
// both are created with their Pod Security labels.
func checkNamespaces(t *testing.T, objs []runtime.Object) {
	for _, o := range objs {
		m, _ := metaOf(o)
		if ns := m.GetNamespace(); ns != "" && ns != webhookNS && ns != agentNS {
			t.Errorf("%T %s in namespace %q, outside termgate's", o, m.GetName(), ns)
		}
		if n, ok := o.(*corev1.Namespace); ok {
			want := map[string]string{webhookNS: "restricted", agentNS: "privileged"}[n.Name]
			if got := n.Labels["pod-security.kubernetes.io/enforce"]; got != want {
				t.Errorf("namespace %s enforces %q, want %q", n.Name, got, want)
			}
		}
	}
}

// Every pod template: resources, a priority class, non-root with every
// capability dropped, a service account the render creates or the user
// named, and the restricted standard outside the agent's namespace.
func checkPodTemplates(t *testing.T, c matrixCase, r rendered) {
	want := 2 // agent, webhook
	if c.notifier {
		want++
	}
	if got := len(r.templates()); got != want {
		t.Errorf("%d workloads rendered, want %d", got, want)
	}
	for _, p := range r.templates() {
		spec := p.tmpl.Spec
		if spec.PriorityClassName == "" {
			t.Errorf("%s: no priorityClassName", p.name)
		}
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod security context %+v: want runAsNonRoot and the RuntimeDefault seccomp profile", p.name, psc)
		}
		if p.ns != agentNS && (spec.HostNetwork || spec.HostPID || spec.HostIPC) {
			t.Errorf("%s: host namespaces outside the agent's namespace", p.name)
		}
		sa := spec.ServiceAccountName
		if sa == "" || (!c.ownAccounts && !r.accounts[p.ns+"/"+sa]) {
			t.Errorf("%s: service account %q is neither rendered nor given by the user", p.name, sa)
		}
		if c.ownAccounts && r.accounts[p.ns+"/"+sa] {
			t.Errorf("%s: the chart renders service account %s although the user gave their own", p.name, sa)
		}
		for _, ctr := range append(spec.InitContainers, spec.Containers...) {
			where := p.name + " container " + ctr.Name
			if ctr.Resources.Requests.Cpu().IsZero() || ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s: resources %v: want CPU and memory requests and a memory limit", where, ctr.Resources)
			}
			sc := ctr.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 ||
				(sc.Privileged != nil && *sc.Privileged) {
				t.Errorf("%s: security context %+v: want no privilege escalation, a read-only root and every capability dropped", where, sc)
			}
			if !strings.HasPrefix(ctr.Image, "termgate:") {
				t.Errorf("%s: image %q", where, ctr.Image)
			}
		}
	}
}

// The selectors of each workload, PDB, Service and NetworkPolicy select
// the pods they are for, and only those.
func checkSelectors(t *testing.T, r rendered) {
	pods := map[string]podTemplate{}
	for _, p := range r.templates() {
		sel := mustSelector(t, p.name, p.selector)
		if !sel.Matches(labels.Set(p.tmpl.Labels)) {
			t.Errorf("%s: its selector %v does not select its own pods %v", p.name, sel, p.tmpl.Labels)
		}
		pods[p.name] = p
	}
	selects := func(what, ns string, sel labels.Selector) []string {
		var names []string
		for _, p := range pods {
			if p.ns == ns && sel.Matches(labels.Set(p.tmpl.Labels)) {
				names = append(names, p.name)
			}
		}
		sort.Strings(names)
		if len(names) != 1 {
			t.Errorf("%s selects %v, want exactly one workload's pods", what, names)
		}
		return names
	}
	for _, pdb := range r.pdbs {
		selects("PodDisruptionBudget/"+pdb.Name, pdb.Namespace, mustSelector(t, pdb.Name, pdb.Spec.Selector))
	}
	for _, np := range r.policies {
		sel := mustSelector(t, np.Name, &np.Spec.PodSelector)
		if got := selects("NetworkPolicy/"+np.Name, np.Namespace, sel); len(got) == 1 {
			checkPolicyPorts(t, np, pods[got[0]])
		}
	}
	for _, svc := range r.services {
		got := selects("Service/"+svc.Name, svc.Namespace, labels.SelectorFromSet(svc.Spec.Selector))
		if len(got) != 1 {
			continue
		}
		for _, port := range svc.Spec.Ports {
			if !hasPort(pods[got[0]].tmpl, port.TargetPort) {
				t.Errorf("Service/%s port %s targets %s, which no container of %s declares", svc.Name, port.Name, port.TargetPort.String(), got[0])
			}
		}
	}
}

// checkPolicyPorts: every port the policy admits is one the pods serve.
func checkPolicyPorts(t *testing.T, np *networkingv1.NetworkPolicy, p podTemplate) {
	for _, rule := range np.Spec.Ingress {
		for _, port := range rule.Ports {
			if port.Port != nil && !hasPort(p.tmpl, *port.Port) {
				t.Errorf("NetworkPolicy/%s admits port %s, which %s does not serve", np.Name, port.Port.String(), p.name)
			}
		}
	}
}

func hasPort(tmpl corev1.PodTemplateSpec, port intstr.IntOrString) bool {
	for _, c := range tmpl.Spec.Containers {
		for _, p := range c.Ports {
			if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
				return true
			}
		}
	}
	return false
}

func mustSelector(t *testing.T, what string, s *metav1.LabelSelector) labels.Selector {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatalf("%s: selector: %v", what, err)
	}
	if sel.Empty() {
		t.Errorf("%s: an empty selector selects every pod", what)
	}
	return sel
}

// The registrations: a caBundle only in mode provided (elsewhere the
// rotator or the CA injector owns it), cert-manager's inject annotation only
// in certManager, the webhook's own namespace left out of every pod path
// (its pods can always be created), and every call to the rendered Service.
func checkRegistrations(t *testing.T, c matrixCase, r rendered) {
	if len(r.validating) != 1 || len(r.mutating) != 1 {
		t.Fatalf("%d validating and %d mutating configurations, want 1 and 1", len(r.validating), len(r.mutating))
	}
	type hook struct {
		cfg, name string
		cc        admissionregistrationv1.WebhookClientConfig
		ns        *metav1.LabelSelector
		rules     []admissionregistrationv1.RuleWithOperations
	}
	var hooks []hook
	for _, w := range r.validating[0].Webhooks {
		hooks = append(hooks, hook{"validating", w.Name, w.ClientConfig, w.NamespaceSelector, w.Rules})
	}
	for _, w := range r.mutating[0].Webhooks {
		hooks = append(hooks, hook{"mutating", w.Name, w.ClientConfig, w.NamespaceSelector, w.Rules})
	}
	for _, cfg := range []metav1.Object{r.validating[0], r.mutating[0]} {
		_, inject := cfg.GetAnnotations()["cert-manager.io/inject-ca-from"]
		if inject != (c.mode == "certManager") {
			t.Errorf("%s: cert-manager's inject annotation present: %t in mode %s", cfg.GetName(), inject, c.mode)
		}
	}
	for _, h := range hooks {
		where := h.cfg + " " + h.name
		if got, want := len(h.cc.CABundle) > 0, c.mode == "provided"; got != want {
			t.Errorf("%s: caBundle rendered: %t in mode %s", where, got, c.mode)
		}
		if h.cc.Service == nil || h.cc.Service.Namespace != webhookNS || h.cc.Service.Name != "termgate-webhook" {
			t.Errorf("%s: calls %+v, not the rendered termgate-webhook Service", where, h.cc.Service)
		} else if !servesPort(r, *h.cc.Service) {
			t.Errorf("%s: the Service has no port %v", where, h.cc.Service.Port)
		}
		podPath := false
		for _, rule := range h.rules {
			for _, res := range rule.Resources {
				podPath = podPath || res == "pods" || res == "pods/binding"
			}
		}
		if podPath && !excludes(h.ns, webhookNS) {
			t.Errorf("%s: pod path without excluding namespace %s: a webhook outage could keep its own pods from starting", where, webhookNS)
		}
	}
}

func servesPort(r rendered, ref admissionregistrationv1.ServiceReference) bool {
	for _, s := range r.services {
		if s.Namespace != ref.Namespace || s.Name != ref.Name {
			continue
		}
		for _, p := range s.Spec.Ports {
			if ref.Port != nil && p.Port == *ref.Port {
				return true
			}
		}
	}
	return false
}

func excludes(sel *metav1.LabelSelector, ns string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Matches(labels.Set{"kubernetes.io/metadata.name": ns})
}

// Monitoring objects only when asked for, each selecting termgate's pods
// by a port they serve.
func checkMonitoring(t *testing.T, c matrixCase, r rendered) {
	n := len(r.podMonitors) + len(r.svcMonitors) + len(r.rules)
	if !c.monitoring {
		if n != 0 {
			t.Errorf("%d monitoring objects rendered with monitoring off", n)
		}
		return
	}
	if len(r.podMonitors) != 1 || len(r.svcMonitors) != 1 || len(r.rules) != 1 {
		t.Fatalf("PodMonitors %d, ServiceMonitors %d, PrometheusRules %d: want one each", len(r.podMonitors), len(r.svcMonitors), len(r.rules))
	}
	pm := r.podMonitors[0]
	sel := mustSelector(t, "PodMonitor", &pm.Spec.Selector)
	var agent *podTemplate
	for _, p := range r.templates() {
		if p.ns == agentNS && sel.Matches(labels.Set(p.tmpl.Labels)) {
			agent = &p
		}
	}
	if agent == nil {
		t.Errorf("the PodMonitor selects no agent pods")
	} else {
		for _, ep := range pm.Spec.PodMetricsEndpoints {
			if ep.Port == nil || !hasPort(agent.tmpl, intstr.FromString(*ep.Port)) {
				t.Errorf("the PodMonitor scrapes port %v, which the agent does not declare", ep.Port)
			}
		}
	}
	sm := r.svcMonitors[0]
	ssel := mustSelector(t, "ServiceMonitor", &sm.Spec.Selector)
	found := false
	for _, s := range r.services {
		if ssel.Matches(labels.Set(s.Labels)) {
			found = true
			for _, ep := range sm.Spec.Endpoints {
				if !hasServicePort(s, ep.Port) {
					t.Errorf("the ServiceMonitor scrapes port %q, which Service %s does not have", ep.Port, s.Name)
				}
			}
		}
	}
	if !found {
		t.Errorf("the ServiceMonitor selects no Service")
	}
	dashboards := 0
	for _, cm := range r.configMaps {
		if cm.Labels["grafana_dashboard"] == "1" {
			dashboards++
		}
	}
	if dashboards != 1 {
		t.Errorf("%d dashboard ConfigMaps, want 1", dashboards)
	}
}

func hasServicePort(s *corev1.Service, name string) bool {
	for _, p := range s.Spec.Ports {
		if p.Name == name {
			return true
		}
	}
	return false
}
